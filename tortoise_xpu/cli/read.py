"""``tortoise-xpu read``: a long text (a chapter, a book) into per-chunk WAVs plus a combined WAV."""

from __future__ import annotations

import argparse
import json
import sys

from tortoise_xpu.cli.common import (add_device_args, add_generation_args, add_models_dir_arg, add_voice_args,
                                     read_text_input, tuning_overrides)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="read a long text into a folder of WAVs (resumable)",
                       description="Split FILE into sentence chunks (or at '|' marks), speak each into OUTPUT/"
                                   "chunk_NNNN.wav, and join them into OUTPUT/combined.wav. A manifest records "
                                   "every chunk; re-running resumes and never redoes finished chunks.")
    p.add_argument("file", help="the text file ('-' for standard input)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--regenerate", default="", help="chunk numbers to redo, e.g. 3,7")
    p.add_argument("--text-split", default="200,300", help="desired,max characters per chunk (default 200,300)")
    p.add_argument("--float32", action="store_true", help="write 32-bit float WAVs instead of 16-bit PCM")
    p.add_argument("--disable-redaction", action="store_true", help="speak [bracketed] text instead of cutting it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_voice_args(p)
    add_generation_args(p)
    add_device_args(p)
    add_models_dir_arg(p)
    p.set_defaults(func=run, preset="standard")


def _parse_pair(value: str) -> tuple[int, int]:
    from tortoise_xpu.errors import UserError

    try:
        desired, maximum = (int(x) for x in value.split(","))
    except ValueError:
        raise UserError(f"--text-split takes two numbers 'desired,max', got {value!r}") from None
    if not 0 < desired <= maximum:
        raise UserError(f"--text-split needs 0 < desired <= max, got {value!r}")
    return desired, maximum


def _parse_regenerate(value: str) -> list[int]:
    from tortoise_xpu.errors import UserError

    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--regenerate takes chunk numbers like 3,7; got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tortoise_xpu.audio.io import load_audio, save_wav
    from tortoise_xpu.cli.synth import StageProgress, build_tts, resolve_seed, voice_inputs
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.fileio import check_writable_folder
    from tortoise_xpu.pipeline.longform import read_chunks
    from tortoise_xpu.pipeline.presets import preset_settings
    from tortoise_xpu.text.split import speakable_chunks, split_for_reading

    text = read_text_input(None, args.file)
    desired, maximum = _parse_pair(args.text_split)
    chunks = speakable_chunks(split_for_reading(text, desired, maximum), source=args.file or "the text")
    if not chunks:
        raise UserError(f"{args.file} has nothing speakable in it")
    regenerate = _parse_regenerate(args.regenerate)
    out = Path(args.output)
    check_writable_folder(out)  # name, lengths, a file in the way, permissions: before any work
    settings = preset_settings(args.preset, **tuning_overrides(args))
    seed = args.seed
    if seed is None and out.is_dir():
        from tortoise_xpu.pipeline.longform import load_manifest

        # Re-running the same command resumes: keep the seed the folder was started with.
        seed = (load_manifest(out) or {}).get("seed")
    seed = resolve_seed(seed)
    progress = StageProgress(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    tts = build_tts(args, progress)
    subtype = "FLOAT" if args.float32 else "PCM_16"
    run_settings = {**settings, "voice": args.voice, "force_tokens": args.force_tokens}

    with progress.running():
        voice = None
        chunk_task = progress.add("chunks", len(chunks))

        def synthesize(chunk_text: str, chunk_seed: int):
            nonlocal voice
            if voice is None:  # only when some chunk needs work: loads the voice once per run
                voice = voice_inputs(tts, args.voice, args.voices_dir, seed)
            return tts.tts(chunk_text, seed=chunk_seed, force_tokens=args.force_tokens, **voice, **settings)

        def on_chunk(i: int, n: int, status: str) -> None:
            if status != "start":
                progress.advance(chunk_task, i + 1)

        try:
            result = read_chunks(chunks, out, synthesize, lambda p, w: save_wav(p, w, 24000, subtype=subtype),
                                 lambda p: load_audio(p, 24000, check=False), run_settings, seed, regenerate,
                                 on_chunk)
        except KeyboardInterrupt:
            # Finished chunks and the manifest are on disk whole; nothing partial is left.
            print(f"interrupted: finished chunks are kept in {out}; run the same command again to resume",
                  file=sys.stderr)
            return 130
    summary = {"folder": str(out), "chunks": len(chunks), "synthesised": [i + 1 for i in result.synthesised],
               "skipped": [i + 1 for i in result.skipped], "combined": str(result.combined), "seed": seed}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"{out}: {len(result.synthesised)} chunk(s) synthesised, {len(result.skipped)} already done; "
              f"combined: {result.combined}", file=sys.stderr)
    return 0
