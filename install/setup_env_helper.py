"""What install/setup-env.sh and setup-env.ps1 run inside the conda environment they set up.

    python setup_env_helper.py probe           -> the env prefix, then the checkout tortoise_xpu comes from
    python setup_env_helper.py check BACKEND   -> runs `tortoise-xpu devices --json`, says whether BACKEND
                                                 is available; exit 0 yes, 3 no (reason printed), 1 error

Standard library only, and no tortoise_xpu import in `check`: it must work in any environment, even a
half-installed one.
"""
import json
import os
import shutil
import subprocess
import sys


def probe():
    """Print the environment prefix, then the checkout tortoise_xpu is imported from (or an empty line)."""
    print(os.environ.get("CONDA_PREFIX") or sys.prefix)
    try:
        import tortoise_xpu
        print(os.path.dirname(os.path.dirname(os.path.abspath(tortoise_xpu.__file__))))
    except Exception:
        print("")
    return 0


def describe(entry):
    """One device entry of `devices --json` as "name, 16.0 GiB"."""
    parts = [str(entry.get("device_name") or "").strip()]
    total = entry.get("total_memory")
    if isinstance(total, (int, float)) and total > 0:
        parts.append("%.1f GiB" % (total / 2**30))
    return ", ".join(p for p in parts if p) or "ok"


def check(backend):
    """Run `tortoise-xpu devices --json` and say whether BACKEND is available. Exit 0 yes, 3 no, 1 error."""
    exe = shutil.which("tortoise-xpu")
    cmd = ([exe] if exe else [sys.executable, "-m", "tortoise_xpu"]) + ["devices", "--json"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print("could not run `tortoise-xpu devices --json`: %s" % exc)
        return 1
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or ["no output"]
        print("`tortoise-xpu devices --json` failed (exit %d): %s" % (res.returncode, lines[-1]))
        return 1
    try:
        entries = [e for e in json.loads(res.stdout) if isinstance(e, dict)]
    except (ValueError, TypeError):
        print("`tortoise-xpu devices --json` did not print a JSON array")
        return 1
    by_name = {str(e.get("name")): e for e in entries}
    if backend == "auto":
        accel = [e for e in entries if e.get("available") and e.get("name") != "cpu"]
        if accel:
            print("backend auto: will use %s (%s)" % (accel[0].get("name"), describe(accel[0])))
        else:
            print("backend auto: no accelerator available here, tortoise-xpu will run on the CPU")
        return 0
    names = ("rocm", "cuda") if backend == "rocm" else (backend,)
    entry = next((by_name[n] for n in names if n in by_name), None)
    if entry is None:
        listed = ", ".join(sorted(by_name)) or "nothing"
        print("backend %s: not listed by `tortoise-xpu devices` (it lists: %s)" % (backend, listed))
        return 1
    if entry.get("available"):
        note = ""
        if backend == "rocm" and not any(w in json.dumps(entry).lower() for w in ("hip", "rocm")):
            note = " (a CUDA device; this torch does not say it is a ROCm build)"
        print("backend %s: available: %s%s" % (backend, describe(entry), note))
        return 0
    print("backend %s: NOT available: %s" % (backend, entry.get("reason") or "no reason given"))
    return 3


def main(argv):
    if argv[:1] == ["probe"]:
        return probe()
    if len(argv) == 2 and argv[0] == "check":
        return check(argv[1])
    print("usage: setup_env_helper.py probe | check BACKEND", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
