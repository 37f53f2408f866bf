import numpy as np
import pytest
import soundfile as sf
import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.voices import list_voices, load_latents, resolve_voice, save_latents


def _clip(path, seconds=1.0, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


@pytest.fixture
def voices(tmp_path):
    root = tmp_path / "voices"
    (root / "alice").mkdir(parents=True)
    _clip(root / "alice" / "1.wav")
    _clip(root / "alice" / "2.flac")
    (root / "bob").mkdir()
    _clip(root / "bob" / "1.wav")
    (root / "carol").mkdir()
    save_latents(root / "carol" / "carol.pth", torch.randn(1, 1024), torch.randn(1, 2048))
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("hi")
    return root


def test_list_and_resolve(voices):
    assert set(list_voices([voices])) == {"alice", "bob", "carol"}
    alice = resolve_voice("alice", [voices])
    assert [p.name for p in alice.clips] == ["1.wav", "2.flac"] and not alice.latents
    carol = resolve_voice("carol", [voices])
    assert len(carol.latents) == 1 and carol.latents[0][0].shape == (1, 1024)
    assert resolve_voice("random", [voices]).random


def test_combination_pools_clips_and_latents(voices):
    v = resolve_voice("alice&bob&carol", [voices])
    assert len(v.clips) == 3 and len(v.latents) == 1
    with pytest.raises(UserError, match="random"):
        resolve_voice("alice&random", [voices])
    with pytest.raises(UserError, match="combination"):
        resolve_voice("alice&", [voices])


def test_unknown_voice_lists_near_names(voices):
    with pytest.raises(UserError, match="did you mean: alice"):
        resolve_voice("alicee", [voices])


def test_paths_work_as_names(voices):
    assert resolve_voice(str(voices / "bob"), [voices]).clips
    assert resolve_voice(str(voices / "bob" / "1.wav"), [voices]).clips
    assert resolve_voice(str(voices / "carol" / "carol.pth"), [voices]).latents


def test_folder_without_clips(voices):
    with pytest.raises(UserError, match="no audio clips"):
        resolve_voice(str(voices / "empty"), [voices])


def test_latents_wrong_shape_and_malicious(tmp_path):
    torch.save((torch.randn(1, 10), torch.randn(1, 2048)), tmp_path / "bad.pth")
    with pytest.raises(UserError, match="shapes"):
        load_latents(tmp_path / "bad.pth", dims=(1024, 2048))
    assert load_latents(tmp_path / "bad.pth")[0].shape == (1, 10)  # widths are checked against the models later
    torch.save((torch.randn(2, 3, 10), torch.randn(1, 2048)), tmp_path / "bad3d.pth")
    with pytest.raises(UserError, match="shapes"):
        load_latents(tmp_path / "bad3d.pth")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(UserError, match="not a valid latents file"):
        load_latents(tmp_path / "evil.pth")
    assert not marker.exists()
