#!/usr/bin/env bash
# Everything issue 9 and the parity suite want from a lent GPU, in one device-tool call.
#
# The device machine has torch with CUDA but no internet, so the pure-Python wheels the package
# needs travel with the working tree. Once per session, on the development machine:
#
#     pip download --no-deps -d .whl unidecode inflect more_itertools typeguard soundfile cffi pycparser
#     grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
#
# then one device `run` with carry [".whl"] and timeout_s 600:
#
#     bash benchmarks/gpu_session.sh            # all steps, about 8 minutes on an H100
#     bash benchmarks/gpu_session.sh bench      # or only some: tests bench modes compile stream serve profile parity
#
# Results land in $OUT (each step's log, results.json/.md of the standard set, per-mode AR runs,
# the parity table); copy them into docs/performance.md and docs/parity.md with the device named.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT="${OUT:-/tmp/gpu-out}"
WEIGHTS="${WEIGHTS:-/tmp/fullsize}"
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests bench modes parity)

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "note: no .whl/ carried; relying on what the machine has installed" >&2
fi
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  python3 -m tortoise_xpu devices; } 2>&1 | tee "$OUT/device.txt"

run_step() {
    case "$1" in
        tests)   # real graph capture, side-stream prefetch and the GPU-only checks, before any timing
            python3 -m pytest -q -p no:cacheprovider tests/test_decode.py tests/test_gpu_readiness.py \
                tests/test_backends.py ;;
        bench)   # the standard set: 500 / 40 / text A units, then 500 in low-VRAM mode
            python3 benchmarks/run_standard.py --models-dir "$WEIGHTS" --make-weights --repeat 3 \
                --out-dir "$OUT/standard" ;;
        modes)   # where the AR step stands: each decode mode on the 500-token unit
            for mode in eager static graph; do
                python3 -m tortoise_xpu bench --models-dir "$WEIGHTS" --tokens 500 --repeat 2 \
                    --decode "$mode" --json --out "$OUT/ar-$mode.json" | tail -3
            done ;;
        stream)  # streaming 200 codes at batch 1 (first audio, total, RTF), one warm-up stream first
            python3 benchmarks/side_by_side.py ours-stream --weights "$WEIGHTS" --codes 200 --device cuda \
                --threads 8 | tee "$OUT/stream.json" ;;
        serve)   # continuous-batch rows against the single-run decode engine on CUDA (tiny and full-size AR)
            python3 benchmarks/serve_gpu_check.py ;;
        compile) # the 500-token unit with graphs over a torch.compile'd decode step
            python3 -m tortoise_xpu bench --models-dir "$WEIGHTS" --tokens 500 --repeat 2 --decode graph \
                --compile --json --out "$OUT/ar-graph-compile.json" | tail -3 ;;
        profile) # where the 500-token unit's device time goes, op by op (top operators, kernel count)
            python3 benchmarks/profile_run.py --models-dir "$WEIGHTS" --tokens 500 --json "$OUT/profile.json" ;;
        parity)  # the CUDA columns of the hardware-parity suite (tiny models)
            python3 -m pytest -q -p no:cacheprovider -m parity --device=cuda \
                --parity-report="$OUT/parity-cuda.md" ;;
        *) echo "unknown step $1 (steps: tests bench modes compile stream serve profile parity)" >&2; return 2 ;;
    esac
}

# Full-size random weights for the steps that time the pipeline, made once per machine.
needs_weights() { case " ${steps[*]} " in *" bench "*|*" modes "*|*" compile "*|*" profile "*|*" stream "*) return 0 ;; esac; return 1; }
if needs_weights && [ ! -f "$WEIGHTS/autoregressive.pth" ]; then
    python3 -m tortoise_xpu models random-weights --out "$WEIGHTS" --no-sha > "$OUT/weights.log" 2>&1 \
        || { echo "could not write the random weights (see weights.log)" >&2; exit 1; }
fi

status=0
for step in "${steps[@]}"; do
    echo "== $step" >&2
    start=$SECONDS
    run_step "$step" > "$OUT/$step.log" 2>&1
    rc=$?
    tail -25 "$OUT/$step.log"
    echo "== $step: exit $rc in $((SECONDS - start)) s" >&2
    [ $rc -ne 0 ] && status=$rc
done
exit $status
