"""The model store and per-run contexts: many callers on one set of models, with tiny models on the CPU.

* several threads calling ``tts()`` on one ``TextToSpeech`` get exactly what the same calls give
  one after another, resident and per-stage (where the store serialises device use);
* a stream advanced step by step interleaves with a batch ``tts()`` in another thread, both
  equal to their solo results;
* models load once however many threads ask; cancellation stops a run at a step boundary and
  leaves the store usable;
* fine-tuned file overrides load as strictly as the official files.

Every wait in these tests is bounded (``TIMEOUT``), so a deadlock fails instead of hanging.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tortoise_xpu.errors import Cancelled, UserError

FAST = dict(num_autoregressive_samples=2, diffusion_iterations=2, max_mel_tokens=10)
SCHEDULE = dict(stream_chunk_size=4, first_buffer=4, overlap_wav_len=256, force_tokens=12)
TIMEOUT = 120  # seconds any one wait may take before the test fails
SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def tts(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    return TextToSpeech(models_dir=tiny_models_dir, device="cpu")


def _in_threads(fn, args: list) -> list:
    """``fn(arg)`` for every arg, each in its own thread, all released at once; results in order."""
    barrier = threading.Barrier(len(args), timeout=TIMEOUT)

    def run(arg):
        barrier.wait()
        return fn(arg)

    with ThreadPoolExecutor(len(args)) as pool:
        futures = [pool.submit(run, a) for a in args]
        return [f.result(timeout=TIMEOUT) for f in futures]


# ------------------------------------------------------------------------------------- concurrency
@pytest.mark.parametrize("low_vram", [False, True], ids=["resident", "per-stage"])
def test_tts_from_several_threads_equals_the_same_calls_in_turn(tiny_models_dir, low_vram):
    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", low_vram=low_vram)
    assert tts.store.resident is not low_vram
    clip = [torch.randn(1, 30000, generator=torch.Generator().manual_seed(9)) * 0.1]

    def one(seed: int):
        voice = {"voice_samples": clip} if seed % 2 else {}  # clips and random voices, mixed
        wav = tts.tts("Several callers at once.", seed=seed, **voice, **FAST)
        return wav, tts.last_report  # the calling thread's own report

    alone = [one(seed) for seed in SEEDS]
    together = _in_threads(one, list(SEEDS))
    for seed, (wav, _), (got, report) in zip(SEEDS, alone, together):
        assert torch.equal(wav, got), f"seed {seed} differs when run among other threads"
        assert report.seed == seed and "vocoder" in report.stages
    assert not torch.equal(alone[0][0], alone[2][0])  # the seeds do differ (both random voices)


def test_a_stream_interleaved_with_a_batch_run_gives_both_their_solo_results(tts):
    text, batch_text = "A stream meanwhile.", "And a batch run."
    solo_stream = list(tts.tts_stream(text, seed=5, **SCHEDULE))
    solo_batch = tts.tts(batch_text, seed=6, **FAST)
    assert len(solo_stream) == 3

    in_ar = threading.Event()  # the batch run is inside its AR sampling, paused
    stream_moved = threading.Event()  # the stream made progress meanwhile
    steps = []

    def pause_in_ar() -> bool:  # the batch run's cancellation check: called at every step boundary
        steps.append(1)
        if len(steps) == 3:  # a few AR steps in: hold the batch run there until the stream has moved
            in_ar.set()
            assert stream_moved.wait(TIMEOUT)
        return False

    stream = tts.tts_stream(text, seed=5, **SCHEDULE)
    got_stream = [next(stream)]
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(tts.tts, batch_text, seed=6, cancel=pause_in_ar, **FAST)
        assert in_ar.wait(TIMEOUT)
        got_stream.append(next(stream))  # the AR model and a decode engine used while the batch run holds its own
        stream_moved.set()
        got_stream.extend(stream)
        got_batch = batch.result(timeout=TIMEOUT)
    assert len(got_stream) == len(solo_stream)
    assert all(torch.equal(a, b) for a, b in zip(got_stream, solo_stream))
    assert torch.equal(got_batch, solo_batch)


def test_each_model_loads_once_however_many_threads_ask(tiny_models_dir, monkeypatch):
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.models import loading

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    calls = []
    real = loading.load_model

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(loading, "load_model", counting)
    policy = tts.policy(4)
    models = _in_threads(lambda _: tts.store.model("clvp", policy), list(range(6)))
    assert all(m is models[0] for m in models)
    assert calls == ["clvp2.pth"]
    assert tts.store.loaded() == ["clvp2.pth"]
    assert tts.store.held_bytes()["cpu"] == sum(t.numel() * t.element_size() for t in models[0].state_dict().values())


def test_the_backend_optimises_each_model_once_after_its_preparation(tiny_models_dir, monkeypatch):
    """``Backend.optimize`` (IPEX where asked for) sees every network the store loads, in its stage dtype."""
    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", dtype="bfloat16")
    seen = []
    monkeypatch.setattr(tts.backend, "optimize", lambda module, dtype: seen.append((type(module).__name__, dtype))
                        or module)
    tts.load_models(["autoregressive", "vocoder", "rlg_auto"], candidates=2)
    assert seen == [("UnifiedVoice", torch.bfloat16), ("UnivNetGenerator", torch.bfloat16),
                    ("RandomLatentConverter", torch.float32)]


def test_models_are_kept_per_preparation(tiny_models_dir):
    """A Policy that prepares a network differently gets its own copy: no run finds a model another
    Policy prepared (here the AR model, weight-first linears or not, packed or not)."""
    import dataclasses

    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    weight_first = dataclasses.replace(tts.policy(16), ar_weight_first=True, packed_weights=False)
    plain = dataclasses.replace(weight_first, ar_weight_first=False)
    packed = dataclasses.replace(weight_first, ar_weight_first=False, packed_weights=True)
    a, b = tts.store.model("autoregressive", weight_first), tts.store.model("autoregressive", plain)
    c = tts.store.model("autoregressive", packed)
    assert a is not b and a.weight_first != b.weight_first
    assert c is not a and c is not b and type(c.mel_head).__name__ == "PackedLinear"
    assert tts.store.model("autoregressive", weight_first) is a


def test_per_stage_runs_take_the_device_in_turn(tiny_models_dir):
    """The device lease: another run's stage waits until the holder's last model leaves the device;
    the same run may nest its models (a stream holds the AR and HiFi-GAN models at once)."""
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.backends import resolve
    from tortoise_xpu.pipeline.store import ModelStore

    store = ModelStore(resolve("cpu"), tiny_models_dir, resident=False)
    first, second = object(), object()
    entered = threading.Event()

    def other():
        with store.device_lease(second):
            entered.set()

    pool = ThreadPoolExecutor(1)
    try:
        with store.device_lease(first), store.device_lease(first):  # re-entrant for its owner
            waiting = pool.submit(other)
            assert not entered.wait(0.3)  # held by the first run
            assert store.device_holder() is first
        assert entered.wait(TIMEOUT)
        waiting.result(timeout=TIMEOUT)
    finally:
        pool.shutdown(wait=False)
    assert store.device_holder() is None
    # A second run in the thread where a paused stream holds the device fails instead of waiting forever.
    from tortoise_xpu.errors import TortoiseError

    paused = TextToSpeech(models_dir=tiny_models_dir, device="cpu", low_vram=True)
    stream = paused.tts_stream("Paused.", seed=1, **SCHEDULE)
    next(stream)
    with pytest.raises(TortoiseError, match="paused stream"):
        paused.tts("Another.", seed=1, **FAST)
    stream.close()
    assert paused.store.device_holder() is None
    # A stage holds the lease only while its model is on the device.
    ctx = TextToSpeech(models_dir=tiny_models_dir, device="cpu", low_vram=True).new_context(1)
    with store.on_device("rlg_auto", ctx), store.on_device("rlg_diffuser", ctx):
        assert store.device_holder() is ctx
    assert store.device_holder() is None


# ------------------------------------------------------------------------------------- cancellation
def test_cancel_stops_a_run_at_a_step_and_the_next_run_is_unchanged(tts):
    before = tts.tts("Cancel me.", seed=8, **FAST)
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        tts.tts("Cancel me.", seed=8, cancel=event, **FAST)
    checks = []

    def after_five_steps() -> bool:
        checks.append(1)
        return len(checks) > 5

    with pytest.raises(Cancelled):
        tts.tts("Cancel me.", seed=8, cancel=after_five_steps, **FAST)
    assert "ar" in tts.last_report.stages and "diffusion" not in tts.last_report.stages  # stopped mid-AR
    stream = tts.tts_stream("Cancel me.", seed=8, cancel=after_five_steps, **SCHEDULE)
    with pytest.raises(Cancelled):
        list(stream)
    assert torch.equal(tts.tts("Cancel me.", seed=8, **FAST), before)


# ------------------------------------------------------------------------------------- fine-tuned files
@pytest.fixture(scope="module")
def other_ar(tiny_models_dir, tmp_path_factory):
    """A folder like the tiny one but with another AR model (other seed); and that AR file alone
    saved somewhere else."""
    from tortoise_xpu.models.loading import write_random_weights

    folder = tmp_path_factory.mktemp("other-ar")
    shutil.copytree(tiny_models_dir, folder, dirs_exist_ok=True)
    fresh = tmp_path_factory.mktemp("fresh-ar")
    write_random_weights(fresh, names=["autoregressive"], tiny=True, seed=99, sha=False)
    shutil.copy(fresh / "autoregressive.pth", folder / "autoregressive.pth")
    elsewhere = tmp_path_factory.mktemp("finetunes") / "my-ar.pth"
    shutil.copy(fresh / "autoregressive.pth", elsewhere)
    return folder, elsewhere


def test_a_checkpoint_override_gives_that_models_output(tiny_models_dir, other_ar, tts):
    from tortoise_xpu import TextToSpeech

    folder, elsewhere = other_ar
    override = TextToSpeech(models_dir=tiny_models_dir, device="cpu", checkpoints={"autoregressive": elsewhere})
    want = TextToSpeech(models_dir=folder, device="cpu").tts("Fine tuned.", seed=3, **FAST)
    got = override.tts("Fine tuned.", seed=3, **FAST)
    assert torch.equal(got, want)
    assert not torch.equal(got, tts.tts("Fine tuned.", seed=3, **FAST))
    assert override.checkpoint_overrides() == {"autoregressive.pth": str(elsewhere)}


def test_read_uses_the_checkpoint_override_and_records_it(tiny_models_dir, other_ar, tmp_path, capsys):
    """``read`` builds its engine with the --X-checkpoint flags (as speak does): its chunks equal a
    read of a folder holding that AR, and the manifest's model fingerprint tells them apart."""
    import json

    from tests.error_cases import run_cli
    from tortoise_xpu.pipeline.chunk_synthesis import models_fingerprint

    folder, elsewhere = other_ar
    book = tmp_path / "book.txt"
    book.write_text("Fine tuned. Read aloud.")
    base = ["read", book, "--device", "cpu", "--seed", "3", "--num-autoregressive-samples", "2",
            "--diffusion-iterations", "2", "--max-mel-tokens", "10", "-q"]
    code, _, err = run_cli([*base, "--models-dir", tiny_models_dir, "--ar-checkpoint", elsewhere,
                            "-o", tmp_path / "ft"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*base, "--models-dir", folder, "-o", tmp_path / "folder"], capsys)
    assert code == 0, err
    assert (tmp_path / "ft" / "combined.wav").read_bytes() == (tmp_path / "folder" / "combined.wav").read_bytes()
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["models"] == models_fingerprint(tiny_models_dir, {"autoregressive": elsewhere})
    assert manifest["models"] != models_fingerprint(tiny_models_dir)


