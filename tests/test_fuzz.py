"""Fuzzing the paths that read untrusted input: they may refuse it (UserError and its subclasses),
never crash with anything else.

Text: cleaners, the sentence splitter, the tokenizer, the redaction-bracket parser and the text-file
decoder, on arbitrary unicode (lone surrogates included, as a non-UTF-8 command line gives them).
Files: the audio loader, the latents loader and the checkpoint reader, on random and mutated bytes;
hostile structures (any dtype, stride-0 views of 10**15 elements, NaN) in a valid torch file; mutated
safetensors and manifests.
The CLI: speak's whole argument space (flags, values, texts, voices, outputs) in-process with synthesis
faked, detect/text over good and garbage files, and a few cases as real processes.  Every run exits
0, 1 or 2 without a traceback, never through the bug path ("run with --debug"), leaves no partial
output, and grows the process by less than 300 MB.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.error_cases import fake_synth  # noqa: F401  (a fixture: synthesis stops where models would run)
from tortoise_xpu.errors import AudioError, ModelFileError, UserError

# TORTOISE_XPU_FUZZ_SCALE=20 multiplies the example counts for a longer hunt than CI's.
_SCALE = float(os.environ.get("TORTOISE_XPU_FUZZ_SCALE", "1"))
FAST = settings(max_examples=int(150 * _SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=int(60 * _SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Arbitrary unicode, surrogates and control characters included...
ANY_CHAR = st.characters(exclude_categories=())
# ...and text dense in what the parsers care about.
SPECIAL = st.sampled_from(list('[]|"“”.!?,;:$£€%&-\'0123456789 \n\t\r\x00\x07\u200b\u202e\ufeff')
                          + ["😀", "你", "ש", "ß", "İ", "\ud800", "1,000", "$3.50", "£7", "mr.", "21st", "...", "?!"])
TEXT = st.one_of(st.text(ANY_CHAR, max_size=400),
                 st.lists(st.one_of(SPECIAL, st.text(ANY_CHAR, max_size=5)), max_size=80).map("".join))

_tmp = tempfile.TemporaryDirectory(prefix="tortoise-fuzz-")
TMP = Path(_tmp.name)


@pytest.fixture(scope="module")
def tokenizer(tiny_models_dir):
    from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

    return VoiceBpeTokenizer(Path(tiny_models_dir) / "tokenizer.json")


# unidecode warns about surrogates, the audio loader about odd clips: expected here, not failures
pytestmark = pytest.mark.filterwarnings("ignore")


# ---------------------------------------------------------------------------------------- text

@FAST
@given(TEXT)
@example("$,5 and 1" + "0" * 40 + " and £.")  # inputs that crashed the original
def test_cleaners_never_crash(text):
    from tortoise_xpu.text.cleaners import basic_cleaners, english_cleaners, transliteration_cleaners

    for clean in (english_cleaners, basic_cleaners, transliteration_cleaners):
        out = clean(text)
        assert isinstance(out, str)
    cleaned = english_cleaners(text)
    assert cleaned == cleaned.lower() and "\n" not in cleaned


@FAST
@given(TEXT, st.integers(1, 400), st.integers(0, 400))
def test_splitter_never_crashes_and_keeps_its_limit(text, desired, extra):
    from tortoise_xpu.text.split import split_and_recombine_text, split_for_reading

    maximum = desired + extra
    for split in (split_and_recombine_text, split_for_reading):
        chunks = split(text, desired, maximum)
        assert all(isinstance(c, str) and c.strip() for c in chunks)
    assert all(len(c) <= maximum for c in split_and_recombine_text(text, desired, maximum))


@FAST
@given(TEXT)
def test_tokenizer_never_crashes(tokenizer, text):
    from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    basic = VoiceBpeTokenizer(tokenizer.path, cleaner="basic")
    assert all(0 <= i < basic.vocab_size for i in basic.encode(text))
    assert isinstance(tokenizer.encode(text, clean=False), list)


@FAST
@given(TEXT)
def test_bracket_parser_refuses_or_parses(text):
    from tortoise_xpu.text.split import parse_redaction

    try:
        r = parse_redaction(text)
    except UserError as exc:
        assert "\n" not in str(exc) and ("[" in text or "]" in text)
        return
    assert r.bare == text.replace("[", "").replace("]", "")
    assert all(0 <= a < b <= len(r.bare) for a, b in r.keep)
    assert "".join(r.bare[a:b] for a, b in r.keep) == r.spoken


@FAST
@given(st.binary(max_size=600))
@example("Café".encode("utf-16-le"))
@example(b"\xff\xfe" + "x".encode("utf-16-le"))
def test_text_file_decoding_never_crashes(raw):
    from tortoise_xpu.cli.common import decode_text, sanitize_text

    text = decode_text(raw)
    assert isinstance(text, str)
    try:
        clean = sanitize_text(text, "f.txt")
    except UserError:
        return
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in clean)


@FAST
@given(TEXT)
def test_text_checks_of_the_pipeline_refuse_cleanly(tiny_models_dir, text):
    """What ``tts()`` checks before any model runs: brackets, emptiness, token count."""
    tts = _tts(tiny_models_dir)
    try:
        tokens = tts.text_tokens(text)
    except UserError:
        return
    assert tokens.dim() == 2 and tokens.shape[0] == 1 and tokens.dtype == torch.long


_TTS = {}


def _tts(models_dir):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    if "t" not in _TTS:
        _TTS["t"] = TextToSpeech(models_dir=models_dir, device="cpu")
    return _TTS["t"]


# ---------------------------------------------------------------------------------------- files

def _write(name: str, data: bytes) -> Path:
    p = TMP / name
    p.write_bytes(data)
    return p


def _wav_bytes(seconds: float = 0.5, sr: int = 22050, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(sr * seconds)) / sr
    sf.write(buf, (0.4 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr, subtype=subtype, format=fmt)
    return buf.getvalue()


VALID = {"pcm16": _wav_bytes(), "float": _wav_bytes(subtype="FLOAT"), "flac": _wav_bytes(fmt="FLAC", subtype="PCM_16")}


def _load(path: Path) -> None:
    from tortoise_xpu.audio.io import load_audio

    for check in (True, False):
        try:
            clip = load_audio(path, 22050, check=check, max_seconds=30)
        except AudioError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            continue
        assert clip.dim() == 2 and clip.shape[0] == 1 and bool(torch.isfinite(clip).all())
        assert float(clip.abs().max()) <= 1.0


@FILES
@given(st.binary(max_size=2048))
@example(b"")
@example(b"RIFF")
@example(b"RIFF\x24\x00\x00\x00WAVEfmt ")
def test_audio_loader_random_bytes(raw):
    _load(_write("random.wav", raw))


@FILES
@given(st.sampled_from(sorted(VALID)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                 min_size=1, max_size=12), st.integers(8, 10**6))
def test_audio_loader_mutated_files(kind, flips, cut):
    data = bytearray(VALID[kind])
    for pos, value in flips:
        data[pos % len(data)] = value
    _load(_write(f"mutated.{'flac' if kind == 'flac' else 'wav'}", bytes(data[: max(8, cut % (len(data) + 1))])))


def _latents_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save((torch.zeros(1, 64), torch.zeros(1, 128)), buf)
    return buf.getvalue()


LATENTS = _latents_bytes()


@FILES
@given(st.one_of(st.binary(max_size=1024),
                 st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), min_size=1, max_size=8).map(
                     lambda flips: _mutate(LATENTS, flips))))
def test_latents_and_checkpoint_readers_random_bytes(raw):
    from tortoise_xpu.models.loading import load_state
    from tortoise_xpu.voices import load_latents

    p = _write("voice.pth", raw)
    try:
        ar, diff = load_latents(p)
        assert ar.shape[0] == 1 and diff.shape[0] == 1
    except UserError as exc:
        assert "\n" not in str(exc)
    try:
        load_state(p)
    except ModelFileError as exc:
        assert "\n" not in str(exc)


def _mutate(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        out[pos % len(out)] = value
    return bytes(out)


# ---------------------------------------------------------------------------------------- hostile structures

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.bool,
           torch.uint8, torch.complex64]


@st.composite
def _tensors(draw):
    """Small tensors of any dtype, some of them views far larger than their storage (stride 0)."""
    dtype = draw(st.sampled_from(_DTYPES))
    n = draw(st.integers(0, 64))
    base = torch.zeros(n, dtype=dtype) if n else torch.zeros(0, dtype=dtype)
    if dtype.is_floating_point and n:
        fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -1e30]))
        # Cast as a tensor: -1e30 becomes -inf in float16 (torch < 2.5 refuses the Python scalar outright).
        base[draw(st.integers(0, n - 1))] = torch.tensor(fill, dtype=torch.float64).to(dtype)
    if n and draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(1, 10**5), min_size=1, max_size=3)))
        return base.as_strided(shape, (0,) * len(shape))  # expanded: numel may be 10**15
    return base.reshape(1, -1) if draw(st.booleans()) else base


_STRUCTS = st.recursive(st.one_of(_tensors(), st.integers(), st.text(max_size=5), st.none()),
                        lambda kids: st.one_of(st.lists(kids, max_size=3).map(tuple), st.lists(kids, max_size=3),
                                               st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                        max_leaves=8)


@FILES
@given(_STRUCTS)
@example((torch.zeros(1).as_strided((1, 3 * 10**9), (0, 0)), torch.zeros(1, 2048)))
@example((torch.zeros(1, 1024, dtype=torch.int64), torch.zeros(1, 2048)))
@example((torch.full((1, 1024), float("nan")), torch.zeros(1, 2048)))
def test_hostile_structures_are_refused_or_usable(obj):
    """Whatever tensors a stranger's file holds: usable float latents come out, or a one-line refusal;
    nothing is materialised on the way (an expanded view would be gigabytes)."""
    from tortoise_xpu.data import load_mel_norms
    from tortoise_xpu.models.loading import load_state
    from tortoise_xpu.voices import load_latents

    p = TMP / "hostile.pth"
    torch.save(obj, p)
    try:
        ar, diff = load_latents(p)
    except UserError as exc:
        assert "\n" not in str(exc) and "weights_only" not in str(exc)
    else:
        assert ar.dtype == diff.dtype == torch.float32 and bool(torch.isfinite(ar).all() and torch.isfinite(diff).all())
        assert ar.untyped_storage().nbytes() == ar.numel() * 4  # a real copy, not a view of something larger
    for load in (load_state, load_mel_norms):
        try:
            out = load(p)
        except UserError as exc:
            assert "\n" not in str(exc)
            continue
        from tortoise_xpu.safeload import iter_tensors

        for _, t in iter_tensors(out):
            assert t.numel() * t.element_size() <= max(t.untyped_storage().nbytes(), 0) or t.numel() == 0


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"a": torch.zeros(4, 4), "b": torch.arange(6, dtype=torch.int64)})


SAFETENSORS = _safetensors_bytes()


@FILES
@given(st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10**4))
@example([(0, 0xFF), (7, 0x7F)], 10**4)  # a header length of 2**63
def test_mutated_safetensors_are_refused_cleanly(flips, cut):
    from tortoise_xpu.models.loading import load_state

    data = _mutate(SAFETENSORS, flips)
    p = _write("clvp2.safetensors", data[: max(1, cut % (len(data) + 1))] if cut % 3 == 0 else data)
    try:
        state = load_state(p)
    except ModelFileError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(t, torch.Tensor) and (not t.is_floating_point() or bool(torch.isfinite(t).all()))
               for t in state.values())


@FILES
@given(st.one_of(st.binary(max_size=512), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=20).map(lambda o: __import__("json").dumps(o).encode())))
@example(b"[" * 50_000 + b"]" * 50_000)
@example(b"\xff\xfe{}")
def test_manifest_reader_refuses_or_returns_a_dict(raw):
    from tortoise_xpu.pipeline.longform import MANIFEST, load_state

    folder = TMP / "book"
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).write_bytes(raw)
    try:
        data = load_state(folder)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(data, dict)


# ---------------------------------------------------------------------------------------- the CLI's argument space

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**20, 10**20).map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "", "x", "0", "-0.0", "1_000", "0x10", " 3 "]))
FLAGS = {
    "--seed": st.one_of(st.integers(-2**70, 2**70).map(str), NUMBERS),
    "--preset": st.sampled_from(["ultra_fast", "fast", "standard", "single_sample", "very_fast", "nope", ""]),
    "--sampler": st.sampled_from(["p", "ddim", "dpm++2m", "euler"]),
    "--device": st.sampled_from(["cpu", "auto", "tpu", "cuda:99", "xpu", "dml:x", ""]),
    "--dtype": st.sampled_from(["float32", "float16", "bfloat16", "int8"]),
    "-k": NUMBERS, "--batch-size": NUMBERS,
    **{f"--{name.replace('_', '-')}": NUMBERS for name in (
        "num_autoregressive_samples", "temperature", "top_p", "top_k", "length_penalty", "repetition_penalty",
        "max_mel_tokens", "cvvp_amount", "diffusion_iterations", "cond_free_k", "diffusion_temperature",
        "force_tokens")},
}
SWITCHES = ["--cond-free", "--no-cond-free", "--float32", "--disable-redaction", "--low-vram", "--high-vram", "--json"]


@st.composite
def _speak_argv(draw):
    flags = draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=6, unique=True))
    argv = []
    for flag in flags:
        argv.append(f"{flag}={draw(FLAGS[flag])}")  # '=' so that '-inf' is a value, not an option
    argv += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
    text = draw(st.one_of(st.sampled_from(["Hello there.", "", "😀 " * 200 + "Fine.", "[sad] Hi.", "a [b"]),
                          st.text(ANY_CHAR, max_size=60)))
    out = draw(st.sampled_from(["out.wav", "out.mp3", "out.flac", "out.ogg", "o.xyz", "noext", "/dev/null", "DIR",
                                "a" * 300 + ".wav", "a" * 236 + ".wav", "sub/dir/x.wav", "b\udcff.wav"]))
    voice = draw(st.sampled_from(["random", "nope", "EXPANDED", "INTS", "CLIP", "/dev/null"]))
    return text, argv, out, voice


@settings(max_examples=int(120 * _SCALE), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(_speak_argv())
def test_speak_argument_space(tiny_models_dir, fake_synth, capsys, argv_case):
    """Any flags, values, texts, voices and outputs: exit 0, 1 or 2 with no traceback, never the bug path
    (exit 1 "run with --debug" is for our bugs), and no output file unless the run succeeded."""
    import resource
    import shutil

    from tests.error_cases import run_cli

    text, argv, out_name, voice = argv_case
    work = TMP / "cli"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    voices = {"EXPANDED": str(_hostile_latents()), "INTS": str(_int_latents()), "CLIP": str(_clip())}
    out = work if out_name == "DIR" else (Path(out_name) if out_name.startswith("/") else work / out_name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, stdout, err = run_cli(["speak", text, "-o", out, "--voice", voices.get(voice, voice), "-q",
                                 "--models-dir", tiny_models_dir, *argv], capsys)
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "run with --debug" not in err, (argv, err)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown < 300, f"{argv}: grew by {grown:.0f} MB"
    if out == work or out_name == "/dev/null":
        return
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")] if os.path.isdir(out.parent) else []
    assert leftovers == [], leftovers
    if code == 0:
        assert os.path.isfile(out) and os.path.getsize(out) > 0
    else:
        assert not os.path.lexists(out), (argv, err)  # (pathlib's exists() raises on an over-long name)


def _hostile_latents() -> Path:
    p = TMP / "expanded.pth"
    if not p.exists():
        torch.save((torch.zeros(1).as_strided((1, 3 * 10**9), (0, 0)), torch.zeros(1, 2048)), p)
    return p


def _int_latents() -> Path:
    p = TMP / "ints.pth"
    if not p.exists():
        torch.save((torch.zeros(1, 64, dtype=torch.int64), torch.zeros(1, 128)), p)
    return p


def _clip() -> Path:
    p = TMP / "clip.wav"
    if not p.exists():
        p.write_bytes(_wav_bytes(1.0))
    return p


@settings(max_examples=int(40 * _SCALE), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=256).map(lambda b: ("raw", b)),
                          st.sampled_from(sorted(VALID)).map(lambda k: ("valid", k))), min_size=1, max_size=3),
       st.lists(st.sampled_from(["--json", "--device=cpu", "--device=tpu"]), max_size=2, unique=True))
def test_detect_and_text_argument_space(tiny_models_dir, capsys, clips, flags):
    """`detect` over good and garbage clips, `text` over odd flags: every file gets its result or its
    error line; exit 0 only when all were read; never the bug path."""
    from tests.error_cases import run_cli

    paths = []
    for i, (kind, payload) in enumerate(clips):
        paths.append(_write(f"c{i}.wav", payload if kind == "raw" else VALID[payload]))
    code, out, err = run_cli(["detect", *paths, "--models-dir", tiny_models_dir, *flags], capsys)
    assert code in (0, 2) and "Traceback" not in err and "run with --debug" not in err, err
    if "--device=tpu" not in flags:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        if "--json" in flags:
            assert len(__import__("json").loads(out)) == len(paths)  # one row per clip, result or error
        else:
            assert len(out.splitlines()) + len(errors) == len(paths)
        assert (code == 0) == (not errors)
    code, out, err = run_cli(["text", "Dr. Smith paid $7.50.", "--tokens", "--split", "--models-dir",
                              tiny_models_dir, *[f for f in flags if f == "--json"]], capsys)
    assert code == 0 and "Traceback" not in err


@pytest.mark.parametrize("argv", [  # few: each real process pays torch's import (the rest run in-process above)
    ["speak", "Hello.", "--temperature=nan"], ["speak", "Hello.", "-o", "x" * 300 + ".wav"],
    ["speak", "Hello.", "--seed", str(2**64)],
])
def test_cli_in_a_real_process_refuses_without_traceback(argv, tmp_path):
    """A few of the same cases as real processes: exit 2 and one line on stderr, before any model loads
    (the models folder does not even exist)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "tortoise_xpu", *argv, "--models-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


