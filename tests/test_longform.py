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


def _seeded(calls):
    """A synth whose audio depends on the seed, recording (text, seed)."""
    def synth(text, seed):
        calls.append((text, seed))
        return torch.full((1, 10), float(seed % 1000))
    return synth


def test_chunk_seed_is_the_decided_formula():
    import hashlib
    for job, i, take in [(0, 0, 0), (5, 3, 0), (2 ** 63 - 1, 12345, 7)]:
        d = hashlib.sha256(f"tortoise-xpu/chunk/{job}/{i}/{take}".encode()).digest()
        assert longform.chunk_seed(job, i, take) == int.from_bytes(d[:8], "little") & (2 ** 63 - 1)
    assert longform.chunk_seed(5, 3) == longform.chunk_seed(5, 3, 0) != longform.chunk_seed(5, 3, 1)
    assert longform.chunk_seed(5, 0) != longform.chunk_seed(5, 1)


def test_regenerate_makes_a_new_take_with_its_own_seed(tmp_path):
    save, load = _io()
    calls = []
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1)
    assert [s for _, s in calls] == [longform.chunk_seed(1, i) for i in range(3)]
    old = (tmp_path / "chunk_0002.wav").read_bytes()
    calls.clear()
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1, regenerate=[2])
    assert calls == [("two two.", longform.chunk_seed(1, 1, 1))]
    assert (tmp_path / "chunk_0002.wav").read_bytes() != old  # a new take, not the same bytes again
    made = json.loads((tmp_path / "manifest.json").read_text())["chunks"][1]["made"]
    assert made["take"] == 1 and made["seed"] == longform.chunk_seed(1, 1, 1)
    calls.clear()
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1, regenerate=[2])
    assert calls == [("two two.", longform.chunk_seed(1, 1, 2))]
    calls.clear()
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1)  # the same command: nothing
    assert calls == []
    with pytest.raises(UserError, match="has 3 chunks"):
        longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1, regenerate=[7])


def test_regenerate_keeps_the_old_take_when_interrupted(tmp_path):
    save, load = _io()
    longform.read_chunks(CHUNKS, tmp_path, _seeded([]), save, load, {}, 1)
    old = (tmp_path / "chunk_0002.wav").read_bytes()

    def broken(text, seed):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        longform.read_chunks(CHUNKS, tmp_path, broken, save, load, {}, 1, regenerate=[2])
    assert (tmp_path / "chunk_0002.wav").read_bytes() == old
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [c["status"] for c in m["chunks"]] == ["done"] * 3 and m["chunks"][1]["made"]["take"] == 0


def test_changed_settings_keep_finished_chunks_and_say_so(tmp_path):
    """The issue's sequence: a full run; an interrupted rerun with another flag; the first command again."""
    save, load = _io()
    calls, notes = [], []
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {"temperature": 0.8}, 5)
    files = {p.name: p.read_bytes() for p in tmp_path.glob("chunk_*.wav")}
    calls.clear()

    def interrupted(text, seed):
        raise KeyboardInterrupt
    r = longform.read_chunks(CHUNKS, tmp_path, interrupted, save, load, {"temperature": 0.7}, 5, warn=notes.append)
    assert r.kept_stale == [0, 1, 2] and r.synthesised == []  # nothing pending: nothing was even started
    assert len(notes) == 1 and "3 finished chunk(s) were made with other settings" in notes[0]
    assert "temperature 0.8→0.7" in notes[0] and "--restart" in notes[0]
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [c["status"] for c in m["chunks"]] == ["done"] * 3
    r = longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {"temperature": 0.8}, 5)
    assert calls == [] and r.skipped == [0, 1, 2]  # "0 synthesised, 3 already done"
    assert {p.name: p.read_bytes() for p in tmp_path.glob("chunk_*.wav")} == files


def test_new_settings_apply_to_pending_chunks_only_unless_restart(tmp_path):
    save, load = _io()
    calls, notes = [], []
    with pytest.raises(KeyboardInterrupt):
        longform.read_chunks(CHUNKS, tmp_path, _synth(calls, fail_at=1), save, load, {"t": 1}, 5)
    calls.clear()
    r = longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {"t": 2}, 6, warn=notes.append)
    assert r.kept_stale == [0] and r.synthesised == [1, 2]
    assert [s for _, s in calls] == [longform.chunk_seed(6, 1), longform.chunk_seed(6, 2)]
    assert "seed 5→6" in notes[0] and "t 1→2" in notes[0]
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [c["made"]["job_seed"] for c in m["chunks"]] == [5, 6, 6]  # each chunk says what made it
    calls.clear()
    r = longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {"t": 2}, 6, restart=True,
                             warn=notes.append)
    assert calls == [("one.", longform.chunk_seed(6, 0))] and r.synthesised == [0] and r.skipped == [1, 2]
    fresh = tmp_path / "fresh"
    longform.read_chunks(CHUNKS, fresh, _seeded([]), save, load, {"t": 2}, 6)
    assert all(torch.equal(load(tmp_path / n), load(fresh / n)) for n in ("chunk_0001.wav", "combined.wav"))


