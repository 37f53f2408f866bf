"""The BPE text tokenizer of the Tortoise checkpoints, and the AR model's text-token conventions.

The vocabulary is the original ``tokenizer.json`` (255 ids, loaded with the
``tokenizers`` library; an asset obtained at run time, never shipped here).
Text is cleaned first (:mod:`tortoise_xpu.text.cleaners`), then every space is
written as the special token ``[SPACE]`` (the vocabulary's pre-tokenizer would
otherwise drop spaces).

Special ids: ``[STOP]`` = 0 (also the text stop token of the AR model),
``[UNK]`` = 1 (any character outside the vocabulary, e.g. ``[``), ``[SPACE]`` = 2.
The AR model reads ``[255, t1 .. tn, 0, 0]`` (see :func:`ar_text_sequence`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tortoise_xpu.assets.catalogue import TOKENIZER_FILE
from tortoise_xpu.errors import ModelFileError, UserError
from tortoise_xpu.text.cleaners import get_cleaner

__all__ = [
    "VoiceBpeTokenizer",
    "TextTooLongError",
    "STOP_TOKEN",
    "UNK_TOKEN",
    "SPACE_TOKEN",
    "START_TEXT_TOKEN",
    "MAX_TEXT_TOKENS",
    "TOKENIZER_FILE",
    "tts_text_tokens",
    "ar_text_sequence",
    "max_text_length",
    "check_text_length",
]

STOP_TOKEN = 0
UNK_TOKEN = 1
SPACE_TOKEN = 2
START_TEXT_TOKEN = 255
# UnifiedVoice(max_text_tokens=402): its text position table has 402 + 2 rows.
MAX_TEXT_TOKENS = 402


class TextTooLongError(UserError):
    """The text has more tokens than the AR model can read in one pass."""


class VoiceBpeTokenizer:
    """Clean text and turn it into the BPE ids the Tortoise models read (and back).

    Args:
        vocab_file: path of the original ``tokenizer.json``.
        cleaner: ``"english"`` (the checkpoints' training normalisation), ``"basic"``
            (lowercase + whitespace only), ``"transliteration"``, or any callable.
        use_basic_cleaners: the original constructor's switch; ``True`` means ``cleaner="basic"``.

    Raises:
        ModelFileError: the file is missing or is not a tokenizer file.
    """

    def __init__(self, vocab_file: str | os.PathLike, cleaner: str | Callable[[str], str] = "english",
                 use_basic_cleaners: bool = False) -> None:
        from tokenizers import Tokenizer

        path = Path(vocab_file)
        if not path.is_file():
            raise ModelFileError(
                f"tokenizer file {path} not found; it is the original tortoise-tts package's "
                f"tortoise/data/{TOKENIZER_FILE} and belongs in the models folder (--models-dir)")
        from tortoise_xpu import safeload

        try:  # the official file is 4.4 kB: a huge one is refused before the parser reads it
            safeload.check_file_size(path, safeload.TOKENIZER, label=str(path))
        except UserError as exc:
            raise ModelFileError(str(exc)) from None
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception type on bad JSON
            raise ModelFileError(f"{path} is not a valid tokenizer file ({exc})") from None
        if self._tok.token_to_id("[SPACE]") != SPACE_TOKEN or self._tok.token_to_id("[STOP]") != STOP_TOKEN:
            raise ModelFileError(f"{path} is not the Tortoise tokenizer ([STOP]/[SPACE] ids differ)")
        self.path = path
        if use_basic_cleaners:
            cleaner = "basic"
        self.clean: Callable[[str], str] = get_cleaner(cleaner) if isinstance(cleaner, str) else cleaner

    @property
    def vocab_size(self) -> int:
        """Number of ids in the vocabulary (255 for the official file)."""
        return self._tok.get_vocab_size()

    def encode(self, text: str, clean: bool = True) -> list[int]:
        """Ids of ``text`` (cleaned first unless ``clean=False``), without start/stop tokens."""
        if clean:
            text = self.clean(text)
        if not text.isascii():
            # Lone surrogates (undecodable command-line bytes) cannot cross into the Rust tokenizer.
            text = text.encode("utf-8", "ignore").decode("utf-8")
        return self._tok.encode(text.replace(" ", "[SPACE]")).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; ``[STOP]`` and ``[UNK]`` vanish, ``[SPACE]`` becomes a space.

        Accepts a list of ints or a 1-D tensor.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        pieces = self._tok.decode([int(i) for i in ids], skip_special_tokens=False)
        # tokenizers joins tokens with spaces: the real spaces are the [SPACE] tokens.
        text = pieces.replace(" ", "").replace("[SPACE]", " ")
        return text.replace("[STOP]", "").replace("[UNK]", "")

    def __repr__(self) -> str:
        return f"VoiceBpeTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def tts_text_tokens(ids: Sequence[int]) -> list[int]:
    """The text tokens the original ``tts()`` gives the AR model, CLVP and the latents pass.

    It appends one stop token: ``[t1 .. tn, 0]``.
    """
    return list(ids) + [STOP_TOKEN]


def ar_text_sequence(ids: Sequence[int]) -> list[int]:
    """The full text sequence the AR model embeds: ``[255, t1 .. tn, 0, 0]``.

    ``tts()`` appends one stop token, the AR inference appends another and prepends
    the start token.
    """
    return [START_TEXT_TOKEN] + list(ids) + [STOP_TOKEN, STOP_TOKEN]


def max_text_length(max_text_tokens: int = MAX_TEXT_TOKENS) -> int:
    """The most tokenizer ids one AR pass can read: the position table has ``max_text_tokens + 2`` rows
    and the sequence adds three tokens (start, two stops)."""
    return max_text_tokens + 2 - 3


def check_text_length(ids: Sequence[int], max_text_tokens: int = MAX_TEXT_TOKENS) -> None:
    """Raise :class:`TextTooLongError` if ``ids`` do not fit the AR model in one pass.

    The message says how long the text is and how to split it.  (The original
    asserted ``len(ids) + 1 < 400``; the model itself takes up to 401 ids.)
    """
    limit = max_text_length(max_text_tokens)
    if len(ids) > limit:
        raise TextTooLongError(
            f"the text is {len(ids)} tokens long but the model reads at most {limit} tokens at a time "
            f"(roughly 650 characters of English): split it with '|' between the parts, or use `tortoise-xpu read`, "
            f"which splits long text at sentence ends")
