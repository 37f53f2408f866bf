"""Redaction: cut the ``[bracketed]`` prompt words out of finished audio.

Tortoise lets a text carry a prompt the listener should not hear: in
``"[I am really sad,] Please feed me."`` the models read every word (so the voice
sounds sad) and the bracketed words are then cut from the waveform.  Finding
where each character was spoken is a forced-alignment job, done the way the
original does it (``tortoise/utils/wav2vec_alignment.py``):

1. resample the 24 kHz audio to 16 kHz and normalise it to zero mean, unit variance;
2. run a wav2vec2 CTC model (the original's fine-tune,
   :data:`MODEL_ID`) and greedily decode the frame argmaxes into a string;
3. line the expected text up with that string (:func:`max_alignment`): characters the
   model did not hear are marked as skipped;
4. walk the frames, giving each heard character the sample where its token first tops
   a frame (``frame * (samples // frames)``); the first character is pinned to 0;
5. place skipped characters by linear interpolation between their neighbours;
6. keep the audio of the unbracketed spans.

The CTC model comes from Hugging Face ``transformers`` (the ``redaction`` extra) and
the hub; everything else here is plain torch.  The aligner is an object with three
methods (:class:`CtcAligner`), so tests can stand in a tiny fake for the download.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence

import torch

from tortoise_xpu.audio.resample import resample
from tortoise_xpu.errors import ModelFileError, TortoiseError, UserError

__all__ = ["cut_brackets", "MODEL_ID", "TOKENIZER_ID", "ALIGN_SAMPLE_RATE", "CtcAligner", "max_alignment", "match_characters",
           "align", "cut_spans", "load_aligner", "redact"]

#: The original's wav2vec2 CTC fine-tune (LibriTTS + VoxPopuli) and its character tokenizer.
MODEL_ID = "jbetker/wav2vec2-large-robust-ft-libritts-voxpopuli"
TOKENIZER_ID = "jbetker/tacotron-symbols"
ALIGN_SAMPLE_RATE = 16000  # wav2vec2's input rate
SKIP = "~"  # marks an expected character the CTC model did not hear (display only)
INSTALL_HINT = "pip install 'tortoise-xpu[redaction]'"
TURN_OFF_HINT = "or speak the brackets as written with --disable-redaction (enable_redaction=False)"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class CtcAligner(Protocol):
    """What alignment needs from a CTC speech recogniser."""

    def logits(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalised 16 kHz audio (1, S) on any device → per-frame logits (frames, vocab)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Greedy CTC decoding of per-frame argmax ids (repeats merged, blanks dropped)."""

    def encode(self, text: str) -> list[int]:
        """One token id per character of ``text``."""


# ------------------------------------------------------------------------------------ text alignment
def match_characters(expected: str, heard: str) -> list[bool]:
    """Which characters of ``expected`` are matched, in order, by characters of ``heard``.

    This is the original's ``max_alignment`` as an iterative dynamic programme over suffixes
    (its memoised recursion overflows the stack on long texts), with the same choices:

    - equal leading characters are always matched with each other (greedy);
    - otherwise either drop the next heard character or give up the next expected one,
      whichever leaves more matches, giving up the expected one on a tie.
    """
    n, m = len(expected), len(heard)
    # best[i][j]: matches the rule above finds between expected[i:] and heard[j:]
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = best[i], best[i + 1]
        ch = expected[i]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if ch == heard[j] else max(row[j + 1], below[j])
    matched = [False] * n
    i = j = 0
    while i < n and j < m:
        if expected[i] == heard[j]:
            matched[i] = True
            i, j = i + 1, j + 1
        elif best[i][j + 1] > best[i + 1][j]:
            j += 1
        else:
            i += 1
    return matched


