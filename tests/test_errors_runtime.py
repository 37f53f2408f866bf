"""Issue 7, runtime cases: OOM back-off and give-up, device failures, Ctrl-C and concurrent `read` runs,
disk full — each ends in a clean state and one clear line.  Also: docs/errors.md is the table of
tests/error_cases.py, and every case there has a test.

GPU failures are simulated by making the tiny AR model raise what a device would raise.
Two tests run the CLI in a real subprocess (a true SIGINT, and the no-traceback guarantee).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.error_cases import (CASES, DOC, REPO, TINY, check_case, doc_table, fake_synth,  # noqa: F401
                               render_table, run_cli)
from tortoise_xpu.errors import OutOfMemory, TortoiseError
from tortoise_xpu.models.autoregressive import UnifiedVoice

FAKE_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"
FAKE_DEVICE_ERROR = ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                     "asynchronously reported at some other API call, so the stacktrace below might be incorrect.")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Temporary or lock files: a consistent folder has none."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------- OOM

@pytest.fixture(scope="module")
def tts(tiny_models_dir):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    return TextToSpeech(models_dir=tiny_models_dir, device="cpu", batch_size=4)


@pytest.fixture
def cli_tts(tts, monkeypatch):
    """The CLI uses the module's TextToSpeech (tiny models loaded once) instead of building its own."""
    import tortoise_xpu.cli.synth as synth

    monkeypatch.setattr(synth, "build_tts", lambda args, progress=None: tts)
    return tts


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_oom_in_ar_sampling_backs_off_and_keeps_every_candidate(tts, monkeypatch, mode):
    from tortoise_xpu.pipeline.sampling import SamplingSettings

    monkeypatch.setenv("TORTOISE_XPU_DECODE", mode)
    cond = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    text = tts.text_tokens("out of memory test")

    def sample():
        return tts.sample_codes(cond, text, 4, SamplingSettings(), 6, torch.Generator().manual_seed(5))

    reference = sample()
    real_step = UnifiedVoice.decode_step
    seen_batches, raised = [], []

    def flaky_step(self, tokens, position, cache):
        b = tokens.shape[0]
        seen_batches.append(b)
        if b > 1 and len(raised) < 2 and len(seen_batches) >= 2:  # fail mid-decode, twice
            raised.append(b)
            raise torch.OutOfMemoryError(FAKE_OOM)
        return real_step(self, tokens, position, cache)

    monkeypatch.setattr(UnifiedVoice, "decode_step", flaky_step)
    got = sample()
    assert raised == [4, 2]  # the batch was halved twice...
    assert min(seen_batches) == 1
    assert got.shape == reference.shape == (4, 6)  # ...and every candidate came back,
    assert torch.equal(got, reference)  # identical to the run that never ran out of memory
    CASES["runtime.oom_backoff"]  # the case this test covers


def test_oom_at_batch_one_says_what_to_try(tiny_models_dir, tmp_path, capsys, monkeypatch, cli_tts):
    def always_oom(self, cond, text, cache):
        raise torch.OutOfMemoryError(FAKE_OOM)

    monkeypatch.setattr(UnifiedVoice, "prefill", always_oom)
    out = tmp_path / "out.wav"
    code, _, err = run_cli(["speak", "Too big.", "-o", out, "--models-dir", tiny_models_dir, *TINY, "--seed", "1"],
                           capsys)
    msg = check_case("runtime.oom_batch1", code, err, absent=[out])
    assert "batch size 1" in msg


def test_oom_in_another_stage_is_one_clear_line(tts):
    with pytest.raises(OutOfMemory) as info:
        with tts.new_context().timed("diffusion"):
            raise torch.OutOfMemoryError(FAKE_OOM)
    check_case("runtime.oom_other_stage", 1, "", line=str(info.value))
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)  # --debug still shows the original


def test_a_bug_is_not_disguised_as_a_device_error(tts):
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied") as info:
        with tts.new_context().timed("clvp"):
            torch.zeros(2, 3) @ torch.zeros(2, 3)
    assert not isinstance(info.value, TortoiseError)


# ---------------------------------------------------------------------------------------- device errors

def test_device_error_mid_run_is_one_clear_line(tiny_models_dir, tmp_path, capsys, monkeypatch, cli_tts):
    real_step = UnifiedVoice.decode_step
    steps = []

    def failing_step(self, tokens, position, cache):
        steps.append(position)
        if len(steps) == 3:
            raise RuntimeError(FAKE_DEVICE_ERROR)
        return real_step(self, tokens, position, cache)

    monkeypatch.setattr(UnifiedVoice, "decode_step", failing_step)
    out = tmp_path / "out.wav"
    code, _, err = run_cli(["speak", "Device trouble.", "-o", out, "--models-dir", tiny_models_dir, *TINY,
                            "--seed", "1"], capsys)
    msg = check_case("runtime.device_error", code, err, absent=[out])
    assert "illegal memory access" in msg and "asynchronously" not in msg  # the first line only


