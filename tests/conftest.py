"""Shared pytest fixtures.

``backend``: parametrized over every registered backend; the ones this machine
cannot run are skipped with their reason (CPU always runs).  Hardware-parity
tests take it to run the same check on every device present::

    def test_something(backend):
        x = backend.to_device(torch.ones(3))

``simulate``: make this machine look like one of the simulated devices of
``tests/simdevices.py`` (or a custom ``SimDevice``) for the rest of the test;
the other accelerator backends are hidden unless ``hide_others=False``.
"""

from __future__ import annotations

import os

import pytest

# The CPU's precision policy measures kernels on the machine it runs on (backends/cpu.py), which would
# make the tests' dtypes depend on the machine and its load: decide from the flags alone, which keeps
# every CPU stage in float32.  TORTOISE_XPU_CPU_PROBE=1 (e.g. for `pytest -m parity`) runs the
# measured policy instead; tests of the policy itself simulate CPUs (tests/test_cpu_precision.py).
os.environ.setdefault("TORTOISE_XPU_CPU_PROBE", "0")

from tests.simdevices import SIM_BY_KEY, SimDevice, simulate as _simulate
from tortoise_xpu.backends import BACKENDS


@pytest.fixture(params=list(BACKENDS), ids=lambda name: name)
def backend(request):
    """An available Backend (index 0) per registered backend; unavailable ones skip with the reason."""
    instance = BACKENDS[request.param](0)
    reason = instance.why_unavailable()
    if reason is not None:
        pytest.skip(f"{request.param} not available here: {reason}")
    return instance


@pytest.fixture
def simulate(monkeypatch):
    """``simulate("arc-a770")`` or ``simulate(SimDevice(...), count=2)``: fake that device until the test ends."""

    def install(device: str | SimDevice, count: int = 1, hide_others: bool = True) -> SimDevice:
        dev = SIM_BY_KEY[device] if isinstance(device, str) else device
        _simulate(monkeypatch, dev, count, hide_others)
        return dev

    return install


pytest_plugins = ["tests.fixtures_tiny"]
# The hardware-parity suite's options (--device, --full-size, --parity-report) and summary table.
pytest_plugins = [*globals().get("pytest_plugins", []), "tests.parity.plugin"]
pytest_plugins = [*globals().get("pytest_plugins", []), "tests.fixtures_assets"]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread(request):
    """Run the suite on one intra-op thread.

    The tests use tiny models, which gain nothing from a second thread, and on a busy 2-core CI
    runner OpenMP threads spin waiting on each other (measured: 397 s vs 36 s for one file).  One
    thread also fixes the reduction order of the golden comparisons.  Full-size parity runs
    (``--full-size``) keep torch's default.
    """
    import torch

    if request.config.getoption("--full-size", default=None):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