@st.composite
def _read_argv(draw):
    argv = [f"{flag}={draw(FLAGS[flag])}" for flag in draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=3,
                                                                      unique=True))]
    if draw(st.booleans()):
        argv.append("--text-split=" + draw(st.sampled_from(["200,300", "1,1", "0,5", "5,1", "x", "10", "-3,4",
                                                             "50,60", "", ",", "1e9,1e9"])))
    if draw(st.booleans()):
        argv.append("--regenerate=" + draw(st.sampled_from(["1", "0", "-1", "2,x", "99", "1,1", "", "1-3"])))
    text = draw(st.one_of(TEXT, st.sampled_from(["One. | Two.", "😀 | * * | Fine words.", ""])))
    out = draw(st.sampled_from(["book", "/dev/null", "a" * 300, "b\udcff", "sub/book", "FILE"]))
    return text, argv, out


@settings(max_examples=int(40 * _SCALE), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(_read_argv())
def test_read_and_text_argument_space(tiny_models_dir, fake_synth, capsys, argv_case):
    """`read` (synthesis faked) and `text` over odd flags, texts and output folders: exit 0, 1 or 2,
    never the bug path, and no partial chunk file left behind."""
    import shutil

    from tests.error_cases import run_cli

    text, argv, out_name = argv_case
    work = TMP / "read"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    book = work / "book.txt"
    book.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = book if out_name == "FILE" else (Path(out_name) if out_name.startswith("/") else work / out_name)
    code, _, err = run_cli(["read", book, "-o", out, "-q", "--models-dir", tiny_models_dir, *argv], capsys)
    assert code in (0, 1, 2) and "Traceback" not in err and "run with --debug" not in err, (argv, err)
    if os.path.isdir(out):
        assert not [p.name for p in out.iterdir() if ".part" in p.name]
    length_flags = [f"--desired-length={a.split('=', 1)[1].split(',')[0]}" for a in argv
                    if a.startswith("--text-split=")]
    code, _, err = run_cli(["text", "-f", book, "--split", *length_flags], capsys)
    assert code in (0, 2) and "Traceback" not in err and "run with --debug" not in err, err
