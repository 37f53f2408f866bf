"""The environment files and the shell scripts: syntax, shellcheck, pins, and install/setup-env.sh.

setup-env.sh runs against a fake conda (tests/data/fake_toolchain/fake-tool.sh): `env create` makes an
environment folder whose `python` runs the real interpreter (so the script's own helper runs for real)
and whose `tortoise-xpu devices --json` prints what the test asks for.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "install" / "setup-env.sh"
FAKE_DIR = REPO / "tests" / "data" / "fake_toolchain"
sys.path.insert(0, str(FAKE_DIR))
import fake_tool  # noqa: E402

BACKENDS = ("cpu", "cuda", "rocm", "xpu", "mps", "directml")
HAVE_BASH = shutil.which("bash") is not None and sys.platform != "win32"
needs_bash = pytest.mark.skipif(not HAVE_BASH, reason="needs bash on a POSIX system")


def _shell_scripts() -> list[Path]:
    """Every bash script of the repository's script folders (by extension or shebang)."""
    found = []
    for folder in ("install", "install/compile", "benchmarks", "tests/data/fake_toolchain", ".ci"):
        for path in sorted((REPO / folder).glob("*")):
            if not path.is_file():
                continue
            head = path.read_bytes()[:64]
            if path.suffix == ".sh" or (head.startswith(b"#!") and b"bash" in head.splitlines()[0]):
                found.append(path)
    return found


SCRIPTS = _shell_scripts()


def test_the_expected_scripts_exist():
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {"install/setup-env.sh", "install/oneapi-env.sh", "install/compile/build-xpu-wheels.sh"} <= names
    assert (REPO / "install" / "setup-env.ps1").is_file()


@needs_bash
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_bash_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (Debian: apt-get install shellcheck; .ci/run installs it)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shellcheck_clean(script):
    res = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --- environment files ------------------------------------------------------------------------------

def _env_files() -> list[Path]:
    return [REPO / "environment.yml"] + sorted(REPO.glob("install/envs/*/environment*.yml"))