def test_device_error_recognition():
    from tortoise_xpu.backends.errors import is_device_error, user_facing_error

    assert is_device_error(RuntimeError("UR_RESULT_ERROR_DEVICE_LOST"))
    assert is_device_error(RuntimeError("HIP error: invalid device function"))
    assert is_device_error(RuntimeError("The GPU device instance has been suspended. DXGI_ERROR_DEVICE_REMOVED"))
    assert not is_device_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)"))
    assert not is_device_error(torch.OutOfMemoryError(FAKE_OOM))  # an OOM is its own case
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None:
        try:
            exc = accel("CUDA error: unspecified launch failure")
        except TypeError:
            exc = None
        if exc is not None:
            assert is_device_error(exc)
    assert user_facing_error(ValueError("x")) is None
    assert user_facing_error(TortoiseError("already clear")) is None


# ---------------------------------------------------------------------------------------- read: Ctrl-C, lock

BOOK = " | ".join(f"Chunk {w} of the book." for w in "one two three four five six".split())


def _book(tmp_path: Path, text: str = BOOK) -> Path:
    f = tmp_path / "book.txt"
    f.write_text(text, encoding="utf-8")
    return f


def test_ctrl_c_during_read_then_resume(tiny_models_dir, tmp_path, capsys, monkeypatch, fake_synth):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    book, out = _book(tmp_path), tmp_path / "out"
    argv = ["read", book, "-o", out, "--models-dir", tiny_models_dir, "--device", "cpu", "-q"]  # no --seed
    fake = TextToSpeech.tts

    def interrupted_at_third(self, text, *args, **kwargs):
        if len(fake_synth) == 2:
            raise KeyboardInterrupt
        return fake(self, text, *args, **kwargs)

    monkeypatch.setattr(TextToSpeech, "tts", interrupted_at_third)
    code, _, err = run_cli(argv, capsys)
    check_case("runtime.ctrl_c_read", code, err)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["status"] for c in manifest["chunks"]] == ["done"] * 2 + ["pending"] * 4
    assert sorted(p.name for p in out.iterdir()) == ["chunk_0001.wav", "chunk_0002.wav", "manifest.json"]
    kept = {name: (_sha(out / name), (out / name).stat().st_mtime_ns) for name in ("chunk_0001.wav", "chunk_0002.wav")}
    assert all(_sha(out / c["file"]) == c["sha256"] for c in manifest["chunks"][:2])

    monkeypatch.setattr(TextToSpeech, "tts", fake)
    fake_synth.clear()
    code, _, err = run_cli(argv, capsys)  # the same command resumes
    assert code == 0, err
    assert [c["text"] for c in fake_synth] == [f"Chunk {w} of the book." for w in "three four five six".split()]
    assert {n: (_sha(out / n), (out / n).stat().st_mtime_ns) for n in kept} == kept  # untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["status"] for c in manifest["chunks"]] == ["done"] * 6 and manifest["combined"] == "combined.wav"
    assert sf.info(str(out / "combined.wav")).frames == 6 * 4800 and _leftovers(out) == []


