"""Pytest plugin of the hardware-parity suite: its command-line options and the summary table.

Loaded for the whole test run (``tests/conftest.py`` lists it in ``pytest_plugins``) because
pytest only reads options from plugins and top-level conftest files.

Options (write them with ``=``, e.g. ``--parity-report=out.md``: pytest reads the command line
for its root folder before this plugin is loaded, and would take an existing FILE or DIR given as a
separate argument for a test path)::

    --device DEVICE       backend(s) to check against CPU float32, e.g. ``cuda``, ``xpu:1``,
                          ``cpu``; repeat or comma-separate; default: every available backend
    --full-size DIR       also check the full-size models in DIR (official file format)
    --parity-report FILE  write the summary table to FILE (``.json``: JSON, else markdown)

Every parity test records its measurements (``tests/parity/compare.Measurement``) in the
:class:`ParityResults` of the run; at the end the table is printed (rows: model/stage,
columns: backend x dtype, cells: max error against tolerance) so it can be pasted into a bug
report, and written to ``--parity-report`` when given.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from tests.parity.compare import Measurement
from tests.parity.tolerances import TOLERANCES

RESULTS_KEY = pytest.StashKey["ParityResults"]()

#: Column order within one backend.
MODES = ("float32", "float16", "bfloat16", "policy")
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "tf32": "tf32"}


def pytest_addoption(parser: pytest.Parser) -> None:
    from tortoise_xpu.backends import VALID_DEVICES

    group = parser.getgroup("parity", "hardware parity (tests/parity, marker 'parity')")
    group.addoption("--device", action="append", default=None, metavar="DEVICE",
                    help=f"backend to check against CPU float32 ({VALID_DEVICES.replace('auto, ', '')}); repeat "
                         "or comma-separate for several. Default: every available one.")
    group.addoption("--full-size", default=None, metavar="DIR",
                    help="also run the parity checks on the full-size checkpoints in DIR (official file "
                         "format, e.g. from `tortoise-xpu models random-weights --out DIR`)")
    group.addoption("--parity-report", default=None, metavar="FILE",
                    help="write the parity summary table to FILE: JSON if it ends in .json, else markdown")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--device"):
        selected_devices(config)  # a malformed --device is a usage error before anything runs
    config.stash[RESULTS_KEY] = ParityResults(lambda: selected_devices(config))
    report = config.getoption("--parity-report")
    if report and Path(report).suffix.lower() not in (".json", ".md", ".markdown", ".txt", ""):
        raise pytest.UsageError(f"--parity-report {report}: use a .json file for JSON or .md for markdown")
    full = config.getoption("--full-size")
    if full and not Path(full).is_dir():
        raise pytest.UsageError(f"--full-size {full}: no such folder")


def selected_devices(config: pytest.Config) -> list[str]:
    """The device strings to check: ``--device`` values (validated), or every available backend."""
    from tortoise_xpu.backends import list_backends, parse_device
    from tortoise_xpu.errors import UserError

    given = config.getoption("--device")
    if not given:
        return [b.name for b in list_backends() if b.is_available()]
    devices = []
    for value in given:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                name, index = parse_device(part)
            except UserError as exc:
                raise pytest.UsageError(f"--device: {exc}") from None
            if name == "auto":
                raise pytest.UsageError("--device: name a backend (auto is the default: every available one)")
            label = name if not index else f"{name}:{index}"
            if label not in devices:
                devices.append(label)
    return devices


class ParityResults:
    """Every measurement of the run, and the table made of them."""

    def __init__(self, devices: Callable[[], list[str]]):
        self._devices = devices  # probed on first use: a run without parity tests probes no hardware
        self._device_list: list[str] | None = None
        self.measurements: list[Measurement] = []
        self.unavailable: dict[str, str] = {}

    @property
    def devices(self) -> list[str]:
        """The device strings under test (``--device``, or every available backend)."""
        if self._device_list is None:
            self._device_list = self._devices()
        return self._device_list

    def record(self, m: Measurement) -> None:
        self.measurements.append(m)

    # ------------------------------------------------------------------ the table
    def _columns(self) -> list[str]:
        def key(column: str) -> tuple[int, int, str]:
            device, _, mode = column.partition(" ")
            dev = self.devices.index(device) if device in self.devices else len(self.devices)
            return dev, MODES.index(mode) if mode in MODES else len(MODES), column

        return sorted({m.column for m in self.measurements}, key=key)

    def _rows(self) -> list[str]:
        rows: list[str] = []
        for m in self.measurements:  # in the order the tests ran: pipeline order within each file
            if m.row not in rows:
                rows.append(m.row)
        return rows

    @staticmethod
    def cell(m: Measurement) -> str:
        """``1.2e-03 ≤ 5e-02``, ``FAIL 3.1e-01 > 1e-02``, plus top-k, precision and notes where they apply."""
        if m.unit:
            text = f"{m.error:g} {m.unit}" + ("" if m.ok else f" > {m.tol:g}")
        else:
            text = f"{m.error:.1e} {'≤' if m.error <= m.tol else '>'} {m.tol:.0e}"
        if m.topk is not None:
            text += f", top{m.k} {m.topk:.0%}"
        mode = m.column.partition(" ")[2]
        if mode == "policy" or (mode and m.precision != mode):
            text = f"{_SHORT.get(m.precision, m.precision)}: {text}"
        if m.note:
            text += f" ({m.note})"
        if m.informational:
            return f"info {text}"
        return text if m.ok else f"FAIL {text}"

    def markdown(self) -> str:
        columns, rows = self._columns(), self._rows()
        cells: dict[tuple[str, str], str] = {}
        for m in self.measurements:
            cells[(m.row, m.column)] = self.cell(m)
        lines = ["| model/stage | " + " | ".join(columns) + " |",
                 "|---|" + "---|" * len(columns)]
        for row in rows:
            lines.append(f"| {row} | " + " | ".join(cells.get((row, c), "–") for c in columns) + " |")
        return "\n".join(lines)

    def header(self) -> list[str]:
        failed = sum(not m.ok for m in self.measurements)
        lines = [f"reference: CPU float32; cells: max |out - ref| / max |ref| vs the tolerance of the precision "
                 f"(tests/parity/tolerances.py); {len(self.measurements)} measurements, {failed} failed",
                 f"date {time.strftime('%Y-%m-%d %H:%M %Z')}, torch {torch.__version__}, python "
                 f"{platform.python_version()}, {platform.system()} {platform.machine()}",
                 "command: " + " ".join(["pytest", *sys.argv[1:]]),
                 "devices: " + (", ".join(self.device_lines()) or "none available")]
        lines += [f"not available: {name} ({why})" for name, why in self.unavailable.items()]
        return lines

    def device_lines(self) -> list[str]:
        from tortoise_xpu.backends import backend_class, parse_device

        out = []
        for label in self.devices:
            name, index = parse_device(label)
            backend = backend_class(name)(index or 0)
            if backend.is_available():
                out.append(f"{label} = {backend.device_name()} ({backend.runtime() or 'runtime unknown'})")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "command": " ".join(["pytest", *sys.argv[1:]]),
            "devices": self.device_lines(),
            "unavailable": self.unavailable,
            "tolerances": {k: {"rel": t.rel, "topk": t.topk, "min_topk": t.min_topk, "reason": t.reason}
                           for k, t in TOLERANCES.items()},
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def write(self, path: Path) -> None:
        from tortoise_xpu.fileio import atomic_write_bytes

        if path.suffix.lower() == ".json":
            text = json.dumps(self.to_json(), indent=1) + "\n"
        else:
            text = "\n".join(["# Hardware parity vs CPU float32", "", *[f"- {line}" for line in self.header()],
                              "", self.markdown(), ""])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, None)
    if results is None or not (results.measurements or results.unavailable):
        return
    tr = terminalreporter
    tr.write_sep("=", "hardware parity vs CPU float32")
    for line in results.header():
        tr.write_line(line)
    if results.measurements:
        tr.write_line("")
        tr.write_line(results.markdown())
    path = config.getoption("--parity-report")
    if path:
        results.write(Path(path))
        tr.write_line(f"\nparity report written to {path}")