@pytest.mark.parametrize("path", _env_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_environment_file_parses(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    assert re.fullmatch(r"tortoise-xpu[a-z0-9-]*", data["name"])
    assert "conda-forge" in data["channels"]
    deps = data["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and re.fullmatch(r"python([=<>].*)?", d)]
    assert len(pythons) == 1 and pythons[0].startswith("python=3."), "one `python=3.X` pin, which --python replaces"
    assert "pip" in deps
    torch_pins = [d for d in deps if isinstance(d, str) and d.startswith("pytorch")]
    for section in (d for d in deps if isinstance(d, dict)):
        torch_pins += [p for p in section.get("pip", []) if re.match(r"torch(==|>=|$)", p)]
    assert len(torch_pins) == 1, f"exactly one torch requirement, got {torch_pins}"


def test_every_backend_has_an_environment_and_a_readme():
    for name in BACKENDS:
        assert (REPO / "install" / "envs" / name / "environment.yml").is_file(), name
        assert (REPO / "install" / "envs" / name / "README.md").is_file(), name
    names = {yaml.safe_load(p.read_text())["name"] for p in _env_files()}
    assert len(names) == len(_env_files()), "every environment has its own name"


def _readme_pin_tables(readme: Path) -> dict[str, list[str]]:
    """{section heading: the backticked pins of the table's `pin` column} for each section with one."""
    tables: dict[str, list[str]] = {}
    heading = ""
    for line in readme.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("|") and heading:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            pin = cells[-1]
            if pin.startswith("`") and pin.endswith("`"):
                tables.setdefault(heading, []).append(pin.strip("`"))
    return tables


def _pins_in(env: dict) -> set[str]:
    pins = set()
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            pins.add(dep)
        else:
            pins.update(dep.get("pip", []))
    for key, value in (env.get("variables") or {}).items():
        pins.add(f'{key}: "{value}"')
    return pins


@pytest.mark.parametrize("name", BACKENDS)
def test_environment_pins_what_the_readme_says(name):
    folder = REPO / "install" / "envs" / name
    tables = _readme_pin_tables(folder / "README.md")
    assert "Pins" in tables, f"{name}/README.md needs a `## Pins` table"
    files = {"Pins": folder / "environment.yml"}
    if name == "xpu":
        legacy = [h for h in tables if "IPEX" in h]
        assert legacy, "xpu/README.md documents the legacy IPEX pins"
        files[legacy[0]] = folder / "environment-ipex.yml"
    for heading, path in files.items():
        pinned = _pins_in(yaml.safe_load(path.read_text()))
        for pin in tables[heading]:
            assert pin in pinned, f"{path.relative_to(REPO)} does not pin {pin!r} (README section {heading!r})"
    # The other way round too: every torch-ish pin of the file is documented.
    pinned = _pins_in(yaml.safe_load(files["Pins"].read_text()))
    documented = set(tables["Pins"])
    for pin in pinned:
        if pin.startswith(("torch", "python", "--extra-index-url", "intel-extension")):
            assert pin in documented, f"{name}: {pin!r} is pinned but not in the README's Pins table"


def test_pinned_versions_follow_the_backend_facts():
    def pins(path):
        return _pins_in(yaml.safe_load((REPO / path).read_text()))

    assert {"torch==2.4.1", "torch-directml==0.2.5.dev240914"} <= pins("install/envs/directml/environment.yml")
    assert "--extra-index-url https://download.pytorch.org/whl/xpu" in pins("install/envs/xpu/environment.yml")
    assert not any("intel-extension" in p for p in pins("install/envs/xpu/environment.yml")), "IPEX is legacy-only"
    assert "intel-extension-for-pytorch==2.8.10+xpu" in pins("install/envs/xpu/environment-ipex.yml")
    assert "torch==2.8.0+xpu" in pins("install/envs/xpu/environment-ipex.yml")  # IPEX 2.8.10 needs torch 2.8
    root = (REPO / "environment.yml").read_text()
    assert "pytorch>=2.4" in pins("environment.yml") and "__cuda" in root and "CONDA_OVERRIDE_CUDA" in root


# --- install/setup-env.sh ---------------------------------------------------------------------------

class FakeConda:
    """A PATH with a fake conda-like tool (and nothing else of ours), and its state folder."""

    def __init__(self, root: Path, tool: str | None = "conda"):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        if tool:
            fake_tool.write_stub(self.bin, tool)
        self.log = root / "calls"
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(root),
            "TMPDIR": str(root),
            "LANG": "C.UTF-8",
            "FAKE_LOG": str(self.log),
            "FAKE_STATE": str(root / "state"),
            "FAKE_REAL_PYTHON": sys.executable,
            "FAKE_REPO": str(REPO),
            "FAKE_DEVICES": json.dumps(_devices()),
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SETUP), *args], env={**self.env, **env}, capture_output=True,
                              text=True, timeout=60)

    def calls(self, *argv: str) -> list[list[str]]:
        """argv of the recorded tool calls that start with ``argv`` (all of them without)."""
        return [c["argv"] for c in fake_tool.read_log(self.log) if c["argv"][: len(argv)] == list(argv)]

    def env_dir(self, name: str) -> Path:
        return self.root / "state" / "envs" / name


def _devices(**available: str | bool) -> list[dict]:
    """A `devices --json` answer: cpu available, the named backends available (True) or not (reason)."""
    out = [{"name": "cpu", "available": True, "reason": None, "device_name": "fake CPU", "total_memory": None}]
    for name in ("cuda", "xpu", "mps", "directml"):
        state = available.get(name, "no device found")
        out.append({"name": name, "available": state is True, "reason": None if state is True else state,
                    "device_name": f"fake {name} GPU" if state is True else None,
                    "total_memory": 16 * 2**30 if state is True else None})
    return out


@pytest.fixture
def conda(tmp_path) -> FakeConda:
    return FakeConda(tmp_path)


