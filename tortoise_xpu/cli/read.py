"""``tortoise-xpu read``: a long text (a chapter, a book) into per-chunk WAVs plus a combined WAV."""

from __future__ import annotations

import argparse
import contextlib
import sys

from tortoise_xpu.cli.common import read_text_input, tuning_overrides
from tortoise_xpu.cli.longjobs import add_job_args, parse_text_split


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("read", help="read a long text into a folder of WAVs (resumable, optionally on a cluster)",
                       description="Split FILE into sentence chunks (or at '|' marks), speak each into OUTPUT/"
                                   "chunk_NNNN.wav, and join them into OUTPUT/combined.wav. A manifest records "
                                   "what made every chunk; re-running resumes and never redoes finished chunks. "
                                   "Finished chunks made with other settings are kept (one line says so) unless "
                                   "--restart is given. --cluster spreads the chunks over a Ray cluster.")
    p.add_argument("file", help="the text file ('-' for standard input)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--regenerate", default="", help="chunk numbers to make a new take of, e.g. 3,7")
    add_job_args(p)
    p.set_defaults(func=run, preset="standard")


def _parse_regenerate(value: str) -> list[int]:
    from tortoise_xpu.errors import UserError

    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--regenerate takes chunk numbers like 3,7; got {value!r}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tortoise_xpu.audio.io import load_audio, save_wav
    from tortoise_xpu.audio.rates import SAMPLE_RATE
    from tortoise_xpu.cli.longjobs import (JobProgress, check_cluster, interrupted, job_models, make_executor,
                                           print_summary, summary, wav_joiner)
    from tortoise_xpu.cli.synth import resolve_seed
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.fileio import check_writable_folder
    from tortoise_xpu.pipeline.chunk_synthesis import load_voice
    from tortoise_xpu.pipeline.longform import load_state, read_job
    from tortoise_xpu.pipeline.presets import preset_settings
    from tortoise_xpu.text.split import speakable_chunks, split_for_reading

    target = check_cluster(args)
    text = read_text_input(None, args.file)
    desired, maximum = parse_text_split(args.text_split)
    chunks = speakable_chunks(split_for_reading(text, desired, maximum), source=args.file or "the text")
    if not chunks:
        raise UserError(f"{args.file} has nothing speakable in it")
    regenerate = _parse_regenerate(args.regenerate)
    out = Path(args.output)
    check_writable_folder(out)  # name, lengths, a file in the way, permissions: before any work
    settings = preset_settings(args.preset, **tuning_overrides(args))
    seed = args.seed
    if seed is None and out.is_dir():
        # Re-running the same command resumes: keep the seed the folder was last run with.
        seed = (load_state(out) or {}).get("seed")
    seed = resolve_seed(seed)
    run_settings = {**settings, "voice": args.voice, "force_tokens": args.force_tokens}
    voice = load_voice(args.voice, args.voices_dir)
    models = job_models(args)
    progress = JobProgress(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    subtype = "FLOAT" if args.float32 else "PCM_16"
    # stdout carries the --json summary only (Ray's driver prints its notices there).
    with progress.running(), contextlib.redirect_stdout(sys.stderr):
        try:
            result = read_job(chunks, out, make_executor(args, target, models, progress),
                              lambda p, w: save_wav(p, w, SAMPLE_RATE, subtype=subtype),
                              lambda p: load_audio(p, SAMPLE_RATE, check=False), run_settings, seed,
                              voices={"voice": (voice, seed)}, regenerate=regenerate, restart=args.restart,
                              models=models, on_event=progress.event, join=wav_joiner(subtype))
        except KeyboardInterrupt:
            return interrupted(out)
    data = summary(result.run, len(chunks), seed, {
        "folder": str(out), "synthesised": [i + 1 for i in result.synthesised],
        "skipped": [i + 1 for i in result.skipped], "kept": [i + 1 for i in result.kept_stale],
        "combined": str(result.combined), "cluster": args.cluster})
    kept = f", {len(result.kept_stale)} kept from other settings" if result.kept_stale else ""
    print_summary(args, data, f"{out}: {len(result.synthesised)} chunk(s) synthesised, {len(result.skipped)} "
                              f"already done{kept}; combined: {result.combined}")
    return 0