def max_alignment(expected: str, heard: str, skip_character: str = SKIP) -> str:
    """``expected`` with every character not matched in ``heard`` replaced by ``skip_character``.

    >>> max_alignment("hello world", "helo wrld")
    'hel~o w~rld'
    """
    return "".join(c if ok else skip_character for c, ok in zip(expected, match_characters(expected, heard)))


def _interpolate_missing(positions: list[int | None], end: int) -> list[int]:
    """Fill ``None`` runs linearly between the known neighbours (``end`` after the last character).

    Integer arithmetic as the original: the k-th of r missing positions after ``a`` and before
    ``b`` lands at ``a + k * (b - a) // (r + 1)``.
    """
    out = list(positions)
    i = 0
    while i < len(out):
        if out[i] is not None:
            i += 1
            continue
        run_end = i
        while run_end < len(out) and out[run_end] is None:
            run_end += 1
        before = out[i - 1] if i > 0 else 0
        after = out[run_end] if run_end < len(out) else end
        span = run_end - i + 1
        for k in range(i, run_end):
            out[k] = before + (k - i + 1) * (after - before) // span
        i = run_end
    return out  # type: ignore[return-value]


def align(aligner: CtcAligner, wav: torch.Tensor, text: str, sample_rate: int = 24000) -> list[int]:
    """The sample (in ``wav``'s rate) where each character of ``text`` starts being spoken.

    ``wav`` is (S,) or (1, S) on any device.  Returns ``len(text)`` non-decreasing positions,
    the first always 0.  Characters the recogniser did not hear get interpolated positions,
    and so do heard ones whose token never tops a frame after the previous match (the
    original asserts there instead).
    """
    if not text:
        return []
    audio = wav.reshape(1, -1).float()
    total = audio.shape[-1]
    with torch.no_grad():
        audio = resample(audio, sample_rate, ALIGN_SAMPLE_RATE)
        audio = (audio - audio.mean()) / torch.sqrt(audio.var() + 1e-7)
        logits = aligner.logits(audio)
    top = logits.argmax(-1).tolist()
    if not top:
        raise TortoiseError(f"the audio ({total} samples) is too short for the redaction aligner")
    expected = text.lower()
    matched = match_characters(expected, aligner.decode(top))
    ids = aligner.encode(expected)
    if len(ids) != len(expected):
        raise TortoiseError(f"the redaction tokenizer gave {len(ids)} tokens for {len(expected)} characters; "
                            "it must encode one token per character")
    samples_per_frame = total // len(top)
    positions: list[int | None] = [None] * len(expected)
    positions[0] = 0  # the first character starts the clip
    wanted = iter(k for k in range(1, len(expected)) if matched[k])
    k = next(wanted, None)
    for frame, token in enumerate(top):
        if k is None:
            break
        if token == ids[k]:
            positions[k] = frame * samples_per_frame
            k = next(wanted, None)
    return _interpolate_missing(positions, total)


