"""read_chunks: resume, regenerate, lock, interruption."""

import json

import pytest
import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline import longform


def _io():
    def save(path, wav):
        from tortoise_xpu.fileio import atomic_path
        with atomic_path(path) as tmp:
            torch.save(wav.clone(), tmp)

    def load(path):
        return torch.load(path, weights_only=True)
    return save, load


def _synth(calls, fail_at=None):
    def synth(text, seed):
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        calls.append(text)
        return torch.full((1, 100), float(len(text)))
    return synth


CHUNKS = ["one.", "two two.", "three three three."]


def test_full_run_then_resume_does_nothing(tmp_path):
    save, load = _io()
    calls = []
    r = longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {"p": 1}, 42)
    assert calls == CHUNKS and r.synthesised == [0, 1, 2]
    assert load(r.combined).shape == (1, 300)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [c["status"] for c in m["chunks"]] == ["done"] * 3 and m["combined"] == "combined.wav"
    calls.clear()
    r = longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {"p": 1}, 42)
    assert calls == [] and r.skipped == [0, 1, 2]


def test_interrupt_then_resume_keeps_finished_chunks(tmp_path):
    save, load = _io()
    calls = []
    with pytest.raises(KeyboardInterrupt):
        longform.read_chunks(CHUNKS, tmp_path, _synth(calls, fail_at=2), save, load, {}, 1)
    first = (tmp_path / "chunk_0001.wav").read_bytes()
    assert not (tmp_path / "chunk_0003.wav").exists() and not (tmp_path / ".tortoise-xpu.lock").exists()
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [c["status"] for c in m["chunks"]] == ["done", "done", "pending"]
    calls.clear()
    r = longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {}, 1)
    assert calls == ["three three three."] and r.skipped == [0, 1]
    assert (tmp_path / "chunk_0001.wav").read_bytes() == first


def test_regenerate_and_changed_settings(tmp_path):
    save, load = _io()
    calls = []
    longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {}, 1)
    calls.clear()
    longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {}, 1, regenerate=[2])
    assert calls == ["two two."]
    calls.clear()
    longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {"temperature": 0.5}, 1)
    assert calls == CHUNKS  # other settings: nothing is reused
    with pytest.raises(UserError, match="has 3 chunks"):
        longform.read_chunks(CHUNKS, tmp_path, _synth(calls), save, load, {}, 1, regenerate=[7])


def test_lock_refuses_second_run(tmp_path):
    import os
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".tortoise-xpu.lock").write_text(str(proc.pid))
        save, load = _io()
        with pytest.raises(UserError, match="in use by another"):
            longform.read_chunks(CHUNKS, tmp_path, _synth([]), save, load, {}, 1)
    finally:
        proc.kill()
        proc.wait()
    # a stale lock (dead pid) is taken over
    save, load = _io()
    longform.read_chunks(CHUNKS, tmp_path, _synth([]), save, load, {}, 1)
    assert not os.path.exists(tmp_path / ".tortoise-xpu.lock")


def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with longform.FolderLock(tmp_path):
        with pytest.raises(UserError, match="in use by another"):
            with longform.FolderLock(tmp_path):
                pass
    assert not (tmp_path / ".tortoise-xpu.lock").exists()
