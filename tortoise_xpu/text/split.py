"""Long text: cut it into chunks the AR model can read, and parse redaction brackets.

The AR model reads at most ~400 tokens and sounds best on a few sentences at a
time, so long text is cut at sentence ends into chunks of about
``desired_length`` characters and never more than ``max_length``.  The cut
points equal the original ``split_and_recombine_text`` on every input where the
original keeps its own ``max_length`` promise; see docs/frontend.md.

What the chunks add up to ("rejoin"): let ``N = normalize_for_split(text)``.  Then
``N`` is the chunks in order, separated (and preceded/followed) by gaps made only of
whitespace and the punctuation ``.,;:!?``.  In other words nothing but whitespace
and stray punctuation is lost, nothing is reordered or duplicated.
``tests/test_text_split.py`` checks exactly this on arbitrary unicode.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from tortoise_xpu.errors import UserError

__all__ = [
    "split_and_recombine_text",
    "split_manual",
    "split_for_reading",
    "normalize_for_split",
    "parse_redaction",
    "RedactedText",
    "MANUAL_SPLIT",
    "speakable_chunks",
    "UnspeakableChunkWarning",
]

MANUAL_SPLIT = "|"
_JUNK_RE = re.compile(r"^[\s.,;:!?]*$")
_SENTENCE_END = "!?\n"
_REPEATABLE_END = "!?."
_WORD_BREAK = "!?.\n "


def normalize_for_split(text: str) -> str:
    """Collapse every whitespace run to one space and straighten curly double quotes."""
    text = re.sub(r"\s+", " ", text)
    return re.sub("[\u201c\u201d]", '"', text)


def _is_junk(chunk: str) -> bool:
    return _JUNK_RE.match(chunk) is not None


def split_and_recombine_text(text: str, desired_length: int = 200, max_length: int = 300) -> list[str]:
    """Cut ``text`` into chunks of about ``desired_length`` characters, at most ``max_length``.

    Sentence ends are ``!``, ``?`` and ``.`` followed by a space, outside double
    quotes; a closing quote followed by a space also ends a sentence, and runs of
    end marks (``?!?``, ``...``) stay together.  A chunk is closed at the first
    sentence end once it has ``desired_length`` characters.  When a chunk reaches
    ``max_length`` it goes back to its last sentence end if it has more than
    ``desired_length / 2`` characters by then, otherwise to the last word break.
    Chunks are stripped; chunks of only whitespace/punctuation are dropped.
    """
    if desired_length < 1 or max_length < desired_length:
        raise UserError(f"need 1 <= desired_length <= max_length (got {desired_length}, {max_length})")
    text = normalize_for_split(text)
    last = len(text) - 1  # also the bound of look-ahead: the final character is never peeked at

    chunks: list[str] = []
    start = 0            # index in text where the open chunk begins
    pos = -1             # index of the last character taken into the open chunk
    quoted = False       # inside "..." at pos
    ends: list[int] = []  # sentence-end positions inside the open chunk

    def size() -> int:
        return pos + 1 - start

    def ahead(k: int) -> str:
        i = pos + k
        return text[i] if 0 <= i < last else ""

    def step(n: int) -> str:
        # Take (n > 0) or give back (n < 0) characters, tracking whether we are inside quotes.
        nonlocal pos, quoted
        for _ in range(abs(n)):
            if n > 0:
                pos += 1
                if text[pos] == '"':
                    quoted = not quoted
            else:
                # Kept from the original: going back toggles on the character we land on,
                # not the one given back.  "Fixing" it changes real chunkings (tortoise's
                # got.txt) and is not better where quotes are unbalanced; see docs/frontend.md.
                pos -= 1
                if text[pos] == '"':
                    quoted = not quoted
        return text[pos]

    def close() -> None:
        nonlocal start, ends
        chunks.append(text[start:pos + 1])
        start, ends = pos + 1, []

    while pos < last:
        c = step(1)
        if size() >= max_length:
            if ends and size() > desired_length / 2:
                step(ends[-1] - pos)  # back to the last sentence end
            else:
                while c not in _WORD_BREAK and pos > 0 and size() > desired_length:
                    c = step(-1)
            close()
        elif not quoted and (c in _SENTENCE_END or (c == "." and ahead(1) in "\n ")):
            while pos < last and size() < max_length and ahead(1) in _REPEATABLE_END:
                c = step(1)
            ends.append(pos)
            if size() >= desired_length:
                close()
        elif quoted and ahead(1) == '"' and ahead(2) in "\n ":
            step(2)
            ends.append(pos)
    chunks.append(text[start:pos + 1])

    out = []
    for chunk in chunks:
        chunk = chunk.strip()
        if chunk and not _is_junk(chunk):
            out.extend(_enforce_max(chunk, max_length))
    return out


def _enforce_max(chunk: str, max_length: int) -> list[str]:
    """Cut a chunk that is still longer than ``max_length`` at its last space (else hard).

    The original could emit chunks a character or two over ``max_length`` (a closing
    quote taken two characters at a time right at the limit).  Rare, but "at most
    ``max_length``" is a promise the TTS call relies on.
    """
    pieces = []
    while len(chunk) > max_length:
        cut = chunk.rfind(" ", 1, max_length + 1)
        if cut <= 0:
            cut = max_length
        head, chunk = chunk[:cut].rstrip(), chunk[cut:].lstrip()
        if head and not _is_junk(head):
            pieces.append(head)
    if chunk and not _is_junk(chunk):
        pieces.append(chunk)
    return pieces


def split_manual(text: str) -> list[str]:
    """Split at every ``|`` (the user's own chunk boundaries); empty parts are dropped.

    The parts are stripped but otherwise untouched: they are what the user asked for.
    """
    return [part.strip() for part in text.split(MANUAL_SPLIT) if part.strip()]


def split_for_reading(text: str, desired_length: int = 200, max_length: int = 300) -> list[str]:
    """The chunks ``read`` synthesises: ``|`` splits if present, else :func:`split_and_recombine_text`."""
    if MANUAL_SPLIT in text:
        return split_manual(text)
    return split_and_recombine_text(text, desired_length, max_length)


class UnspeakableChunkWarning(UserWarning):
    """A chunk that cleans to nothing speakable was dropped (the rest of the text is spoken)."""


def _is_speakable(chunk: str, clean: Callable[[str], str]) -> bool:
    # What TextToSpeech.text_tokens refuses: no letter or digit left once cleaned.
    return any(ch.isalnum() for ch in clean(chunk))


def _preview(chunk: str, width: int = 40) -> str:
    return repr(chunk if len(chunk) <= width else chunk[:width - 1] + "\u2026")


def speakable_chunks(chunks: Sequence[str], clean: Callable[[str], str] | None = None, *,
                     source: str = "the text", allow_empty: bool = False) -> list[str]:
    """Drop the chunks that clean to nothing speakable, with one warning each.

    Text is split before it is cleaned, so a long run of emoji, ``=`` or ``* `` between sentences can
    make a chunk of its own that cleans to nothing; the model would refuse it and, with it, the whole
    text.  ``clean`` is the cleaner the tokenizer applies (default: ``english_cleaners``).

    Raises:
        UserError: no chunk is left (unless ``allow_empty``): the message says the text is empty after
            cleaning and names the first chunk.
    """
    if clean is None:
        from tortoise_xpu.text.cleaners import english_cleaners as clean
    kept = []
    dropped = []
    for i, chunk in enumerate(chunks, 1):
        if _is_speakable(chunk, clean):
            kept.append(chunk)
        else:
            dropped.append((i, chunk))
    if not kept and dropped and not allow_empty:
        i, chunk = dropped[0]
        where = f"chunk {i} of {len(chunks)}: " if len(chunks) > 1 else ""
        raise UserError(f"{source} is empty after cleaning: nothing to say ({where}{_preview(chunk)} has no "
                        f"letters or digits once symbols and emoji are dropped)")
    if kept:
        for i, chunk in dropped:
            warnings.warn(f"skipping chunk {i} of {len(chunks)} ({_preview(chunk)}): nothing speakable after "
                          f"cleaning", UnspeakableChunkWarning, stacklevel=2)
    return kept


@dataclass(frozen=True)
class RedactedText:
    """A text with ``[bracketed]`` parts that steer the voice but are cut from the audio.

    Attributes:
        source: the text as given, brackets included (the original feeds this to the models).
        bare: ``source`` without the bracket characters (the text the aligner matches).
        keep: half-open ``(start, end)`` character spans of ``bare`` that stay in the audio.
        spoken: the kept parts joined: what the listener will hear.
        prompt: the bracketed parts joined: the emotional/context prompt.
    """

    source: str
    bare: str
    keep: tuple[tuple[int, int], ...]
    spoken: str
    prompt: str

    @property
    def has_redaction(self) -> bool:
        return "[" in self.source


def parse_redaction(text: str) -> RedactedText:
    """Parse ``[...]`` redaction brackets.

    >>> r = parse_redaction('[I am really sad,] Please feed me.')
    >>> r.prompt, r.spoken, r.keep
    ('I am really sad,', ' Please feed me.', ((16, 32),))

    Raises:
        UserError: for a ``]`` without ``[``, a ``[`` inside brackets, or an unclosed ``[``,
            naming the character position.
    """
    bare: list[str] = []
    keep: list[tuple[int, int]] = []
    spoken: list[str] = []
    prompt: list[str] = []
    inside = False
    piece_start = 0  # index in bare where the current piece began
    piece: list[str] = []

    def end_piece() -> None:
        content = "".join(piece)
        if inside:
            prompt.append(content)
        elif content:
            keep.append((piece_start, piece_start + len(content)))
            spoken.append(content)
        piece.clear()

    for i, ch in enumerate(text):
        if ch == "[":
            if inside:
                raise UserError(f"nested '[' at character {i + 1}: redaction brackets cannot be nested")
            end_piece()
            inside, piece_start = True, len(bare)
        elif ch == "]":
            if not inside:
                raise UserError(f"']' at character {i + 1} has no matching '['")
            end_piece()
            inside, piece_start = False, len(bare)
        else:
            bare.append(ch)
            piece.append(ch)
    if inside:
        raise UserError("'[' is never closed with ']': every redaction bracket needs a closing one")
    end_piece()
    return RedactedText(source=text, bare="".join(bare), keep=tuple(keep), spoken="".join(spoken),
                        prompt="".join(prompt))
