"""``tortoise-xpu latents``: encode a voice once into a conditioning-latents file."""

from __future__ import annotations

import argparse
import sys

from tortoise_xpu.cli.common import add_device_args, add_models_dir_arg
from tortoise_xpu.pipeline.validate import seed_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latents", help="save a voice's conditioning latents to a .pth file",
                       description="Compute the (AR (1, 1024), diffusion (1, 2048)) conditioning latents of VOICE "
                                   "(a voice name, a folder, or clip files) and write them to OUTPUT. Put the file "
                                   "alone in a voice folder to use it as a voice without re-encoding the clips.")
    p.add_argument("voice", nargs="+", help="voice name, folder, or clip files (several are pooled)")
    p.add_argument("-o", "--output", required=True, help="the .pth file to write")
    p.add_argument("-V", "--voices-dir", action="append", default=[], help="extra folder of voices")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the 6-second crop of long clips (default 0)")
    add_device_args(p)
    add_models_dir_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from tortoise_xpu.cli.synth import build_tts
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.audio.rates import AR_SAMPLE_RATE
    from tortoise_xpu.voices import (average_latents, load_voice_clips, resolve_voice, save_latents,
                                     voice_search_path)

    from tortoise_xpu.fileio import check_writable
    from tortoise_xpu.voices import LATENT_SUFFIXES

    # the output is checked before any clip is read or model loaded
    if check_writable(args.output).suffix.lower() not in LATENT_SUFFIXES:
        raise UserError(f"name the latents file {args.output}.pth: voices are found by the .pth extension")
    dirs = voice_search_path(args.voices_dir)
    clips, latents = [], []
    for spec in args.voice:
        v = resolve_voice(spec, dirs)
        if v.random:
            raise UserError("'random' has no clips to encode; name a voice folder or clip files")
        clips += v.clips
        latents += v.latents
    tts = build_tts(args)
    if clips:
        wavs = load_voice_clips(clips, AR_SAMPLE_RATE)
        latents.append(tts.get_conditioning_latents(wavs, generator=torch.Generator().manual_seed(args.seed)))
    save_latents(args.output, *average_latents(latents))
    print(f"wrote {args.output} (from {len(clips)} clip(s){' and saved latents' if len(latents) > 1 else ''})",
          file=sys.stderr)
    return 0
