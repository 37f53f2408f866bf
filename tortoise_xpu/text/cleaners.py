"""Text normalisation: what the Tortoise checkpoints were trained to read.

The autoregressive model and CLVP only ever saw text that went through the
original package's ``english_cleaners``: transliterate to ASCII, lowercase,
spell out numbers and money, expand 18 abbreviations, collapse whitespace and
drop double quotes.  Anything we do differently changes the token ids the model
sees, so :func:`english_cleaners` reproduces that output exactly, except for the
fixes listed in docs/frontend.md (each has a test in tests/test_text_cleaners.py):

* ``£`` survives transliteration, so ``£7.50`` reads "seven pounds, fifty pence"
  (the original ran ``unidecode`` first, which turns ``£`` into ``PS``).
* Inputs that made the original raise (numbers of 37 digits and more, money with
  stray commas such as ``$,5``) are spoken instead of crashing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from unidecode import unidecode

__all__ = [
    "english_cleaners",
    "basic_cleaners",
    "transliteration_cleaners",
    "expand_numbers",
    "expand_abbreviations",
    "collapse_whitespace",
    "get_cleaner",
]

# --- abbreviations ------------------------------------------------------------------------------

# (abbreviation, spoken form); each matches at a word start, followed by a full stop.
_ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
    ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
    ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
    ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
)
# Order matters and is kept: "dr." is rewritten before "drs." is looked at, so "drs." stays.
_ABBREVIATION_RULES = tuple((re.compile(rf"\b{abbr}\.", re.IGNORECASE), spoken) for abbr, spoken in _ABBREVIATIONS)

# --- numbers ------------------------------------------------------------------------------------

_THOUSANDS_RE = re.compile(r"([0-9][0-9,]+[0-9])")
_POUNDS_RE = re.compile(r"£([0-9.,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9.,]*[0-9]+)")
_DECIMAL_RE = re.compile(r"([0-9]+\.[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_INTEGER_RE = re.compile(r"[0-9]+")
_WHITESPACE_RE = re.compile(r"\s+")

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _skip_typecheck(target=None, **_options):
    """Stand-in for ``typeguard.typechecked``: returns the function as it is (also as a decorator factory)."""
    return target if target is not None else (lambda fn: fn)


@lru_cache(maxsize=1)
def _inflect_engine():
    # Built lazily: most CLI commands never need it.  inflect >= 7 decorates its methods with
    # typeguard's @typechecked, which re-compiles each one from source at import: 4 s of CPU on a
    # small machine for every `speak` with a digit in the text.  Those checks only turn a wrong
    # argument type into TypeCheckError; _in_words passes digit strings and ints and already
    # falls back on any refusal.  So inflect is imported with the decorator as a no-op.
    import sys

    if "inflect" not in sys.modules:
        try:
            import typeguard
        except ImportError:  # older inflect releases do not use typeguard
            typeguard = None
        real = getattr(typeguard, "typechecked", None)
        if real is not None:
            typeguard.typechecked = _skip_typecheck
        try:
            import inflect  # noqa: F401
        finally:
            if real is not None:
                typeguard.typechecked = real
    import inflect

    return inflect.engine()


def _in_words(number: int | str, **options) -> str:
    """``inflect.number_to_words``, reading the digits one by one where inflect gives up.

    inflect stops at decillions (10**36) and raises; the original crashed there.
    ``number`` may be an ordinal string such as ``"21st"``.
    """
    engine = _inflect_engine()
    try:
        return engine.number_to_words(number, **options)
    except Exception:  # inflect.NumOutOfRangeError (and any other refusal): spell the digits
        text = str(number)
        digits = [c for c in text if c.isdigit()]
        if not digits:
            return text
        words = [_DIGIT_WORDS[int(d)] for d in digits]
        if not text[-1].isdigit():  # ordinal: only the last digit takes the ordinal form
            words[-1] = engine.ordinal(words[-1])
        return " ".join(words)


def _drop_commas(match: re.Match) -> str:
    return match.group(1).replace(",", "")


def _money_words(amount: str, major: tuple[str, str], minor: tuple[str, str], nothing: str) -> str:
    """Spell an amount as ``N <major>, M <minor>`` (still with digits; the integer rule reads them).

    ``major``/``minor`` are (singular, plural) unit names.  Commas left in the amount
    (only possible next to a full stop or at an end, e.g. ``$,5``) are ignored; the
    original passed them to ``int()`` and crashed.
    """
    parts = amount.replace(",", "").split(".")
    if len(parts) > 2:
        return f"{amount} {major[1]}"  # not an amount we understand: read it as digits + unit
    whole = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    pieces = []
    if whole:
        pieces.append(f"{whole} {major[0] if whole == 1 else major[1]}")
    if cents:
        pieces.append(f"{cents} {minor[0] if cents == 1 else minor[1]}")
    return ", ".join(pieces) if pieces else nothing


def _dollars(match: re.Match) -> str:
    return _money_words(match.group(1), ("dollar", "dollars"), ("cent", "cents"), "zero dollars")


def _pounds(match: re.Match) -> str:
    # Pence are read as money ("7.5" is 7 pounds 50 pence); three or more decimals as a plain decimal.
    amount = match.group(1).replace(",", "")
    whole, _, frac = amount.partition(".")
    if "." in frac or len(frac) > 2:
        return f"{amount} pounds"
    if len(frac) == 1:
        frac += "0"
    return _money_words(f"{whole}.{frac}" if frac else whole, ("pound", "pounds"), ("penny", "pence"),
                        "zero pounds")


def _decimal(match: re.Match) -> str:
    return match.group(1).replace(".", " point ")


def _ordinal(match: re.Match) -> str:
    return _in_words(match.group(0))


def _integer(match: re.Match) -> str:
    value = int(match.group(0))
    if 1000 < value < 3000:  # read like a year: 1984 -> nineteen eighty-four
        if value == 2000:
            return "two thousand"
        if 2000 < value < 2010:
            return "two thousand " + _in_words(value % 100)
        if value % 100 == 0:
            return _in_words(value // 100) + " hundred"
        return _in_words(value, andword="", zero="oh", group=2).replace(", ", " ")
    return _in_words(value, andword="")


def expand_numbers(text: str) -> str:
    """Spell out the numbers in lowercase ASCII text (``£`` allowed), in the original's rule order.

    Thousands separators go first, then pounds and dollars (with pence/cents),
    decimals ("point"), ordinals, and finally the remaining integers, of which
    1001-2999 are read as years.
    """
    text = _THOUSANDS_RE.sub(_drop_commas, text)
    text = _POUNDS_RE.sub(_pounds, text)
    text = _DOLLARS_RE.sub(_dollars, text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _ORDINAL_RE.sub(_ordinal, text)
    text = _INTEGER_RE.sub(_integer, text)
    return text


def expand_abbreviations(text: str) -> str:
    """Replace the 18 title/place abbreviations (``mr.`` -> ``mister``...) by their spoken form."""
    for pattern, spoken in _ABBREVIATION_RULES:
        text = pattern.sub(spoken, text)
    return text


def collapse_whitespace(text: str) -> str:
    """Turn every run of whitespace into one space (ends are kept, as in the original)."""
    return _WHITESPACE_RE.sub(" ", text)


def _to_ascii_keeping_pound(text: str) -> str:
    # unidecode maps "£" to "PS"; keep the sign so the pounds rule can see it.
    return "£".join(unidecode(piece) for piece in text.split("£"))


def english_cleaners(text: str) -> str:
    """Normalise English text the way the Tortoise checkpoints were trained on.

    >>> english_cleaners('Mr. Smith paid $3.50 on the 2nd of May, 1984.')
    'mister smith paid three dollars, fifty cents on the second of may, nineteen eighty-four.'
    """
    text = _to_ascii_keeping_pound(text)
    text = text.lower()
    text = expand_numbers(text)
    text = text.replace("£", " pounds ")  # a pound sign with no amount after it
    text = expand_abbreviations(text)
    text = collapse_whitespace(text)
    return text.replace('"', "")


def basic_cleaners(text: str) -> str:
    """Lowercase and collapse whitespace, nothing else (the original's ``tokenizer_basic`` mode)."""
    return collapse_whitespace(text.lower())


def transliteration_cleaners(text: str) -> str:
    """ASCII-transliterate, lowercase and collapse whitespace (no number expansion)."""
    return collapse_whitespace(unidecode(text).lower())


_CLEANERS: dict[str, Callable[[str], str]] = {
    "english": english_cleaners,
    "basic": basic_cleaners,
    "transliteration": transliteration_cleaners,
}


def get_cleaner(name: str) -> Callable[[str], str]:
    """Return the cleaner called ``name`` (``english``, ``basic`` or ``transliteration``)."""
    try:
        return _CLEANERS[name]
    except KeyError:
        from tortoise_xpu.errors import UserError

        raise UserError(f"unknown text cleaner {name!r}; choose one of {', '.join(_CLEANERS)}") from None
