"""Text front end: normalisation (cleaners), the BPE tokenizer, long-text splitting and redaction brackets.

    >>> from tortoise_xpu.text import english_cleaners, split_and_recombine_text
    >>> english_cleaners("Dr. Who owes $2.")
    'doctor who owes two dollars.'
"""

from tortoise_xpu.text.cleaners import basic_cleaners, english_cleaners, get_cleaner, transliteration_cleaners
from tortoise_xpu.text.split import (
    MANUAL_SPLIT,
    RedactedText,
    normalize_for_split,
    parse_redaction,
    split_and_recombine_text,
    split_for_reading,
    split_manual,
)
from tortoise_xpu.text.tokenizer import (
    MAX_TEXT_TOKENS,
    START_TEXT_TOKEN,
    STOP_TOKEN,
    TOKENIZER_FILE,
    TextTooLongError,
    VoiceBpeTokenizer,
    ar_text_sequence,
    check_text_length,
    max_text_length,
    tts_text_tokens,
)

__all__ = [
    "english_cleaners", "basic_cleaners", "transliteration_cleaners", "get_cleaner",
    "split_and_recombine_text", "split_manual", "split_for_reading", "normalize_for_split",
    "parse_redaction", "RedactedText", "MANUAL_SPLIT",
    "VoiceBpeTokenizer", "TextTooLongError", "MAX_TEXT_TOKENS", "START_TEXT_TOKEN", "STOP_TOKEN",
    "TOKENIZER_FILE", "ar_text_sequence", "tts_text_tokens", "check_text_length", "max_text_length",
]
