"""Issue 7, assets and files: unknown names list the valid ones, broken or foreign model files are named
with what is wrong, code-carrying pickles are refused without running, and no output is left behind.

The model-file cases run the real pipeline on tiny random models until the broken file is loaded
(a fraction of a second each); the rest fake the synthesis.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.error_cases import TINY, check_case, fake_synth, run_cli  # noqa: F401  (fake_synth is a fixture)
from tortoise_xpu.errors import UserError

DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there: a download fails at once, as offline


@pytest.fixture
def models(tiny_models_dir, tmp_path):
    """A private models folder: links to the tiny models, any of which a test may replace."""
    d = tmp_path / "models"
    d.mkdir()
    for f in Path(tiny_models_dir).iterdir():
        os.symlink(f, d / f.name)
    return d


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("TORTOISE_XPU_HF_ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setenv("TORTOISE_XPU_DATA_ENDPOINT", DEAD_ENDPOINT)


def _replace(models: Path, name: str) -> Path:
    path = models / name
    path.unlink()
    return path


def _speak(capsys, models: Path, tmp_path: Path, *args):
    out = tmp_path / "out.wav"
    code, _, err = run_cli(["speak", "Hello there.", "-o", out, "--models-dir", models, "--seed", "1", *TINY, *args],
                           capsys)
    return code, err, out


class _Evil:
    """Unpickling this creates a marker file: the code a malicious checkpoint would run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------- names

def test_unknown_voice_lists_near_names(tmp_path, capsys, fake_synth):
    voices = tmp_path / "voices"
    for name in ("tom", "emma", "william"):
        (voices / name).mkdir(parents=True)
        sf.write(voices / name / "1.wav", np.full(22050, 0.1, np.float32), 22050)
    code, err, out = _speak(capsys, tmp_path, tmp_path, "--voice", "tomm", "-V", voices)
    msg = check_case("assets.unknown_voice", code, err, absent=[out])
    assert "william" not in msg.split("did you mean")[1].split(";")[0]  # only the near names
    assert fake_synth == []


def test_unknown_preset_and_sampler_list_the_valid_ones(tmp_path, capsys, tiny_models_dir):
    from tortoise_xpu.pipeline.presets import PRESETS, preset_settings
    from tortoise_xpu.pipeline.tts import TextToSpeech

    code, err, out = _speak(capsys, tmp_path, tmp_path, "--preset", "nope")
    msg = check_case("assets.unknown_preset", code, err, absent=[out])
    assert all(name in msg for name in PRESETS)
    code, err, out = _speak(capsys, tmp_path, tmp_path, "--sampler", "euler")
    check_case("assets.unknown_sampler", code, err, absent=[out])
    # the API says the same
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of: ultra_fast"):
        preset_settings("nope")
    with pytest.raises(UserError, match="unknown sampler 'euler'; choose one of: .*ddim"):
        TextToSpeech(models_dir=tiny_models_dir, device="cpu").tts("hi", sampler="euler")


def test_unknown_device_lists_the_valid_ones(tmp_path, capsys):
    code, err, out = _speak(capsys, tmp_path, tmp_path, "--device", "tpu")
    check_case("assets.unknown_device", code, err, absent=[out])


def test_unavailable_backend_says_why_and_what_to_install(tmp_path, capsys):
    from tortoise_xpu.backends import BACKENDS

    name = next((n for n in ("xpu", "directml", "mps", "cuda") if BACKENDS[n](0).why_unavailable()), None)
    if name is None:
        pytest.skip("every accelerator backend is available on this machine")
    code, err, out = _speak(capsys, tmp_path, tmp_path, "--device", name)
    msg = check_case("assets.unavailable_backend", code, err, absent=[out])
    assert f"device '{name}'" in msg


def test_output_that_is_a_folder_is_refused_before_synthesis(tmp_path, capsys, fake_synth, tiny_models_dir):
    folder = tmp_path / "outdir"
    folder.mkdir()
    code, _, err = run_cli(["speak", "Hello.", "-o", folder, "--models-dir", tiny_models_dir, *TINY], capsys)
    check_case("assets.output_is_folder", code, err)
    assert fake_synth == [] and list(folder.iterdir()) == []


