import pytest

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline.presets import PRESETS, preset_settings


@pytest.mark.parametrize("name,samples,iters", [("ultra_fast", 16, 30), ("fast", 96, 80), ("standard", 256, 200),
                                                ("high_quality", 256, 400), ("single_sample", 8, 10),
                                                ("very_fast", 32, 30)])
def test_preset_values(name, samples, iters):
    s = preset_settings(name)
    assert s["num_autoregressive_samples"] == samples and s["diffusion_iterations"] == iters
    assert (s["temperature"], s["top_p"], s["repetition_penalty"], s["cond_free_k"]) == (0.8, 0.8, 2.0, 2.0)
    assert s["length_penalty"] == 1.0 and s["diffusion_temperature"] == 1.0


def test_ultra_fast_has_cond_free_off_and_others_on():
    assert preset_settings("ultra_fast")["cond_free"] is False
    assert all(preset_settings(p)["cond_free"] for p in PRESETS if p != "ultra_fast")
    assert preset_settings("very_fast")["sampler"] == "dpm++2m"
    assert preset_settings("fast")["sampler"] == "p"


def test_overrides_win_and_none_is_ignored():
    s = preset_settings("fast", temperature=0.5, diffusion_iterations=None, num_autoregressive_samples=4)
    assert s["temperature"] == 0.5 and s["diffusion_iterations"] == 80 and s["num_autoregressive_samples"] == 4


def test_unknown_preset_and_setting():
    with pytest.raises(UserError, match="ultra_fast"):
        preset_settings("turbo")
    with pytest.raises(UserError, match="unknown setting"):
        preset_settings("fast", warp_speed=9)


def test_resolve_settings_checks_ranges():
    from tortoise_xpu.pipeline.presets import resolve_settings

    s, sampling, n = resolve_settings({"temperature": 0.5, "top_k": None}, force_tokens=7)
    assert n == 7 and sampling.temperature == 0.5 and sampling.top_k == 50 and s["max_mel_tokens"] == 500
    for bad in ({"cvvp_amount": 1.5}, {"cvvp_amount": -0.1}, {"max_mel_tokens": 0}, {"top_p": 2.0}):
        with pytest.raises(UserError):
            resolve_settings(bad)
