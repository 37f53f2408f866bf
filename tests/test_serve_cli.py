"""``tortoise-xpu serve`` on the command line: its flags, bad values, and the missing-extra message."""

from __future__ import annotations

import pytest

from tortoise_xpu.cli import build_parser, main


def test_serve_is_a_command_with_the_issue_flags():
    args = build_parser().parse_args(["serve", "--host", "127.0.0.1", "--port", "8123", "--device", "cpu",
                                      "--api-key", "k", "--max-queue", "3", "--max-chars", "50",
                                      "--voices-dir", "v", "--models-dir", "m"])
    assert (args.host, args.port, args.device, args.api_key, args.max_queue, args.max_chars, args.voices_dir,
            args.models_dir) == ("127.0.0.1", 8123, "cpu", "k", 3, 50, "v", "m")
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"  # loopback by default


@pytest.mark.parametrize("argv,needle", [
    (["serve", "--max-queue", "0"], "--max-queue"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--max-batch", "0"], "--max-batch"),
])
def test_bad_values_are_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err


def test_without_the_serve_extra_says_how_to_install(capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_uvicorn)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'tortoise-xpu[serve]'" in err and "uvicorn" in err