@needs_bash
@pytest.mark.parametrize("backend", ("auto",) + BACKENDS)
def test_dry_run_prints_the_env_file_and_the_commands(backend, conda):
    res = conda.run("--backend", backend, "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    env_file = REPO / ("environment.yml" if backend == "auto" else f"install/envs/{backend}/environment.yml")
    name = yaml.safe_load(env_file.read_text())["name"]
    assert f"environment file: {env_file}" in out
    assert env_file.read_text() in out  # the whole file, as it will be used
    assert f"[network] conda env create -n {name} -f {env_file}" in out
    extras = "[directml]" if backend == "directml" else ""
    assert f"[network] conda run --no-capture-output -n {name} python -m pip install -e '{REPO}{extras}'" in out \
        or f"-m pip install -e {REPO}{extras}" in out
    assert f"conda run --no-capture-output -n {name} tortoise-xpu devices --json" in out
    # Nothing was created.
    assert conda.calls("env") == [] and not conda.env_dir(name).exists()


@needs_bash
def test_dry_run_without_any_conda_tool_still_shows_the_plan(tmp_path):
    fake = FakeConda(tmp_path, tool=None)
    res = fake.run("--backend", "xpu", "--dry-run")
    assert res.returncode == 0
    assert "no conda, mamba or micromamba on PATH" in res.stderr
    assert "conda env create -n tortoise-xpu-xpu" in res.stdout
    res = fake.run("--backend", "xpu")
    assert res.returncode == 1
    assert "no conda, mamba or micromamba on PATH" in res.stderr and "Miniforge" in res.stderr


@needs_bash
def test_setup_is_idempotent(conda):
    devices = json.dumps(_devices(xpu=True))
    first = conda.run("--backend", "xpu", FAKE_DEVICES=devices)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed: created environment tortoise-xpu-xpu" in first.stdout
    assert "backend xpu: available: fake xpu GPU, 16.0 GiB" in first.stdout
    assert conda.calls("env", "create") == [["env", "create", "-n", "tortoise-xpu-xpu", "-f",
                                             str(REPO / "install/envs/xpu/environment.yml")]]
    pip = [c for c in conda.calls("run") if "pip" in c]
    assert pip == [["run", "--no-capture-output", "-n", "tortoise-xpu-xpu", "python", "-m", "pip", "install",
                    "-e", str(REPO)]]
    stamp = conda.env_dir("tortoise-xpu-xpu") / "etc" / "tortoise-xpu" / "setup-env.stamp"
    assert stamp.read_text().startswith("stamp=")

    before = len(conda.calls())
    second = conda.run("--backend", "xpu", FAKE_DEVICES=devices)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing changed: environment tortoise-xpu-xpu already matches" in second.stdout
    new = conda.calls()[before:]
    assert not any(c[:1] == ["env"] or "pip" in c for c in new), new
    assert "backend xpu: available" in second.stdout  # the device check still runs

    dry = conda.run("--backend", "xpu", "--dry-run")
    assert "nothing to change" in dry.stdout

    # A different Python pin is a different environment file: updated, package reinstalled.
    third = conda.run("--backend", "xpu", "--python", "3.12", FAKE_DEVICES=devices)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "changed: updated environment tortoise-xpu-xpu" in third.stdout
    used = (conda.env_dir("tortoise-xpu-xpu") / "environment.yml").read_text()
    assert "- python=3.12" in used and "torch==2.13.0+xpu" in used
    assert len(conda.calls("env", "update")) == 1

    forced = conda.run("--backend", "xpu", "--python", "3.12", "--force", FAKE_DEVICES=devices)
    assert forced.returncode == 0 and "changed: updated" in forced.stdout


@needs_bash
def test_unavailable_backend_is_reported_with_its_reason(conda):
    devices = json.dumps(_devices(xpu="torch.xpu is not available: no Intel GPU driver (Level Zero) found"))
    res = conda.run("--backend", "xpu", FAKE_DEVICES=devices)
    assert res.returncode == 3
    assert "backend xpu: NOT available: torch.xpu is not available: no Intel GPU driver (Level Zero) found" \
        in res.stdout
    assert "install/envs/xpu/README.md" in res.stdout


@needs_bash
def test_device_check_failure_is_an_error(conda):
    res = conda.run("--backend", "cpu", FAKE_DEVICES_FAIL="1")
    assert res.returncode == 1
    assert "`tortoise-xpu devices --json` failed (exit 1): error: RuntimeError: fake driver crash" in res.stdout


@needs_bash
def test_auto_and_rocm_read_the_devices_answer(conda):
    res = conda.run(FAKE_DEVICES=json.dumps(_devices(cuda=True)))
    assert res.returncode == 0 and "backend auto: will use cuda (fake cuda GPU, 16.0 GiB)" in res.stdout
    res = conda.run("--backend", "rocm", FAKE_DEVICES=json.dumps(_devices(cuda=True)))
    assert res.returncode == 0
    assert "backend rocm: available: fake cuda GPU" in res.stdout and "not say it is a ROCm build" in res.stdout
    res = conda.run("--backend", "cpu")
    assert res.returncode == 0 and "backend cpu: available: fake CPU" in res.stdout


@needs_bash
def test_wrong_platform_is_refused_unless_asked(conda):
    if sys.platform != "linux" or Path("/dev/dxg").exists():
        pytest.skip("checks the Linux (non-WSL) answer")
    res = conda.run("--backend", "directml")
    assert res.returncode == 2 and "setup-env.ps1" in res.stderr
    assert conda.calls("env") == []
    res = conda.run("--backend", "mps")
    assert res.returncode == 2 and "macos" in res.stderr
    res = conda.run("--backend", "directml", "--ignore-platform", FAKE_DEVICES=json.dumps(_devices(directml=True)))
    assert res.returncode == 0, res.stdout + res.stderr
    assert [c for c in conda.calls("run") if "pip" in c][0][-1] == f"{REPO}[directml]"


@needs_bash
def test_micromamba_and_ipex_variant(tmp_path):
    fake = FakeConda(tmp_path, tool="micromamba")
    res = fake.run("--backend", "xpu", "--ipex", FAKE_DEVICES=json.dumps(_devices(xpu=True)))
    assert res.returncode == 0, res.stdout + res.stderr
    env_file = str(REPO / "install/envs/xpu/environment-ipex.yml")
    assert fake.calls("create") == [["create", "-y", "-n", "tortoise-xpu-xpu-ipex", "-f", env_file]]
    assert [c for c in fake.calls("run") if "pip" in c][0][-1] == f"{REPO}[ipex]"
    assert "ready: micromamba activate tortoise-xpu-xpu-ipex" in res.stdout
    res = fake.run("--backend", "xpu", "--ipex", "--name", "legacy", "--force")
    assert fake.calls("create")[-1][3] == "legacy"


@needs_bash
@pytest.mark.parametrize("args, message", [
    (("--backend", "tpu"), "unknown backend 'tpu': choose one of auto, cpu, cuda, rocm, xpu, mps, directml"),
    (("--backend", "cpu", "--ipex"), "--ipex goes with --backend xpu"),
    (("--python", "three"), "--python wants a version like 3.11"),
    (("--bogus",), "unknown option '--bogus'"),
])
def test_usage_errors(conda, args, message):
    res = conda.run(*args)
    assert res.returncode == 2
    assert message in res.stderr


def test_powershell_script_covers_the_same_ground():
    text = (REPO / "install" / "setup-env.ps1").read_text()
    for needle in ("directml", "xpu", "environment.yml", "devices", "--json", "setup-env.stamp", "DryRun",
                   "conda", "mamba", "micromamba", "pip", "install", "-e"):
        assert needle in text, needle


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="PowerShell (pwsh) is not installed here")
def test_powershell_dry_run(tmp_path):
    res = subprocess.run(["pwsh", "-NoProfile", "-File", str(REPO / "install" / "setup-env.ps1"),
                          "-Backend", "directml", "-DryRun"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch-directml==0.2.5.dev240914" in res.stdout and "devices --json" in res.stdout
