from tortoise_xpu.cli import main

raise SystemExit(main())
