"""Python side of the fake toolchain (the tools themselves are in fake-tool.sh, next to this file).

``make_toolchain(dir)`` fills a folder with one-line stubs (git, gcc, cmake, ninja, patchelf, conda, df,
python, ...) that run fake-tool.sh; put it first on PATH. ``read_log(FAKE_LOG)`` returns the recorded
calls, oldest first, as dicts with ``tool``, ``cwd``, ``argv`` and ``env``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_TOOL = HERE / "fake-tool.sh"

#: The tools compile/build-xpu-wheels.sh may call; `python` is the build env's interpreter.
BUILD_TOOLS = ("git", "gcc", "cmake", "ninja", "patchelf", "conda", "df", "python")


def write_stub(bin_dir: Path, tool: str, name: str | None = None) -> Path:
    """Write an executable stub named ``name`` (default ``tool``) that acts as ``tool``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / (name or tool)
    path.write_text(f'#!/usr/bin/env bash\nexec bash "{FAKE_TOOL}" {tool} "$@"\n')
    path.chmod(0o755)
    return path


def make_toolchain(bin_dir: Path, tools=BUILD_TOOLS) -> Path:
    """A PATH folder with a stub for each of ``tools``."""
    for tool in tools:
        write_stub(bin_dir, tool)
    return bin_dir


def read_log(log: Path) -> list[dict]:
    """The calls recorded under ``<log>.d/``, oldest first."""
    folder = Path(str(log) + ".d")
    if not folder.is_dir():
        return []
    calls = []
    for entry in sorted(folder.iterdir()):
        fields = entry.read_bytes().decode("utf-8", "replace").split("\0")
        tool, cwd, argc = fields[0], fields[1], int(fields[2])
        argv = fields[3:3 + argc]
        env = dict(item.split("=", 1) for item in fields[3 + argc:] if "=" in item)
        calls.append({"tool": tool, "cwd": cwd, "argv": argv, "env": env})
    return calls
