"""Portability audit: every preset, sampler and the long-form read are legal on XPU and DirectML.

The pipeline runs on the CPU with tiny random models while ``SimulatedBackend`` makes it plan
as for the target device (its Policy's dtypes, residency, real-valued STFT on DirectML), and
``Recorder`` logs every aten op.  A test fails listing the offending ops with their stage and
source line.  The planted-op tests show the audit can fail.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tortoise_xpu.backends import BACKENDS
from tortoise_xpu.backends.audit import Recorder, rules_for
from tortoise_xpu.backends.base import AuditRules
from tortoise_xpu.backends.markers import cpu_route, stage
from tortoise_xpu.backends.simulated import SimulatedBackend
from tortoise_xpu.audio.synthetic import synthetic_clip
from tortoise_xpu.cli.doctor import TINY_SETTINGS, AuditRun, run_pipeline
from tortoise_xpu.pipeline import PRESETS, TextToSpeech

TARGETS = ("xpu", "directml")


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip()


@pytest.fixture(scope="module")
def pipelines(tiny_models_dir):
    """One TextToSpeech per audited backend, simulated on the CPU (models load once per module)."""
    return {t: TextToSpeech(models_dir=tiny_models_dir, device=SimulatedBackend(t)) for t in TARGETS}


def audit(tts, fn, target: str):
    with Recorder() as rec:
        fn()
    return rec.report(rules_for(target))


# ------------------------------------------------------------------------------------------ pipeline is clean
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("target", TARGETS)
def test_every_preset_is_clean(pipelines, target, preset):
    tts = pipelines[target]
    report = audit(tts, lambda: run_pipeline(tts, AuditRun(preset, preset)), target)
    assert report.ok, report.format_violations()
    counts = report.op_counts()
    assert {"ar", "clvp", "diffusion", "vocoder"} <= set(counts) and counts["ar"]["device"] > 100


@pytest.mark.parametrize("sampler", ["p", "ddim", "dpm++2m"])
@pytest.mark.parametrize("target", TARGETS)
def test_every_sampler_is_clean_with_a_voice_clip(pipelines, clip, target, sampler):
    # The voice clip runs the mel/STFT path and CVVP; guidance off where the sampler allows it.
    tts = pipelines[target]
    run = AuditRun(sampler, "standard", voice="clip",
                   settings={"sampler": sampler, "cond_free": sampler == "dpm++2m", "cvvp_amount": 0.5})
    report = audit(tts, lambda: run_pipeline(tts, run, clip=clip), target)
    assert report.ok, report.format_violations()
    assert report.op_counts()["conditioning"]["device"] > 100


def test_simulated_policies_take_each_backends_path(pipelines):
    xpu, dml = pipelines["xpu"].policy(2), pipelines["directml"].policy(2)
    from tortoise_xpu.backends.xpu import _torch_at_least

    # complex STFT on XPU from torch 2.8 (test_xpu_before_torch_2_8_takes_the_real_stft covers older)
    assert xpu.ar_dtype == torch.bfloat16 and xpu.use_complex_stft is _torch_at_least("2.8")
    assert dml.ar_dtype == torch.float16 and not dml.use_complex_stft and dml.vocoder_dtype == torch.float32
    assert SimulatedBackend("dml").target == "directml" and SimulatedBackend("xpu").device.type == "cpu"


@pytest.mark.parametrize("target", TARGETS)
def test_redaction_free_read_is_clean(tiny_models_dir, tmp_path, target):
    import soundfile as sf

    from tortoise_xpu.cli import build_parser

    voice = tmp_path / "voice"
    voice.mkdir()
    # A 24 kHz clip: loading it for the AR resamples to 22.05 kHz (the resampling kernel path).
    sf.write(voice / "a.wav", synthetic_clip(sample_rate=24000, seconds=2.0)[0].numpy(), 24000)
    text = tmp_path / "book.txt"
    text.write_text("The first sentence is here. [whispering] The second one, in brackets, is spoken.\n")
    args = build_parser().parse_args([
        "read", str(text), "-o", str(tmp_path / "out"), "--disable-redaction", "-q", "--text-split", "20,40",
        "-p", "ultra_fast", "--num-autoregressive-samples", "2", "--diffusion-iterations", "2",
        "--max-mel-tokens", "6", "--seed", "3", "-v", str(voice), "--models-dir", str(tiny_models_dir)])
    args.device = SimulatedBackend(target)  # resolve() takes a Backend object as is
    with Recorder() as rec:
        assert args.func(args) == 0
    report = rec.report(target)
    assert report.ok, report.format_violations()
    assert (tmp_path / "out" / "combined.wav").is_file()
    assert len(list((tmp_path / "out").glob("chunk_*.wav"))) >= 2
    assert report.op_counts()["conditioning"]["device"] > 100  # the clip's mels and latents were audited


@pytest.mark.parametrize("target", TARGETS)
def test_streaming_is_clean(pipelines, clip, target):
    tts = pipelines[target]
    stream = tts.tts_stream
    chunks = []
    report = audit(tts, lambda: chunks.extend(stream("Streaming check.", voice_samples=[clip], seed=1,
                                                     max_mel_tokens=8, stream_chunk_size=3, first_buffer=3)),
                   target)
    assert report.ok, report.format_violations()
    assert len(chunks) >= 2 and "hifigan" in report.op_counts()


def test_deliberate_cpu_routes_are_reported_not_flagged(pipelines):
    tts = pipelines["directml"]
    # Fresh schedule tables (they are cached) so their construction is recorded too.
    from tortoise_xpu.diffusion.schedule import DiffusionSchedule

    from tortoise_xpu.diffusion.schedule import linear_betas

    with Recorder() as rec:
        DiffusionSchedule(linear_betas(50)).table("betas")
        run_pipeline(tts, AuditRun("draws", "ultra_fast"))
    report = rec.report("directml")
    assert report.ok, report.format_violations()
    routes = {r["reason"]: r for r in report.cpu_routes()}
    schedule = next(r for reason, r in routes.items() if reason.startswith("diffusion schedule"))
    assert {"dtype: float64", "fallback: aten::cumprod"} <= set(schedule["avoids"]["directml"])
    assert schedule["avoids"]["xpu"] == ["dtype: float64"]
    draws = next(r for reason, r in routes.items() if "CPU torch.Generator" in reason)
    assert {"ar", "diffusion"} <= set(draws["stages"]) and "aten::rand" in draws["ops"]
    assert not report.device_random_draws()


# ------------------------------------------------------------------------------------------ the audit can fail
def test_planted_float64_op_is_caught():
    with Recorder() as rec, stage("diffusion"):
        x = torch.ones(4)
        y = (x.double() * 2).sum()  # noqa: F841  (a float64 reduction "on the device")
        with cpu_route("allowed: host table"):
            torch.arange(3, dtype=torch.float64).cumprod(0)
    xpu = rec.report("xpu")
    assert not xpu.ok
    ops = {v.record.op for v in xpu.violations}
    assert {"aten::_to_copy.default", "aten::mul.Tensor", "aten::sum.default"} <= ops
    assert all(v.kind == "dtype" and v.record.stage == "diffusion" for v in xpu.violations)
    assert "test_audit.py" in (xpu.violations[0].record.location or "")
    assert "aten::sum.default(float64) -> float64" in xpu.format_violations()
    assert rec.report("mps").violations and rec.report("directml").violations
    assert rec.report("cuda").ok and rec.report("cpu").ok
    assert not any(v.record.op.startswith("aten::cumprod") for v in xpu.violations)


def test_planted_complex_stft_is_caught(monkeypatch):
    from tortoise_xpu.backends import xpu

    monkeypatch.setattr(xpu, "_torch_at_least", lambda version: True)  # the XPU rules of torch >= 2.8
    wav = torch.randn(1, 4096, generator=torch.Generator().manual_seed(0))
    with Recorder() as rec, stage("conditioning"):
        torch.stft(wav, 256, window=torch.hann_window(256), return_complex=True).abs()
    dml = rec.report("directml")
    kinds = {(v.kind, v.record.op) for v in dml.violations}
    assert ("dtype", "aten::_fft_r2c.default") in kinds and ("quirk", "aten::_fft_r2c.default") in kinds
    assert ("dtype", "aten::abs.default") in kinds
    assert rec.report("xpu").ok  # complex64 and the FFT are fine on XPU with torch >= 2.8


def test_pipeline_with_complex_stft_on_directml_fails_the_audit(pipelines, clip, monkeypatch):
    tts = pipelines["directml"]
    honest = tts.policy
    monkeypatch.setattr(tts, "policy", lambda c=16: dataclasses.replace(honest(c), use_complex_stft=True))
    with Recorder() as rec, stage("conditioning"):
        tts.get_conditioning_latents([clip])
    report = rec.report("directml")
    assert not report.ok
    bad = [v for v in report.violations if v.kind == "dtype" and "complex64" in v.why]
    assert bad and all(v.record.stage == "conditioning" for v in bad)
    assert any("tortoise_xpu/audio/mel.py" in (v.record.location or "") for v in bad)


def test_pipeline_computing_in_float64_fails_the_audit(pipelines, monkeypatch):
    import tortoise_xpu.diffusion.samplers as samplers

    tts = pipelines["xpu"]
    real = samplers.denormalize_mel
    monkeypatch.setattr(samplers, "denormalize_mel", lambda mel: real(mel.double()).float())
    report = audit(tts, lambda: run_pipeline(tts, AuditRun("f64", "ultra_fast")), "xpu")
    assert not report.ok
    assert {v.record.stage for v in report.violations} == {"diffusion"}
    assert "float64" in report.format_violations()


# ------------------------------------------------------------------------------------------ rules
def test_rules_are_a_member_of_each_backend():
    for name, cls in BACKENDS.items():
        rules = cls(0).audit_rules
        assert isinstance(rules, AuditRules) and rules.backend == name
        assert rules_for(name) == rules
    assert SimulatedBackend("dml").audit_rules == rules_for("directml")


def test_directml_rules_classify_ops():
    r = rules_for("dml")
    assert r.problems("aten::repeat_interleave.Tensor", ())[0][0] == "broken"
    assert r.problems("aten::eye.m", ())[0][0] == "broken"
    assert r.problems("aten::_thnn_fused_lstm_cell.default", ())[0][0] == "broken"
    for op in ("aten::multinomial.default", "aten::cumprod.default", "aten::normal.Tensor_Tensor",
               "aten::_embedding_bag.default", "aten::count_nonzero.dim_IntList"):
        assert r.problems(op, ())[0][0] == "fallback", op
    assert r.problems("aten::normal.float_Tensor", ()) == [("quirk", "directml quirks route this op to the CPU")]
    assert r.problems("aten::mm.default", (torch.float16,)) == []
    assert [k for k, _ in r.problems("aten::mm.default", (torch.complex64,))] == ["dtype"]
    x = rules_for("xpu")
    assert x.problems("aten::mm.default", (torch.float64,))[0][0] == "dtype"
    assert x.problems("aten::mm.default", (torch.complex64, torch.bfloat16)) == []
    assert rules_for("mps").problems("aten::add.Tensor", (torch.float64,))
    assert rules_for("cuda").problems("aten::eye.m", (torch.float64, torch.complex128)) == []


def test_draws_reading_device_tensors_are_device_work():
    # A CPU generator makes a *factory* draw host work, not an op that reads (device) tensors.
    g = torch.Generator().manual_seed(0)
    with Recorder() as rec:
        torch.randn(3, generator=g)
        torch.multinomial(torch.ones(5), 1, generator=g)
        torch.randn(2)  # the device's own generator: reported, since one seed would not give one result
    report = rec.report("directml")
    assert [v.record.op for v in report.violations] == ["aten::multinomial.default"]
    assert {r.op for r in report.device_random_draws()} == {"aten::multinomial.default", "aten::randn.default"}


# ------------------------------------------------------------------------------------------ doctor
def test_doctor_json_and_tables(tiny_models_dir, capsys):
    from tortoise_xpu.cli import main
    from tortoise_xpu.cli.doctor import print_report

    assert main(["doctor", "--backend", "directml", "--json", "--quick", "--models-dir", str(tiny_models_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    dml = result["backends"]["directml"]
    assert dml["violations"] == [] and dml["ok"] and result["ok"]
    assert {"cpu_routes", "op_counts", "policy"} <= set(dml) and dml["policy"]["use_complex_stft"] is False
    assert dml["op_counts"]["conditioning"]["device"] > 0
    # (the mel and resampling tables are cached per process: earlier tests may have built them)
    assert any("CPU torch.Generator" in r["reason"] for r in dml["cpu_routes"])
    checks = dml["device_checks"]
    assert checks["present"] is False and "torch-directml" in checks["reason"]
    from rich.console import Console

    console = Console(width=200, record=True)
    print_report(result, console)
    text = console.export_text()
    assert "Deliberate CPU routes" in text and "Ops by stage" in text and "OK: no violations" in text


def test_xpu_before_torch_2_8_takes_the_real_stft(tiny_models_dir, clip, monkeypatch):
    # torch < 2.8 had no XPU FFT kernels: the quirks route FFT ops to the CPU, so the mels must
    # take the real-valued STFT, and the audit (FFT ops as quirk ops) must find the run clean.
    import tortoise_xpu.backends.xpu as xpu

    monkeypatch.setattr(xpu, "_torch_at_least", lambda version: False)
    assert "aten::_fft_r2c" in rules_for("xpu").quirk_ops
    tts = TextToSpeech(models_dir=tiny_models_dir, device=SimulatedBackend("xpu"))
    assert tts.policy(2).use_complex_stft is False
    with Recorder() as rec, stage("conditioning"):
        tts.get_conditioning_latents([clip])
    report = rec.report("xpu")
    assert report.ok, report.format_violations()


def test_device_checks_run_on_a_present_backend():
    # The CPU is always present: the same checks doctor runs on an XPU/DirectML/MPS device.
    from tortoise_xpu.cli.doctor import device_checks

    result = device_checks("cpu")
    assert result["present"] is True
    names = [c["check"] for c in result["checks"]]
    assert names == ["matmul fp32", "autocast fp16", "autocast bf16", "SDPA", "STFT path"]
    failed = [c for c in result["checks"] if not c["ok"]]
    assert not failed, failed
    assert all(c["ms"] is not None and c["ms"] >= 0 for c in result["checks"])
    assert device_checks("directml")["present"] is False
