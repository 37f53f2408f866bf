"""``tortoise-xpu text``: show what the models will read: cleaned text, token ids, chunks.

How a user finds out why a sentence is read oddly ("$5.5" is "five dollars, five
cents") or is too long for one pass.  Only ``--tokens`` needs an asset
(``tokenizer.json`` in the models folder).
"""

from __future__ import annotations

import argparse
import json

from tortoise_xpu.cli.common import add_models_dir_arg, read_text_input


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "text", help="show the cleaned text, token ids and chunks the models will read",
        description="Print the text as the models read it (numbers, money and abbreviations spelled out). "
                    "--tokens adds the BPE token ids (needs tokenizer.json in the models folder), --split the "
                    "chunks `read` would synthesise one by one ('|' in the text sets them by hand).")
    p.add_argument("text", nargs="?", default=None, help="the text (or -f FILE, or standard input)")
    p.add_argument("-f", "--file", default=None, help="read the text from FILE ('-' for standard input)")
    p.add_argument("--tokens", action="store_true", help="print the token ids (without the AR start/stop tokens)")
    p.add_argument("--split", action="store_true", help="print the chunks `read` would synthesise")
    p.add_argument("--json", action="store_true",
                   help='print {"cleaned": ..., "tokens": [...] or null, "chunks": [...]} '
                        '(tokens only with --tokens; with --split also "chunk_tokens" when --tokens)')
    p.add_argument("--basic-cleaners", action="store_true",
                   help="lowercase + whitespace only, like the original's tokenizer_basic")
    p.add_argument("--desired-length", type=int, default=200, help="chunk length to aim for (default: 200)")
    p.add_argument("--max-length", type=int, default=300, help="longest chunk in characters (default: 300)")
    add_models_dir_arg(p)
    p.set_defaults(func=run)


def _tokenizer(args: argparse.Namespace):
    from tortoise_xpu import assets
    from tortoise_xpu.text.tokenizer import TOKENIZER_FILE, VoiceBpeTokenizer

    # A missing file raises ModelFileError naming the command that downloads it.
    path = assets.require(TOKENIZER_FILE, args.models_dir)
    return VoiceBpeTokenizer(path, cleaner="basic" if args.basic_cleaners else "english")


def run(args: argparse.Namespace) -> int:
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.text.cleaners import basic_cleaners, english_cleaners
    from tortoise_xpu.text.split import split_for_reading
    from tortoise_xpu.text.tokenizer import check_text_length, max_text_length

    text = read_text_input(args.text, args.file)
    if not text.strip():
        raise UserError("the text is empty")
    clean = basic_cleaners if args.basic_cleaners else english_cleaners
    cleaned = clean(text)
    chunks = split_for_reading(text, args.desired_length, args.max_length)
    tokens = chunk_tokens = None
    if args.tokens:
        tok = _tokenizer(args)
        tokens = tok.encode(cleaned, clean=False)
        chunk_tokens = [tok.encode(c) for c in chunks]

    if args.json:
        out = {"cleaned": cleaned, "tokens": tokens, "chunks": chunks}
        if args.split and chunk_tokens is not None:
            out["chunk_tokens"] = chunk_tokens
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0

    # The cleaned text always, then its ids (--tokens), then each chunk with its own ids (--split).
    limit = max_text_length()
    print(cleaned)
    if tokens is not None:
        print(" ".join(map(str, tokens)))
        print(f"{len(tokens)} tokens (one pass reads at most {limit})")
        if not args.split:
            try:
                check_text_length(tokens)
            except UserError as exc:
                print(f"note: {exc}")
    if args.split:
        for i, chunk in enumerate(chunks, 1):
            line = f"[{i}] {chunk}"
            if chunk_tokens is not None:
                n = len(chunk_tokens[i - 1])
                line += f"  ({n} tokens{', TOO LONG' if n > limit else ''})"
            print(line)
            if chunk_tokens is not None:
                print("    " + " ".join(map(str, chunk_tokens[i - 1])))
    return 0