def test_changed_text_is_made_again_and_changed_file_is_noticed(tmp_path):
    save, load = _io()
    calls, notes = [], []
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1)
    calls.clear()
    longform.read_chunks(["one.", "two changed.", CHUNKS[2]], tmp_path, _seeded(calls), save, load, {}, 1)
    assert [t for t, _ in calls] == ["two changed."]
    (tmp_path / "chunk_0003.wav").write_bytes(b"tampered")
    calls.clear()
    longform.read_chunks(["one.", "two changed.", CHUNKS[2]], tmp_path, _seeded(calls), save, load, {}, 1,
                         warn=notes.append)
    assert [t for t, _ in calls] == [CHUNKS[2]] and "missing or changed file" in notes[0]


def test_journal_records_each_chunk_in_constant_bytes(tmp_path):
    """The per-chunk record does not grow with the book: the manifest is not rewritten per chunk,
    and the journal grows by about the same bytes per chunk for 20 chunks as for 600."""
    save, load = _io()
    per_chunk = {}
    for n in (20, 600):
        folder = tmp_path / str(n)
        texts = [f"Sentence number {i} of a long book, with some words in it." for i in range(n)]
        seen = []

        def synth(text, seed, folder=folder, seen=seen):
            m = folder / "manifest.json"
            seen.append((m.stat().st_mtime_ns, m.stat().st_size, (folder / "journal.jsonl").stat().st_size
                         if (folder / "journal.jsonl").exists() else 0))
            return torch.zeros(1, 10)
        r = longform.read_chunks(texts, folder, synth, save, load, {}, 1)
        assert len({s[:2] for s in seen}) == 1  # the manifest stayed as written at the start
        growth = [b - a for (_, _, a), (_, _, b) in zip(seen, seen[1:])]
        assert max(growth) - min(growth) <= 8  # only the digits of the numbers vary
        per_chunk[n] = r.run.journal_bytes / n
        assert not (folder / "journal.jsonl").exists()  # compacted at the end
    assert abs(per_chunk[600] - per_chunk[20]) <= 8 and per_chunk[600] < 600


def test_journal_is_replayed_after_a_hard_kill(tmp_path):
    """A driver killed without cleanup leaves a journal: its chunks count as done on the next run."""
    save, load = _io()
    longform.read_chunks(CHUNKS, tmp_path, _seeded([]), save, load, {}, 1)
    m = json.loads((tmp_path / "manifest.json").read_text())
    lines = [json.dumps({"key": str(c["index"]), "sha256": c["sha256"], "seconds": c["seconds"],
                         "made": c["made"]}) for c in m["chunks"]]
    for c in m["chunks"]:
        c.update(status="pending", sha256=None, made=None)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "journal.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])  # last line cut
    state = longform.load_state(tmp_path)
    assert [c["status"] for c in state["chunks"]] == ["done", "done", "pending"]
    calls = []
    longform.read_chunks(CHUNKS, tmp_path, _seeded(calls), save, load, {}, 1)
    assert [t for t, _ in calls] == [CHUNKS[2]] and not (tmp_path / "journal.jsonl").exists()


def test_version_1_manifest_is_migrated_and_its_chunks_kept(tmp_path):
    save, load = _io()
    save(tmp_path / "chunk_0001.wav", torch.ones(1, 10))
    sha = longform.file_sha256(tmp_path / "chunk_0001.wav")
    v1 = {"version": 1, "seed": 3, "settings": {"p": 1}, "settings_key": "x", "combined": None,
          "chunks": [{"index": 0, "text": "one.", "file": "chunk_0001.wav", "status": "done", "sha256": sha,
                      "seconds": 0.1}, {"index": 1, "text": "two two.", "file": "chunk_0002.wav",
                                        "status": "pending", "sha256": None, "seconds": None}]}
    (tmp_path / "manifest.json").write_text(json.dumps(v1))
    calls, notes = [], []
    r = longform.read_chunks(CHUNKS[:2], tmp_path, _seeded(calls), save, load, {"p": 1}, 3, warn=notes.append)
    assert r.kept_stale == [0] and [t for t, _ in calls] == ["two two."]
    assert "older tortoise-xpu" in notes[0]
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 99, "chunks": []}))
    with pytest.raises(UserError, match="manifest version 99"):
        longform.read_chunks(CHUNKS[:2], tmp_path, _seeded(calls), save, load, {"p": 1}, 3)


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


def test_chunks_record_the_workers_model_files(tmp_path):
    """A first run that downloads the models on first use: the chunks record the files that made them
    (the worker's fingerprint), so the next run, which finds the files, keeps them as current."""
    save, load = _io()

    class Worker(longform.CallableExecutor):
        def run(self, tasks):
            for r in super().run(tasks):
                r.models = "fp-after-download"
                yield r

    units, table = longform.read_units(CHUNKS, 1, {"p": 1})
    calls, notes = [], []
    kw = dict(settings_table=table, voices={"voice": (None, 1)}, executor=lambda: Worker(_seeded(calls)),
              save_wav=save, load_wav=load, outputs={"combined.wav": [u.key for u in units]}, job_seed=1,
              warn=notes.append)
    longform.run_units(tmp_path, units, models="fp-before-download", **kw)
    assert len(calls) == 3
    r = longform.run_units(tmp_path, units, models="fp-after-download", **kw)
    assert len(calls) == 3 and r.skipped == ["0", "1", "2"] and notes == []