def test_bad_checkpoint_overrides_are_one_line_errors(tiny_models_dir, tmp_path):
    from tortoise_xpu import TextToSpeech

    with pytest.raises(UserError, match="does not exist"):
        TextToSpeech(models_dir=tiny_models_dir, device="cpu", checkpoints={"autoregressive": tmp_path / "nope.pth"})
    with pytest.raises(UserError, match="unknown network"):
        TextToSpeech(models_dir=tiny_models_dir, device="cpu", checkpoints={"gpt5": tiny_models_dir / "clvp2.pth"})
    wrong = TextToSpeech(models_dir=tiny_models_dir, device="cpu",
                         checkpoints={"diffusion": tiny_models_dir / "clvp2.pth"})
    with pytest.raises(UserError, match="clvp2.pth"):  # the strict loader names the file and what it holds
        wrong.model("diffusion")


def test_cli_checkpoint_flags(tiny_models_dir, other_ar, tmp_path, capsys):
    import json

    from tests.error_cases import run_cli

    _, elsewhere = other_ar
    out = tmp_path / "ft.wav"
    base = ["speak", "Fine tuned.", "--device", "cpu", "--models-dir", tiny_models_dir, "--seed", "3",
            "--num-autoregressive-samples", "2", "--diffusion-iterations", "2", "--max-mel-tokens", "10"]
    code, stdout, err = run_cli([*base, "--ar-checkpoint", elsewhere, "-o", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["checkpoints"] == {"autoregressive.pth": str(elsewhere)}
    assert out.exists()
    bad = tmp_path / "bad.wav"
    torch.save({"not": torch.zeros(3)}, tmp_path / "junk.pth")
    for flag, path in (("--ar-checkpoint", tmp_path / "junk.pth"), ("--vocoder-checkpoint", tmp_path / "none.pth")):
        code, _, err = run_cli([*base, flag, path, "-o", bad], capsys)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert path.name in lines[0]
        assert not bad.exists()