_SLOW_READ = """
import sys, time, torch
from tortoise_xpu.pipeline.tts import TextToSpeech
def tts(self, text, *args, **kwargs):
    time.sleep(0.3)
    return 0.2 * torch.ones(1, 4800)
TextToSpeech.tts = tts
from tortoise_xpu.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_during_read_and_a_second_run_at_once(tiny_models_dir, tmp_path, capsys, fake_synth):
    """A real `read` process: a second run on its folder is refused; SIGINT leaves it consistent."""
    n = 10  # at 0.3 s a chunk, the signal lands well before the end
    words = "one two three four five six seven eight nine ten".split()  # no digits: inflect imports slowly
    book, out = _book(tmp_path, " | ".join(f"Part {w} of ten." for w in words[:n])), tmp_path / "out"
    argv = ["read", str(book), "-o", str(out), "--models-dir", str(tiny_models_dir), "--device", "cpu", "-q",
            "--seed", "9"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_READ, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            from tortoise_xpu.pipeline.longform import load_state

            try:  # the manifest plus the journal of chunks finished since it was written
                done = [c for c in (load_state(out) or {"chunks": []})["chunks"] if c["status"] == "done"]
            except (OSError, ValueError):
                done = []
            if len(done) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        # two runs at once: the second is refused and touches nothing
        code, _, err = run_cli(argv, capsys)
        check_case("runtime.read_lock", code, err)
        assert f"pid {proc.pid}" in err and fake_synth == []
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    check_case("runtime.ctrl_c_read", proc.returncode, stderr)
    assert "Traceback" not in stderr and _leftovers(out) == []  # lock released, no temp file
    manifest = json.loads((out / "manifest.json").read_text())
    done = [c for c in manifest["chunks"] if c["status"] == "done"]
    assert 2 <= len(done) < n
    hashes = {c["file"]: c["sha256"] for c in done}
    assert all(_sha(out / f) == h for f, h in hashes.items())
    assert sorted(p.name for p in out.glob("chunk_*.wav")) == sorted(hashes)  # no partial chunk
    code, _, err = run_cli(argv, capsys)  # resume in this process
    assert code == 0, err
    assert len(fake_synth) == n - len(done)
    assert all(_sha(out / f) == h for f, h in hashes.items())
    assert (out / "combined.wav").exists()


def test_lock_of_a_dead_run_is_taken_over(tiny_models_dir, tmp_path, capsys, fake_synth):
    book, out = _book(tmp_path), tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (out / ".tortoise-xpu.lock").write_text(str(proc.pid))  # its process is gone
    code, _, err = run_cli(["read", book, "-o", out, "--models-dir", tiny_models_dir, *TINY], capsys)
    assert code == 0, err
    assert len(fake_synth) == 6 and _leftovers(out) == []


# ---------------------------------------------------------------------------------------- disk full

def _disk_full_writer(monkeypatch, fail_on: str = ""):
    """soundfile.write that writes half a file and then fails as a full disk does."""
    real_write = sf.write

    def write(file, data, *args, **kwargs):
        if fail_on in str(file):
            with open(file, "wb") as f:
                f.write(b"RIFF\x00\x00")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(file, data, *args, **kwargs)

    monkeypatch.setattr(sf, "write", write)
    return real_write


def test_disk_full_while_writing_speak_output(tiny_models_dir, tmp_path, capsys, monkeypatch, fake_synth):
    _disk_full_writer(monkeypatch)
    out = tmp_path / "out.wav"
    code, _, err = run_cli(["speak", "Hello.", "-o", out, "--models-dir", tiny_models_dir, *TINY], capsys)
    check_case("runtime.disk_full", code, err, absent=[out])
    assert list(tmp_path.iterdir()) == []  # not even a temporary file


def test_disk_full_reported_by_libsndfile(tmp_path, monkeypatch):
    """libsndfile reports a full disk with an empty message: the free space says what happened."""
    import shutil
    from collections import namedtuple

    from tortoise_xpu.audio.io import save_wav

    def write(file, *args, **kwargs):
        Path(file).write_bytes(b"RIFF")
        raise sf.LibsndfileError(2)

    monkeypatch.setattr(sf, "write", write)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    out = tmp_path / "x.wav"
    with pytest.raises(TortoiseError) as info:
        save_wav(out, torch.zeros(1, 24000))
    check_case("runtime.disk_full", 1, "", line=str(info.value))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_read_keeps_the_folder_consistent(tiny_models_dir, tmp_path, capsys, monkeypatch,
                                                           fake_synth):
    book, out = _book(tmp_path), tmp_path / "out"
    argv = ["read", book, "-o", out, "--models-dir", tiny_models_dir, *TINY]
    real_write = _disk_full_writer(monkeypatch, fail_on=".chunk_0003.wav.")
    code, _, err = run_cli(argv, capsys)
    check_case("runtime.disk_full", code, err, absent=[out / "chunk_0003.wav"])
    assert sorted(p.name for p in out.iterdir()) == ["chunk_0001.wav", "chunk_0002.wav", "manifest.json"]
    monkeypatch.setattr(sf, "write", real_write)
    code, _, err = run_cli(argv, capsys)  # space freed: the same command finishes the job
    assert code == 0 and (out / "combined.wav").exists()


def test_disk_full_writing_the_manifest(tiny_models_dir, tmp_path, capsys, monkeypatch, fake_synth):
    from tortoise_xpu import fileio

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", no_space)
    book, out = _book(tmp_path), tmp_path / "out"
    code, _, err = run_cli(["read", book, "-o", out, "--models-dir", tiny_models_dir, *TINY], capsys)
    msg = check_case("runtime.disk_full", code, err, absent=[out / "manifest.json"])
    assert "manifest.json" in msg and _leftovers(out) == []


def test_disk_full_writing_latents(tiny_models_dir, tmp_path, capsys, monkeypatch):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    clip = tmp_path / "v.wav"
    sf.write(clip, 0.3 * torch.sin(torch.arange(22050 * 2) * 0.05).numpy(), 22050)
    monkeypatch.setattr(TextToSpeech, "get_conditioning_latents",
                        lambda self, clips, **kw: (torch.zeros(1, 64), torch.zeros(1, 128)))

    def full_disk_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk_save)
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 4096))
    out = tmp_path / "voice.pth"
    code, _, err = run_cli(["latents", clip, "-o", out, "--models-dir", tiny_models_dir, "--device", "cpu"], capsys)
    check_case("runtime.disk_full", code, err, absent=[out])


# ---------------------------------------------------------------------------------------- no traceback

def test_subprocess_errors_are_one_line_without_traceback(tmp_path):
    """The real entry point: a refused latents pickle and a missing text file, each one line, exit 2."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "voice.pth"
    with open(evil, "wb") as f:
        pickle.dump((torch.zeros(1, 4), Evil()), f, protocol=2)
    out = tmp_path / "out.wav"
    script = ("import sys\nfrom tortoise_xpu.cli import main\n"
              "codes = [main(a) for a in (sys.argv[1:10], sys.argv[10:])]\nprint(codes)\n")
    r = subprocess.run([sys.executable, "-c", script,
                        "speak", "Hi.", "--voice", str(evil), "-o", str(out), "--device", "cpu", "-q",
                        "speak", "-f", str(tmp_path / "missing.txt"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and r.stdout.strip() == "[2, 2]", r.stderr
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 2, r.stderr
    check_case("assets.malicious_pth", 2, r.stderr, line=lines[0], absent=[out])
    check_case("text.file_missing", 2, r.stderr, line=lines[1])
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- the doc

def test_docs_errors_md_is_the_case_table():
    assert DOC.exists(), "docs/errors.md is missing: python -m tests.error_cases"
    assert doc_table() == render_table(), "docs/errors.md is out of date: run python -m tests.error_cases"


def test_every_case_has_a_test():
    sources = "".join(f.read_text(encoding="utf-8") for f in sorted((REPO / "tests").glob("test_errors_*.py")))
    untested = [cid for cid in CASES if f'"{cid}"' not in sources]
    assert untested == [], f"cases without a test: {untested}"


def test_every_issue_case_is_in_the_table():
    """The cases issue 7 lists, each mapped to its row."""
    issue = {
        "empty": "text.empty", "whitespace only": "text.whitespace", "only brackets": "text.brackets_only",
        "unbalanced brackets": "text.unbalanced_brackets", "nested brackets": "text.nested_brackets",
        "1 MB of text to speak": "text.speak_too_long", "emoji": "text.emoji_only", "CJK": "text.cjk",
        "RTL": "text.rtl", "control characters": "text.control_chars", "UTF-16 file": "text.utf16_file",
        "Latin-1 file": "text.latin1_file",
        "missing file": "audio.missing", "directory instead of file": "audio.directory",
        "zero-length file": "audio.zero_length", "corrupt header": "audio.corrupt_header",
        "non-audio renamed .wav": "audio.not_audio", "silent clip": "audio.silent",
        "clipped clip": "audio.clipped", "NaN/inf samples": "audio.nan_inf", "8/48/96 kHz": "audio.rates",
        "stereo and 6-channel": "audio.channels", "10-minute clip": "audio.long_clip",
        "voice folder with no usable clips": "audio.no_usable_clips", "mixed formats": "audio.mixed_formats",
        "unknown voice": "assets.unknown_voice", "unknown preset": "assets.unknown_preset",
        "unknown sampler": "assets.unknown_sampler", "unknown device": "assets.unknown_device",
        "unavailable backend": "assets.unavailable_backend", "missing model file": "assets.missing_model",
        "truncated checkpoint": "assets.truncated_checkpoint", "wrong model": "assets.wrong_model",
        "wrong shape": "assets.wrong_shape", "checksum mismatch": "assets.checksum_mismatch",
        "malicious .pth": "assets.malicious_pth", "latents of the wrong shapes": "assets.latents_shape",
        "OOM during AR sampling": "runtime.oom_backoff", "OOM at batch 1": "runtime.oom_batch1",
        "device error mid-run": "runtime.device_error", "Ctrl-C during read": "runtime.ctrl_c_read",
        "two read runs at once": "runtime.read_lock", "disk full on write": "runtime.disk_full",
    }
    missing = {k: v for k, v in issue.items() if v not in CASES}
    assert missing == {}
    assert f"`{issue['disk full on write']}`" in DOC.read_text(encoding="utf-8")
