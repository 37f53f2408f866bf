"""``tortoise-xpu speak``: text to one WAV file."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tortoise_xpu.cli.common import (add_device_args, add_generation_args, add_models_dir_arg, add_voice_args,
                                     read_text_input, tuning_overrides)
from tortoise_xpu.pipeline.validate import positive_int_arg

# Longer texts are split into sentences and spoken one after another; past this, use `read`.
SPEAK_MAX_CHARS = 2000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("speak", help="speak a text into a WAV file",
                       description="Speak TEXT (or -f FILE, or standard input) with a voice into a 24 kHz WAV. "
                                   f"Texts over one sentence chunk are split and joined; over {SPEAK_MAX_CHARS} "
                                   "characters, use `tortoise-xpu read` (resumable, one file per chunk).")
    p.add_argument("text", nargs="?", help="the text to speak")
    p.add_argument("-f", "--file", help="read the text from a file ('-' for standard input)")
    p.add_argument("-o", "--output", default="tortoise.wav",
                   help="output file; .wav, .flac, .ogg or .mp3 chooses the format; '-' writes WAV to standard "
                        "output (default: tortoise.wav)")
    p.add_argument("-k", "--candidates", type=positive_int_arg, default=1,
                   help="how many of the best candidates to write (output_1.wav, output_2.wav, ...)")
    p.add_argument("--float32", action="store_true", help="write 32-bit float WAV instead of 16-bit PCM")
    p.add_argument("--disable-redaction", action="store_true", help="speak [bracketed] text instead of cutting it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON summary (seed, timings, files)")
    p.add_argument("--stream", action="store_true",
                   help="use the streaming path (one AR candidate, HiFi-GAN decoder from hifidecoder.pth; no "
                        "CLVP ranking, no diffusion) and report the time to first audio; writes the same WAV")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; as `bench --threads`)")
    add_voice_args(p)
    add_generation_args(p)
    add_device_args(p)
    add_models_dir_arg(p)
    p.set_defaults(func=run)


def output_paths(output: str, k: int) -> list[str]:
    """The files of ``k`` candidates: ``output`` itself for one, else ``NAME_1.EXT``, ``NAME_2.EXT``, ..."""
    if k == 1:
        return [output]
    from pathlib import Path

    p = Path(output)  # the stem of the file name only: a dot in a folder name is not an extension
    return [str(p.with_name(f"{p.stem}_{i + 1}{p.suffix}")) for i in range(k)]


def run(args: argparse.Namespace) -> int:
    from tortoise_xpu.cli.synth import StageProgress, build_tts, resolve_seed, voice_inputs
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.pipeline.presets import preset_settings
    from tortoise_xpu.text.split import speakable_chunks, split_and_recombine_text

    text = read_text_input(args.text, args.file)
    if not text.strip():
        raise UserError("the text is empty")
    if len(text) > SPEAK_MAX_CHARS:
        raise UserError(f"the text has {len(text)} characters; `speak` takes up to {SPEAK_MAX_CHARS}. "
                        f"For long texts use: tortoise-xpu read FILE -o OUTPUT_DIR (resumable, one WAV per chunk)")
    settings = preset_settings(args.preset, **tuning_overrides(args))
    if args.candidates < 1:
        raise UserError("--candidates must be at least 1")
    if args.force_tokens is not None and not 1 <= args.force_tokens <= 600:
        raise UserError("--force-tokens must be in 1..600")
    from tortoise_xpu.audio.io import STDOUT, check_audio_output

    if args.output == STDOUT and (args.candidates > 1 or args.json):
        raise UserError("-o - writes the audio to standard output: it takes one candidate and no --json")
    for path in output_paths(args.output, args.candidates):
        check_audio_output(path)  # a bad -o (name, folder, device node, extension) fails now, not after synthesis
    if args.stream and args.candidates != 1:
        raise UserError("--stream makes one candidate; drop --candidates")
    seed = resolve_seed(args.seed)
    chunks = [text] if len(text) <= 300 else split_and_recombine_text(text)
    if not chunks:
        raise UserError("the text has nothing speakable in it")
    # A chunk of only emoji or symbols is dropped with a warning (tts would refuse the whole text for it).
    chunks = speakable_chunks(chunks, source="the text")
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    progress = StageProgress(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    tts = build_tts(args, progress)

    from tortoise_xpu.audio.io import write_audio
    from tortoise_xpu.audio.rates import SAMPLE_RATE

    if args.stream:
        return run_stream(args, tts, chunks, settings, seed, progress)
    from tortoise_xpu.voices import resolve_voice, voice_search_path

    resolve_voice(args.voice, voice_search_path(args.voices_dir))  # a bad voice fails before any loading
    with progress.running():
        load_start = time.perf_counter()
        names = ["autoregressive", "clvp", "diffusion", "vocoder"] + (["rlg_auto", "rlg_diffuser"]
                                                                      if args.voice == "random" else [])
        tts.load_models(names, candidates=int(settings["num_autoregressive_samples"]))
        load_s = time.perf_counter() - load_start
        voice = voice_inputs(tts, args.voice, args.voices_dir, seed)
        per_candidate: list[list[torch.Tensor]] = [[] for _ in range(args.candidates)]
        timings: dict[str, float] = {}
        for chunk in chunks:
            out = tts.tts(chunk, k=args.candidates, seed=seed, force_tokens=args.force_tokens, **voice, **settings)
            for i, wav in enumerate(out if isinstance(out, list) else [out]):
                per_candidate[i].append(wav)
            for stage, sec in tts.last_report.stages.items():
                timings[stage] = timings.get(stage, 0.0) + sec
    paths = output_paths(args.output, args.candidates)
    for path, parts in zip(paths, per_candidate):
        write_audio(path, torch.cat([w.reshape(1, -1) for w in parts], dim=-1), SAMPLE_RATE, float32=args.float32)
    seconds = sum(w.shape[-1] for w in per_candidate[0]) / SAMPLE_RATE
    summary = {"outputs": paths, "seed": seed, "seconds": round(seconds, 3), "device": str(tts.device),
               "policy": tts.last_report.policy, "stages": {k: round(v, 4) for k, v in timings.items()},
               "chunks": len(chunks), "checkpoints": tts.checkpoint_overrides(), "model_load_s": round(load_s, 3),
               "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"wrote {', '.join(paths)} ({seconds:.2f} s of audio, seed {seed}, "
              f"{sum(timings.values()):.1f} s on {tts.device})", file=sys.stderr)
    return 0


def run_stream(args: argparse.Namespace, tts, chunks: list[str], settings: dict, seed: int, progress) -> int:
    """``speak --stream``: the text through ``tts_stream``, chunk by chunk, into one WAV."""
    import torch

    from tortoise_xpu.audio.io import write_audio
    from tortoise_xpu.audio.rates import SAMPLE_RATE
    from tortoise_xpu.cli.synth import voice_inputs
    from tortoise_xpu.pipeline.stream import StreamStats

    with progress.running():
        voice = voice_inputs(tts, args.voice, args.voices_dir, seed)
        load_start = time.perf_counter()
        tts.load_models(["autoregressive", "hifidecoder"] + (["rlg_auto"] if args.voice == "random" else []),
                        candidates=1)  # before the clock starts: time to first audio is synthesis time
        load_s = time.perf_counter() - load_start
        parts: list[torch.Tensor] = []
        timings: dict[str, float] = {}
        first_audio = None
        start = time.perf_counter()
        for chunk in chunks:
            stats = StreamStats()
            for audio in tts.tts_stream(chunk, seed=seed, force_tokens=args.force_tokens, stats=stats,
                                        **voice, **settings):
                if first_audio is None:
                    first_audio = time.perf_counter() - start
                parts.append(audio)
            for stage, sec in tts.last_report.stages.items():
                timings[stage] = timings.get(stage, 0.0) + sec
    total_s = time.perf_counter() - start
    wav = torch.cat(parts) if parts else torch.zeros(0)
    write_audio(args.output, wav.reshape(1, -1), SAMPLE_RATE, float32=args.float32)
    seconds = wav.numel() / SAMPLE_RATE
    summary = {"outputs": [args.output], "seed": seed, "seconds": round(seconds, 3), "device": str(tts.device),
               "stream": True, "first_audio_s": round(first_audio, 4) if first_audio is not None else None,
               "stream_chunks": len(parts), "policy": tts.last_report.policy,
               "stages": {k: round(v, 4) for k, v in timings.items()}, "chunks": len(chunks),
               "checkpoints": tts.checkpoint_overrides(),
               "model_load_s": round(load_s, 3), "threads": torch.get_num_threads(),
               "total_s": round(total_s, 4), "rtf": round(total_s / seconds, 4) if seconds else None}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"first audio after {first_audio or 0.0:.2f} s; wrote {args.output} ({seconds:.2f} s of audio in "
              f"{len(parts)} stream chunks, seed {seed}, {sum(timings.values()):.1f} s on {tts.device})",
              file=sys.stderr)
    return 0