def cut_spans(wav: torch.Tensor, starts: Sequence[int], keep: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The audio of the kept character spans, joined: (1, S) → (1, S').

    ``starts[c]`` is where character ``c`` starts; a half-open span ``(a, b)`` keeps
    ``[starts[a], starts[b])``, running to the end of the audio when ``b`` is the last character.
    (The original stops at the start of the span's last character instead, which clips the end
    of the final sound when the text ends unbracketed.)
    """
    wav = wav.reshape(1, -1)
    total = wav.shape[-1]
    bounds = list(starts) + [total]
    parts = [wav[:, bounds[a]:bounds[b]] for a, b in keep if b > a]
    if not parts:
        return wav[:, :0]
    return torch.cat(parts, dim=-1)


# ------------------------------------------------------------------------------------ the model
def _offline_setting() -> str | None:
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


class _Wav2Vec2Aligner:
    """``transformers`` wav2vec2 CTC model + tokenizer, run on a backend's device for each call."""

    def __init__(self, model: torch.nn.Module, tokenizer, backend=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.backend = backend

    def logits(self, wave: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            return self.model(wave.cpu()).logits[0].float()
        model = self.backend.to_device(self.model)
        try:
            return model(self.backend.to_device(wave)).logits[0].float()
        finally:
            # Between redactions it waits on the host, as in the original (it is 300M parameters).
            self.model = model.to("cpu")
            self.backend.empty_cache()

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))


_LOADED: dict[str, tuple[torch.nn.Module, object]] = {}


def load_aligner(backend=None) -> CtcAligner:
    """The original's wav2vec2 aligner (downloaded once into the Hugging Face cache, kept per process).

    Raises:
        UserError: ``transformers`` is not installed (the ``redaction`` extra).
        ModelFileError: the model cannot be loaded: not cached while offline, or no network.
    """
    try:
        from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC
    except ImportError:
        raise UserError(f"cutting [bracketed] text from the audio needs the wav2vec2 aligner of the "
                        f"'redaction' extra: {INSTALL_HINT}; {TURN_OFF_HINT}") from None
    if MODEL_ID not in _LOADED:
        try:
            model = Wav2Vec2ForCTC.from_pretrained(MODEL_ID)
            tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(TOKENIZER_ID)
        except Exception as exc:  # the hub client raises many kinds; all mean "not loadable"
            cause = " ".join(str(exc).split())[:200]
            offline = _offline_setting()
            if offline:
                where = (f"{offline} is set and it is not in the Hugging Face cache; run once with network "
                         f"access (without {offline}) to download it")
            else:
                where = "it could not be downloaded from the Hugging Face hub; check the network or HF_HOME"
            raise ModelFileError(f"the redaction model {MODEL_ID} (tokenizer {TOKENIZER_ID}) could not be "
                                 f"loaded: {where} ({cause}); {TURN_OFF_HINT}") from None
        _LOADED[MODEL_ID] = (model.eval(), tokenizer)
    model, tokenizer = _LOADED[MODEL_ID]
    return _Wav2Vec2Aligner(model, tokenizer, backend)


# ------------------------------------------------------------------------------------ redaction
def redact(wav: torch.Tensor, parsed, backend=None, aligner: CtcAligner | None = None,
           sample_rate: int = 24000) -> torch.Tensor:
    """Cut the bracketed parts of ``parsed`` (a :class:`~tortoise_xpu.text.split.RedactedText`) from ``wav``.

    Args:
        wav: the spoken text, brackets' words included, (1, S) or (S,) float at ``sample_rate``.
        parsed: ``parse_redaction(text)`` of the text the audio speaks.
        backend: where the aligner runs (the pipeline's Backend); ``None`` for the CPU.
        aligner: a :class:`CtcAligner`; default :func:`load_aligner`.

    Returns:
        (1, S') float audio on the CPU: the kept spans joined; ``wav`` unchanged without brackets.

    Raises:
        UserError: every word is in brackets (nothing would be left), or the extra is missing.
        ModelFileError: the aligner model cannot be loaded.
    """
    wav = wav.reshape(1, -1)
    if not parsed.has_redaction:
        return wav
    if not any(ch.isalnum() for ch in parsed.spoken):
        raise UserError("every word of the text is in [brackets], so redaction would leave no audio; "
                        "put the words to be heard outside the brackets")
    aligner = aligner if aligner is not None else load_aligner(backend)
    starts = align(aligner, wav, parsed.bare, sample_rate)
    return cut_spans(wav.cpu(), starts, parsed.keep)


def cut_brackets(store, ctx, wavs: Sequence[torch.Tensor], parsed) -> list[torch.Tensor]:
    """The redaction stage: :func:`redact` on each of a run's waveforms with the store's aligner
    (``store.aligner()``, loaded once per store on its backend); ``ctx`` is the run's context."""
    aligner = store.aligner() if parsed.has_redaction else None
    return [redact(w, parsed, store.backend, aligner=aligner) for w in wavs]
