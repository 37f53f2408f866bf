"""Hostile files are refused before anything is materialised (tortoise_xpu/safeload.py), through every
loader that reads a stranger's file: latents, checkpoints (.pth and .safetensors), mel_norms, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests import malicious_files as bad
from tortoise_xpu import safeload
from tortoise_xpu.errors import ModelFileError, UserError
from tortoise_xpu.models.loading import load_state
from tortoise_xpu.voices import load_latents

REPO = Path(__file__).resolve().parents[1]


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "weights_only" not in msg and "Traceback" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------ memory

def test_hostile_files_are_refused_with_bounded_memory(tmp_path):
    """A 12 kB file viewing 2 kB as 12 GB, a 0.5 MB zip bomb of 512 MB: refused by every loader while
    the process grows by less than 150 MB (a naive load would take gigabytes)."""
    bad.expanded_latents(tmp_path / "expanded.pth")
    bad.expanded_latents(tmp_path / "expanded_small.pth", elements=5 * 10**8)  # under the numel cap: the view check
    bad.zip_bomb(tmp_path / "bomb.pth")
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from tortoise_xpu.errors import UserError
        from tortoise_xpu.models.loading import load_state
        from tortoise_xpu.voices import load_latents
        from tortoise_xpu.data import load_mel_norms
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name in ("expanded.pth", "expanded_small.pth", "bomb.pth"):
            for load in (load_latents, load_state, load_mel_norms):
                try:
                    load(Path({str(tmp_path)!r}) / name)
                except UserError as exc:
                    print("refused", name, load.__name__, exc)
                else:
                    print("ACCEPTED", name, load.__name__)
        print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("refused") for line in lines) == 9, out.stdout
    assert "ACCEPTED" not in out.stdout
    assert "refused as unsafe" in out.stdout and "zip bomb" in out.stdout and "expanded or overlapping" in out.stdout
    grew_mb = int(lines[-1].split()[1]) / 1024
    assert grew_mb < 150, f"loading hostile files grew the process by {grew_mb:.0f} MB"


# ------------------------------------------------------------------------------------ pickles

@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_payload_is_refused_as_unsafe_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = bad.pickle_payload(tmp_path / "autoregressive.pth", marker, legacy=legacy)
    with pytest.raises(ModelFileError) as info:
        load_state(path)
    msg = _one_line(info.value)
    assert "refused as unsafe" in msg and "could run code" in msg and "Unsupported global: GLOBAL" in msg
    with pytest.raises(UserError) as info:
        load_latents(path)
    msg = _one_line(info.value)
    assert ("refused as unsafe" in msg) if not legacy else ("not a valid latents file" in msg)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ latents

@pytest.mark.parametrize("ar,why", [
    (torch.zeros(1, 1024, dtype=torch.int64), "dtype int64"),
    (torch.zeros(1, 1024, dtype=torch.bool), "dtype bool"),
    (torch.zeros(1, 1024, dtype=torch.complex64), "dtype complex64"),
    (torch.full((1, 1024), float("nan")), "NaN or infinite"),
    (torch.tensor([[float("inf")] + [0.0] * 1023]), "NaN or infinite"),
])
def test_wrong_typed_or_non_finite_latents_are_refused(tmp_path, ar, why):
    path = bad.latents_of(tmp_path / "v.pth", ar)
    with pytest.raises(UserError) as info:
        load_latents(path)
    msg = _one_line(info.value)
    assert why in msg and str(path) in msg


def test_good_latents_load_as_float32_copies(tmp_path):
    path = bad.latents_of(tmp_path / "v.pth", torch.randn(1, 1024, dtype=torch.float16), torch.randn(2048))
    ar, diff = load_latents(path)
    assert ar.dtype == diff.dtype == torch.float32 and ar.shape == (1, 1024) and diff.shape == (1, 2048)


# ------------------------------------------------------------------------------------ safetensors

@pytest.mark.parametrize("header,data,why", [
    ({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 16]}}, bytes(16), "elements"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, bytes(16), "offsets"),
    ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}, bytes(16), "offsets"),
    ({"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16), "dtype C64"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}}, bytes(16), "malformed"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
     torch.full((4,), float("nan")).numpy().tobytes(), "NaN"),
])
def test_lying_safetensors_headers_are_refused(tmp_path, header, data, why):
    path = bad.safetensors_with_header(tmp_path / "clvp2.safetensors", header, data)
    with pytest.raises(ModelFileError) as info:
        load_state(path)
    msg = _one_line(info.value)
    assert why in msg and "clvp2.safetensors" in msg


def test_safetensors_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFileError, match="header length"):
        load_state(path)


# ------------------------------------------------------------------------------------ JSON, limits

def test_json_is_bounded_before_reading(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"a": 1}))
    assert safeload.load_json(path) == {"a": 1}
    small = safeload.Limits(max_file_bytes=4, max_total_bytes=4, max_entry_bytes=4)
    with pytest.raises(safeload.UnsafeFileError, match="more than the 4 bytes"):
        safeload.load_json(path, small)
    path.write_text("[" * 100_000 + "]" * 100_000)  # deeper than the parser's recursion
    with pytest.raises(safeload.CorruptFileError, match="not valid JSON"):
        safeload.load_json(path)


def test_unpickler_reason_drops_torch_advice():
    text = ("Weights only load failed. ... Re-running `torch.load` with `weights_only` set to `False` will "
            "likely succeed\n\tWeightsUnpickler error: Unsupported global: GLOBAL os.system was not an allowed "
            "global by default. Please use `torch.serialization.add_safe_globals`")
    assert safeload.unpickler_reason(text) == "Unsupported global: GLOBAL os.system"
    assert safeload.unpickler_reason("Weights only load failed.") == "objects other than tensors"


def test_too_many_archive_entries_and_oversize_files(tmp_path):
    path = tmp_path / "v.pth"
    torch.save([torch.zeros(1) for _ in range(40)], path)
    with pytest.raises(UserError, match="entries|tensors"):
        load_latents(path)
    big = tmp_path / "big.pth"
    torch.save((torch.zeros(1, 1024), torch.zeros(1, 5 << 20)), big)  # 20 MB > the 16 MB latents bound
    with pytest.raises(UserError, match="refused as unsafe"):
        load_latents(big)


def test_oversized_tokenizer_is_refused_before_parsing(tmp_path):
    from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

    path = tmp_path / "tokenizer.json"
    with open(path, "wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MB of nothing, over the 16 MB bound
    with pytest.raises(ModelFileError, match="refused as unsafe"):
        VoiceBpeTokenizer(path)


def test_multi_candidate_names_keep_folder_dots():
    from tortoise_xpu.cli.speak import output_paths

    assert output_paths("my.dir/take.flac", 2) == ["my.dir/take_1.flac", "my.dir/take_2.flac"]
    assert output_paths("out.wav", 1) == ["out.wav"]


def test_a_recompressed_archive_within_the_ratio_loads_correctly(tmp_path):
    """An archive whose entries someone deflated (torch never does) is read unmapped, and gives the
    same tensors (torch cannot map a compressed entry: "Trying to resize storage that is not resizable")."""
    import zipfile

    src = tmp_path / "plain.pth"
    state = {"w": torch.randn(64, 64), "b": torch.arange(5)}
    torch.save(state, src)
    dst = tmp_path / "rlg_auto.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert safeload.check_archive(dst, safeload.CHECKPOINT).compressed
    loaded = load_state(dst)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
