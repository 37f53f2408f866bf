"""Fixtures of the hardware-parity suite (options and the summary table: ``tests/parity/plugin.py``).

* Every test in this folder gets the ``parity`` marker: ``pytest -m parity`` runs exactly them.
* ``backend``: one test per device of ``--device`` (default: every available backend).  It
  overrides the suite-wide ``backend`` fixture of ``tests/conftest.py`` (same skip-with-reason
  behaviour) so that a device index such as ``cuda:1`` can be asked for.
* ``dtype``: ``"float32"``, ``"float16"``, ``"bfloat16"`` or ``"policy"`` (the dtype the backend's
  Policy picks for the stage); :func:`setting_for` turns it into a dtype, a column label and a
  tolerance, and skips what the backend does not support.
* ``model_size``: ``"tiny"``, plus ``"full"`` with ``--full-size DIR``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import pytest
import torch

from tests.parity.compare import Measurement, reduced_float32, strict_float32
from tests.parity.plugin import MODES, RESULTS_KEY, ParityResults
from tests.parity.tolerances import Tolerance, precision_name, tolerance_for

HERE = Path(__file__).resolve().parent
INPUT_SEED = 7


def _in_this_folder(path: Any) -> bool:
    try:
        return Path(str(path)).resolve().is_relative_to(HERE)
    except (OSError, ValueError):
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on the items before `-m` deselects by marker.
    for item in items:
        if _in_this_folder(item.path):
            item.add_marker(pytest.mark.parity)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _in_this_folder(metafunc.definition.path):
        return
    config = metafunc.config
    if "backend" in metafunc.fixturenames:
        devices = config.stash[RESULTS_KEY].devices
        metafunc.parametrize("backend", devices, indirect=True, ids=devices, scope="function")
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", MODES)
    if "model_size" in metafunc.fixturenames:
        sizes = ["tiny"] + (["full"] if config.getoption("--full-size") else [])
        metafunc.parametrize("model_size", sizes)


@pytest.fixture
def backend(request: pytest.FixtureRequest):
    """The Backend of one ``--device`` entry; skipped with the reason when it is not usable here."""
    from tortoise_xpu.backends import backend_class, parse_device

    name, index = parse_device(request.param)
    instance = backend_class(name)(index or 0)
    reason = instance.why_unavailable()
    if reason is not None:
        request.config.stash[RESULTS_KEY].unavailable[request.param] = reason
        pytest.skip(f"{request.param} not available here: {reason}")
    return instance


@pytest.fixture(scope="session")
def parity(request: pytest.FixtureRequest) -> ParityResults:
    """Where tests record their measurements for the summary table."""
    return request.config.stash[RESULTS_KEY]


@pytest.fixture(scope="session")
def full_size_dir(request: pytest.FixtureRequest) -> Path | None:
    value = request.config.getoption("--full-size")
    return Path(value) if value else None


def supports_autocast(backend, dtype: torch.dtype) -> bool:
    """``backend.supports_autocast(dtype)`` (False on a Backend without that method)."""
    probe = getattr(backend, "supports_autocast", None)
    return bool(probe(dtype)) if probe is not None and dtype != torch.float32 else False


def device_label(backend) -> str:
    """``cuda``, ``cuda:1``: how a column names the backend."""
    return backend.name if not backend.index else f"{backend.name}:{backend.index}"


@dataclass(frozen=True)
class Setting:
    """How one column runs a stage: dtype, the tolerance that applies, and the context to run in."""

    column: str
    dtype: torch.dtype
    precision: str
    tolerance: Tolerance
    context: Callable[[], ContextManager]

    def measure(self, row: str, out: torch.Tensor, ref: torch.Tensor, logits: bool = False,
                note: str = "") -> Measurement:
        from tests.parity.compare import measure

        return measure(row, self.column, self.precision, out, ref, self.tolerance, logits, note)


def setting_for(backend, mode: str, stage: str | None) -> Setting:
    """The :class:`Setting` of ``mode`` (a ``dtype`` param) on ``backend`` for a pipeline ``stage``.

    ``float32`` runs with TF32 off (a check of the float32 kernels); ``policy`` runs the dtype the
    backend's Policy gives the stage (float32 for models the pipeline keeps in float32) under
    torch's default flags, as the pipeline does.  Unsupported dtypes skip with the reason.
    """
    label = device_label(backend)
    if mode == "policy":
        from tortoise_xpu.backends import policy_for

        dtype = policy_for(backend).dtype(stage) if stage else torch.float32
        tf32 = dtype == torch.float32 and reduced_float32(backend.device, backend.capabilities().is_cpu)
        return Setting(f"{label} policy", dtype, precision_name(dtype, tf32), tolerance_for(dtype, tf32),
                       contextlib.nullcontext)
    dtype = getattr(torch, mode)
    if not backend.supports(dtype):
        pytest.skip(f"{label} does not support {mode}")
    context = strict_float32 if dtype == torch.float32 else contextlib.nullcontext
    return Setting(f"{label} {mode}", dtype, mode, tolerance_for(dtype), context)


def check(measurements: list[Measurement], parity: ParityResults) -> None:
    """Record every measurement, then fail listing every out-of-tolerance one."""
    for m in measurements:
        parity.record(m)
    failures = [f"{m.row} [{m.column}]: {'; '.join(m.failures)}" for m in measurements if not m.ok]
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def reference(full_size_dir: Path | None):
    """``reference(case, size)`` -> (CPU float32 model, inputs, reference outputs), computed once per run."""
    from tests.parity.cases import CPU_FLOAT32, build, run

    cache: dict[tuple[str, str], tuple] = {}

    def get(case, size: str):
        key = (case.name, size)
        if key not in cache:
            if size == "full":
                from tortoise_xpu.errors import ModelFileError

                try:
                    model = build(case, full_size_dir)
                except ModelFileError as exc:
                    pytest.skip(f"full-size {case.file} not usable: {exc}")
            else:
                model = build(case, None)
            inputs = case.inputs(model, torch.Generator().manual_seed(INPUT_SEED))
            cache[key] = (model, inputs, run(case, model, inputs, CPU_FLOAT32))
        return cache[key]

    return get
