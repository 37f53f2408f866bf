"""Every model's stages on each backend and dtype against CPU float32.

One test per (model, backend, dtype, size): AR (conditioning latent, teacher-forced text/mel
logits, latents pass, 20 cached decode steps with int and device-tensor positions), CLVP (text and
speech latents, scores), CVVP (scores), diffusion (voice latent, aligned embedding, ε and variance
at fixed timesteps with and without conditioning-free), UnivNet with fixed noise, HiFi-GAN, both
RLGs and the classifier.  What runs is in ``cases.py``; tolerances in ``tolerances.py``.
"""

from __future__ import annotations

import pytest

from tests.parity.cases import Target, all_cases, run, uses_autocast
from tests.parity.conftest import check, setting_for, supports_autocast

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_stages(case, model_size, backend, dtype, reference, parity):
    model, inputs, ref = reference(case, model_size)
    setting = setting_for(backend, dtype, case.stage)
    target = Target(backend.device, setting.dtype, autocast=supports_autocast(backend, setting.dtype))
    with setting.context():
        out = run(case, model, inputs, target)
    prefix = case.name if model_size == "tiny" else f"{case.name}[full]"
    note = "autocast" if uses_autocast(model, target) else ""
    assert set(out) == set(ref)
    check([setting.measure(f"{prefix}/{stage}", o.tensor, ref[stage].tensor, o.logits, note=note)
           for stage, o in out.items()], parity)
