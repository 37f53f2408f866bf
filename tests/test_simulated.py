"""The simulated-device catalogue and SimulatedBackend: the CPU standing in for another backend's device."""

from __future__ import annotations

import torch

from tortoise_xpu.backends import BACKENDS, policy_for
from tortoise_xpu.backends.simulated import SIM_BY_KEY, SIM_DEVICES, TYPICAL_DEVICES, SimulatedBackend


def test_one_catalogue_serves_tests_and_doctor():
    from tests import simdevices

    assert simdevices.SIM_DEVICES is SIM_DEVICES  # the tests' fakes are made from the same entries
    assert set(TYPICAL_DEVICES) == set(BACKENDS)
    for backend, dev in TYPICAL_DEVICES.items():
        assert dev.backend == backend and SIM_BY_KEY[dev.key] is dev


def test_catalogue_capabilities_say_what_each_device_lacks():
    dml, arc, m2, cpu = (SIM_BY_KEY[k].capabilities() for k in ("directml", "arc-a770", "apple-m2", "cpu"))
    assert not dml.complex and not dml.bfloat16 and not dml.float64
    assert arc.bfloat16 and not arc.float64 and arc.complex
    assert m2.unified_memory and not m2.float64
    assert cpu.is_cpu and cpu.weight_first_gemm
    assert SIM_BY_KEY["directml"].memory() == (None, None)


def test_simulated_backend_plans_as_its_target_on_the_cpu():
    sim = SimulatedBackend("dml")
    assert sim.target == "directml" and sim.device.type == "cpu" and not sim.capabilities().graphs
    assert "simulated on the CPU" in sim.device_names()[0]
    p = policy_for(sim, candidates=2)
    assert p.ar_dtype == torch.float16 and not p.use_complex_stft
    assert sim.audit_rules.backend == "directml" and sim.quirks == BACKENDS["directml"](0).quirks
