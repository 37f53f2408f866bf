"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device / --dtype / memory overrides, as every command that runs models takes them."""
    from tortoise_xpu.pipeline.validate import positive_int_arg

    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N, rocm, xpu, xpu:N, mps, directml, dml, dml:N (default: auto)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="override the backend policy's dtype for every stage")
    p.add_argument("--batch-size", type=positive_int_arg, default=None, help="override the AR batch size")
    p.add_argument("--ar-int8", default="auto", choices=["auto", "on", "off"],
                   help="int8 weights for the AR model's linears (CPU): auto = where the CPU has int8 "
                        "dot-product instructions and they measured faster (see `tortoise-xpu devices`)")
    vram = p.add_mutually_exclusive_group()
    vram.add_argument("--low-vram", action="store_true", help="move each model to the device only for its stage")
    vram.add_argument("--high-vram", action="store_true", help="keep every model resident on the device")


def add_models_dir_arg(p: argparse.ArgumentParser) -> None:
    """--models-dir, defaulting to $TORTOISE_XPU_MODELS or the user cache."""
    p.add_argument("--models-dir", default=None,
                   help="folder with the model files (default: $TORTOISE_XPU_MODELS or the user cache)")


def add_voice_args(p: argparse.ArgumentParser) -> None:
    """--voice / --voices-dir."""
    p.add_argument("-v", "--voice", default="random",
                   help="voice name, 'random', 'a&b' to mix, or a folder / clip / latents file (default: random)")
    p.add_argument("-V", "--voices-dir", action="append", default=[],
                   help="extra folder of voices (repeatable; also $TORTOISE_XPU_VOICES)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """The preset and the tuning knobs, named like the original's scripts/tortoise_tts.py flags."""
    from tortoise_xpu.pipeline.presets import DEFAULT_PRESET, PRESETS
    from tortoise_xpu.pipeline.validate import SAMPLER_NAMES, arg_type, seed_arg

    p.add_argument("-p", "--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help=f"generation preset (default: {DEFAULT_PRESET})")
    # Each flag's type= checks its range (pipeline/validate.py): `--temperature nan` exits 2 at once.
    p.add_argument("--seed", type=seed_arg, default=None,
                   help="random seed, 0 <= seed < 2**63 (default: time-based, printed)")
    g = p.add_argument_group("tuning (override the preset)")
    g.add_argument("--num-autoregressive-samples", type=arg_type("num_autoregressive_samples"), default=None,
                   help="AR candidates to sample")
    g.add_argument("--temperature", type=arg_type("temperature"), default=None)
    g.add_argument("--top-p", type=arg_type("top_p"), default=None)
    g.add_argument("--top-k", type=arg_type("top_k"), default=None)
    g.add_argument("--length-penalty", type=arg_type("length_penalty"), default=None)
    g.add_argument("--repetition-penalty", type=arg_type("repetition_penalty"), default=None)
    g.add_argument("--max-mel-tokens", type=arg_type("max_mel_tokens"), default=None,
                   help="cap on generated codes (1..600)")
    g.add_argument("--cvvp-amount", type=arg_type("cvvp_amount"), default=None)
    g.add_argument("--diffusion-iterations", type=arg_type("diffusion_iterations"), default=None)
    cf = g.add_mutually_exclusive_group()
    cf.add_argument("--cond-free", dest="cond_free", action="store_true", default=None)
    cf.add_argument("--no-cond-free", dest="cond_free", action="store_false")
    g.add_argument("--cond-free-k", type=arg_type("cond_free_k"), default=None)
    g.add_argument("--diffusion-temperature", type=arg_type("diffusion_temperature"), default=None)
    g.add_argument("--sampler", default=None, choices=list(SAMPLER_NAMES), help="diffusion sampler")
    g.add_argument("--force-tokens", type=arg_type("force_tokens"), default=None,
                   help="benchmark knob: ignore the stop token and generate exactly N codes")
    add_checkpoint_args(p)


#: ``--X-checkpoint`` flag stem -> the network (registry name) whose file it replaces.
CHECKPOINT_FLAGS = {"ar": "autoregressive", "diffusion": "diffusion", "clvp": "clvp", "cvvp": "cvvp",
                    "vocoder": "vocoder", "hifigan": "hifidecoder", "rlg-auto": "rlg_auto",
                    "rlg-diffuser": "rlg_diffuser"}


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """``--ar-checkpoint FILE`` and friends: a fine-tuned file per network, loaded beside the official rest."""
    g = p.add_argument_group("fine-tuned models (each replaces one official file; checked as strictly)")
    for stem, network in CHECKPOINT_FLAGS.items():
        g.add_argument(f"--{stem}-checkpoint", default=None, metavar="FILE",
                       help=f"use FILE instead of the official {network} model file")


def checkpoint_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The ``--X-checkpoint`` flags the user set, as ``TextToSpeech(checkpoints=...)`` takes them."""
    out = {}
    for stem, network in CHECKPOINT_FLAGS.items():
        value = getattr(args, f"{stem.replace('-', '_')}_checkpoint", None)
        if value is not None:
            out[network] = value
    return out


TUNING_KEYS = ("num_autoregressive_samples", "temperature", "top_p", "top_k", "length_penalty",
               "repetition_penalty", "max_mel_tokens", "cvvp_amount", "diffusion_iterations", "cond_free",
               "cond_free_k", "diffusion_temperature", "sampler")


def tuning_overrides(args: argparse.Namespace) -> dict:
    """The tuning flags the user set (None means: keep the preset's value)."""
    return {k: getattr(args, k) for k in TUNING_KEYS if getattr(args, k, None) is not None}


def read_input_file(file: str, what: str) -> bytes:
    """The bytes of an input file the user named (``what``: "text file", "jobs file"); a missing,
    unreadable or folder path is a one-line UserError."""
    from tortoise_xpu.errors import UserError

    try:
        with open(file, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {file}") from None
    except IsADirectoryError:
        raise UserError(f"{file} is a folder, not a {what}") from None
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror}") from None


def read_text_input(text: str | None, file: str | None) -> str:
    """The text to speak from the positional argument, ``-f FILE`` or standard input.

    Files may be UTF-8 (with or without BOM) or UTF-16 with a BOM; anything else is read as
    Latin-1, which never fails, so a legacy-encoded file still gives its words.  Control
    characters become spaces (see :func:`sanitize_text`); mostly-binary input is refused.
    """
    import sys

    from tortoise_xpu.errors import UserError

    if text is not None and file is not None:
        raise UserError("give the text either as an argument or with -f FILE, not both")
    if file is not None:
        if file == "-":
            return sanitize_text(_stdin_text(), "standard input")
        return sanitize_text(decode_text(read_input_file(file, "text file")), file)
    if text is not None:
        return sanitize_text(text, "the text")
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("no text given: pass it as an argument, with -f FILE, or on standard input")
    return sanitize_text(_stdin_text(), "standard input")


def _stdin_text() -> str:
    """Standard input as text, decoded like a file (so a non-UTF-8 pipe cannot raise)."""
    import sys

    buffer = getattr(sys.stdin, "buffer", None)
    return decode_text(buffer.read()) if buffer is not None else sys.stdin.read()


def sanitize_text(text: str, source: str = "the text") -> str:
    """Replace control characters (other than whitespace) and lone surrogates by spaces.

    They have no spoken form and the tokenizer would read each as ``[UNK]``.  Input where more
    than a tenth of the characters are such is refused: it is a binary file, not text.
    """
    import unicodedata

    from tortoise_xpu.errors import UserError

    bad = [i for i, ch in enumerate(text)
           if not ch.isspace() and unicodedata.category(ch) in ("Cc", "Cs")]
    if not bad:
        return text
    chars = list(text)
    for i in bad:
        chars[i] = " "
    clean = "".join(chars)
    if not clean.strip():
        raise UserError(f"{source} holds only control characters: nothing to say")
    if len(text) >= 64 and len(bad) > 0.1 * len(text):
        raise UserError(f"{source} does not look like text: {len(bad)} of {len(text)} characters are control "
                        f"characters (a binary file?)")
    return clean


def decode_text(raw: bytes) -> str:
    """Decode a text file's bytes: BOM-marked UTF-8/UTF-16/UTF-32, BOM-less UTF-16, else UTF-8,
    else Windows-1252, else Latin-1 (which never fails)."""
    import codecs

    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                     (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(enc, errors="replace")
    bomless = _bomless_utf16(raw)
    if bomless:
        return raw.decode(bomless, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:  # Windows-1252: Latin-1 plus the curly quotes and dashes of legacy Windows files
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _bomless_utf16(raw: bytes) -> str | None:
    """``"utf-16-le"``/``"utf-16-be"`` for UTF-16 text saved without a BOM (mostly-ASCII text then
    has a zero byte in every other position), else None."""
    if len(raw) < 4 or len(raw) % 2:
        return None
    sample = raw[:4096]
    pairs = len(sample) // 2
    even_zeros = sample[0::2].count(0)
    odd_zeros = sample[1::2].count(0)
    if odd_zeros >= 0.4 * pairs and even_zeros <= 0.05 * pairs:
        return "utf-16-le"
    if even_zeros >= 0.4 * pairs and odd_zeros <= 0.05 * pairs:
        return "utf-16-be"
    return None