# ---------------------------------------------------------------------------------------- model files

def test_missing_model_file_says_the_download_command(models, tmp_path, capsys, offline):
    _replace(models, "rlg_auto.pth")
    code, err, out = _speak(capsys, models, tmp_path)
    msg = check_case("assets.missing_model", code, err, absent=[out])
    assert "rlg_auto.pth" in msg
    assert not list(models.glob("rlg_auto*"))  # no partial download left


def test_missing_model_without_auto_download(models):
    from tortoise_xpu.errors import ModelFileError
    from tortoise_xpu.pipeline.tts import TextToSpeech

    _replace(models, "rlg_auto.pth")
    tts = TextToSpeech(models_dir=models, device="cpu", auto_download=False)
    with pytest.raises(ModelFileError, match=r"rlg_auto\.pth .*download it with: tortoise-xpu models download "
                                             r"rlg_auto\.pth --models-dir"):
        tts.model("rlg_auto")


def test_truncated_checkpoint(models, tiny_models_dir, tmp_path, capsys):
    data = (Path(tiny_models_dir) / "rlg_auto.pth").read_bytes()
    _replace(models, "rlg_auto.pth").write_bytes(data[: len(data) // 2])
    code, err, out = _speak(capsys, models, tmp_path)
    msg = check_case("assets.truncated_checkpoint", code, err, absent=[out])
    assert "rlg_auto.pth" in msg


def test_checkpoint_of_another_model(models, tiny_models_dir, tmp_path, capsys):
    target = _replace(models, "autoregressive.pth")
    target.write_bytes((Path(tiny_models_dir) / "clvp2.pth").read_bytes())
    code, err, out = _speak(capsys, models, tmp_path)
    check_case("assets.wrong_model", code, err, absent=[out])


def test_checkpoint_with_other_shapes_names_the_keys(models, tiny_models_dir, tmp_path, capsys):
    state = torch.load(Path(tiny_models_dir) / "rlg_diffuser.pth", weights_only=True)
    key = next(k for k, v in state.items() if v.dim() == 2)
    state[key] = torch.zeros(state[key].shape[0] + 3, state[key].shape[1])
    torch.save(state, _replace(models, "rlg_diffuser.pth"))
    code, err, out = _speak(capsys, models, tmp_path)
    msg = check_case("assets.wrong_shape", code, err, absent=[out])
    assert key in msg


def test_malicious_model_file_is_refused_and_never_runs(models, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "payload": _Evil(str(marker))}, _replace(models, "rlg_auto.pth"))
    code, err, out = _speak(capsys, models, tmp_path)
    msg = check_case("assets.malicious_pth", code, err, absent=[out])
    assert "rlg_auto.pth was refused" in msg and "could run code" in msg
    assert not marker.exists()
    # the payload is live: a plain pickle load does create the marker, so the check above means something
    legacy = tmp_path / "legacy.pkl"
    with open(legacy, "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    with open(legacy, "rb") as f:
        pickle.load(f)  # noqa: S301 - deliberately unsafe, to show the payload works
    assert marker.exists()


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_latents_file_is_refused_and_never_runs(tmp_path, capsys, fake_synth, container):
    marker = tmp_path / f"pwned-{container}"
    latents = tmp_path / "voice.pth"
    payload = (torch.zeros(1, 64), _Evil(str(marker)))
    if container == "zip":
        torch.save(payload, latents)
    else:
        with open(latents, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    code, err, out = _speak(capsys, tmp_path, tmp_path, "--voice", latents)
    msg = check_case("assets.malicious_pth", code, err, absent=[out])
    assert str(latents) in msg
    assert not marker.exists() and fake_synth == []


def test_latents_of_the_wrong_shapes(models, tmp_path, capsys):
    odd = tmp_path / "odd.pth"
    torch.save((torch.zeros(1, 7), torch.zeros(1, 9)), odd)
    code, err, out = _speak(capsys, models, tmp_path, "--voice", odd)  # refused against the loaded models
    check_case("assets.latents_shape", code, err, absent=[out])
    torch.save((torch.zeros(3, 5), torch.zeros(1, 9)), odd)  # not (1, D) at all: refused on reading
    code, err, out = _speak(capsys, models, tmp_path, "--voice", odd)
    check_case("assets.latents_shape", code, err, absent=[out])


# ---------------------------------------------------------------------------------------- checksums

def test_download_with_a_checksum_mismatch_keeps_nothing(tmp_path, capsys):
    from tests.fileserver import FileServer, Route

    server = FileServer()
    try:
        server.routes[server.data_path("tokenizer.json")] = Route(b"{}" + b" " * 4407)  # right size, wrong bytes
        code, _, err = run_cli(["models", "download", "tokenizer.json", "--models-dir", tmp_path, "--no-progress",
                                "--data-endpoint", server.url], capsys)
    finally:
        server.close()
    assert code == 2 and "Traceback" not in err
    failed = [line for line in err.splitlines() if "FAILED" in line]
    assert len(failed) == 1
    check_case("assets.checksum_mismatch", code, err, line=failed[0])
    assert not list(tmp_path.glob("tokenizer*"))


def test_verify_reports_a_file_that_fails_its_checksum(models, capsys):
    from tortoise_xpu import assets

    real = models / "rlg_auto.pth"
    data = real.read_bytes()
    _replace(models, "rlg_auto.pth").write_bytes(data)
    assets.record(models, "rlg_auto.pth", sha256=hashlib.sha256(b"what was downloaded").hexdigest(),
                  size=len(data), source="download",
                  config=assets.read_manifest(models)["rlg_auto.pth"]["config"])
    code, out, err = run_cli(["models", "verify", "rlg_auto", "--models-dir", models, "--json"], capsys)
    assert code == 1 and "Traceback" not in err
    import json

    row = json.loads(out)["files"][0]
    assert row["status"] == "failed"
    check_case("assets.checksum_mismatch", 2, "", line=row["reason"])
    assert "--force" in row["reason"]


# ------------------------------------------------------------- the models folder and its files (issue 16)

def test_models_folder_that_is_a_file(tmp_path, capsys, monkeypatch):
    not_a_folder = tmp_path / "models"
    not_a_folder.write_text("not a folder")
    monkeypatch.setenv("TORTOISE_XPU_MODELS", str(not_a_folder))
    out = tmp_path / "out.wav"
    code, _, err = run_cli(["speak", "Hello.", "-o", out, *TINY], capsys)
    check_case("assets.models_dir_not_a_folder", code, err, absent=[out])
    code, _, err = run_cli(["models", "verify"], capsys)
    check_case("assets.models_dir_not_a_folder", code, err)
    monkeypatch.delenv("TORTOISE_XPU_MODELS")
    code, _, err = run_cli(["models", "verify", "--models-dir", not_a_folder / "below"], capsys)
    assert "lies under" in check_case("assets.models_dir_not_a_folder", code, err)


def test_verify_checks_mel_norms_content(models, capsys):
    import json

    import torch

    torch.save(torch.linspace(-9.0, -2.0, 79), _replace(models, "mel_norms.pth"))
    code, out, err = run_cli(["models", "verify", "mel_norms", "--models-dir", models, "--json"], capsys)
    row = json.loads(out)["files"][0]
    assert row["status"] == "failed" and "Traceback" not in err
    check_case("assets.verify_bad_mel_norms", code, "", line=row["reason"])


def test_verify_checks_that_the_tokenizer_parses(models, capsys):
    import json

    _replace(models, "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
    code, out, err = run_cli(["models", "verify", "tokenizer", "--models-dir", models, "--json", "--no-load"], capsys)
    row = json.loads(out)["files"][0]
    assert row["status"] == "failed" and "Traceback" not in err
    check_case("assets.verify_bad_tokenizer", code, "", line=row["reason"])
