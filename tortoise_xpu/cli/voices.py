"""``tortoise-xpu voices``: the voices found in the search path, with clip counts and durations."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("voices", help="list the available voices",
                       description="List voice folders found in --voices-dir, $TORTOISE_XPU_VOICES and the user "
                                   "voices folder, with their clip counts and total duration.")
    p.add_argument("-V", "--voices-dir", action="append", default=[], help="extra folder of voices (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    from tortoise_xpu.voices import AUDIO_SUFFIXES, LATENT_SUFFIXES, list_voices, voice_search_path

    dirs = voice_search_path(args.voices_dir)
    rows = []
    for name, folder in list_voices(dirs).items():
        clips = [p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES]
        seconds = 0.0
        for c in clips:
            try:
                info = sf.info(str(c))
                seconds += info.frames / info.samplerate
            except Exception:  # unreadable clips are reported by the commands that use them
                pass
        has_latents = any(p.suffix.lower() in LATENT_SUFFIXES for p in folder.iterdir())
        rows.append({"name": name, "clips": len(clips), "seconds": round(seconds, 2), "latents": has_latents,
                     "path": str(folder)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print("no voices found in: " + ", ".join(str(d) for d in dirs)
                      + "\n('random' always works; add folders of clips with --voices-dir or $TORTOISE_XPU_VOICES)")
        return 0
    table = Table(title="voices")
    for col in ("name", "clips", "seconds", "latents", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r["clips"]), f"{r['seconds']:.1f}", "yes" if r["latents"] else "", r["path"])
    console.print(table)
    return 0
