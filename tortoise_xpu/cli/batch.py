"""``tortoise-xpu batch``: many texts (one JSON object a line) into one folder, resumable, on a cluster or not.

A line: ``{"id": "intro", "text": "...", "voice": "tom", "preset": "fast", "seed": 7, "output": "intro.wav"}``;
only ``id`` and ``text`` are required (voice: ``--voice``; preset: ``--preset``; seed: ``--seed`` or the
folder's; output: ``ID.wav``).  Each job's text is split like ``read``'s and its chunks, the unit of
work, go to ``OUTPUT/parts/ID/chunk_NNNN.wav``; the job's file is written once all its chunks are.
Chunk seeds are ``chunk_seed(job seed, chunk index, take)``, so a one-line batch equals ``read``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass

from tortoise_xpu.cli.common import tuning_overrides
from tortoise_xpu.cli.longjobs import add_job_args, parse_text_split

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FIELDS = {"id", "text", "voice", "preset", "seed", "output"}
MAX_JOBS = 100_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="speak many texts from a JSONL file into a folder (resumable, cluster-ready)",
                       description="Each line of JOBS is a JSON object: id and text (required), voice, preset, "
                                   "seed, output (a .wav name; default ID.wav). Chunks go to OUTPUT/parts/ID/, "
                                   "each job's WAV to OUTPUT/. Re-running resumes; --cluster spreads the chunks "
                                   "over a Ray cluster.")
    p.add_argument("jobs", help="the JSONL file of jobs")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--regenerate", default="", help="job ids whose chunks get a new take, e.g. intro,ch2")
    add_job_args(p)
    p.set_defaults(func=run, preset="standard")


@dataclass(frozen=True)
class Job:
    """One validated line of the jobs file."""

    line: int
    id: str
    text: str
    voice: str | None
    preset: str | None
    seed: int | None
    output: str


def parse_jobs(raw: str, source: str) -> list[Job]:
    """Validate every line; the first bad one is a one-line ``UserError`` naming ``source:LINE``."""
    import json

    from tortoise_xpu.errors import UserError
    from tortoise_xpu.pipeline.presets import PRESETS
    from tortoise_xpu.pipeline.validate import check_seed

    jobs: list[Job] = []
    ids: dict[str, int] = {}
    outputs: dict[str, int] = {}
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not a JSON object ({' '.join(str(exc).split())})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: each line must be a JSON object like "
                            f"{{\"id\": \"intro\", \"text\": \"Hello.\"}}")
        unknown = sorted(set(obj) - _FIELDS)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
        jid = obj.get("id")
        if not isinstance(jid, str) or not _ID.match(jid):
            raise UserError(f"{where}: \"id\" must be a name of letters, digits, '.', '_' or '-' (at most 100, "
                            f"not starting with '.' or '-'), got {jid!r}")
        if jid in ids:
            raise UserError(f"{where}: id {jid!r} is already used on line {ids[jid]}")
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: \"text\" must be a non-empty string")
        voice = obj.get("voice")
        if voice is not None and (not isinstance(voice, str) or not voice.strip()):
            raise UserError(f"{where}: \"voice\" must be a voice name or path")
        preset = obj.get("preset")
        if preset is not None and preset not in PRESETS:
            raise UserError(f"{where}: unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        try:
            seed = check_seed(obj.get("seed"))
        except UserError as exc:
            raise UserError(f"{where}: \"seed\" {str(exc).removeprefix('seed ')}") from None  # "seed must be ..."
        output = obj.get("output", f"{jid}.wav")
        if not isinstance(output, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,195}\.wav$", output):
            raise UserError(f"{where}: \"output\" must be a plain file name ending in .wav (no folders), "
                            f"got {output!r}")
        if output in outputs:
            raise UserError(f"{where}: output {output!r} is already written by line {outputs[output]}")
        ids[jid], outputs[output] = n, n
        jobs.append(Job(n, jid, text, voice, preset, seed, output))
        if len(jobs) > MAX_JOBS:
            raise UserError(f"{source}: more than {MAX_JOBS} jobs; split the file")
    if not jobs:
        raise UserError(f"{source} holds no jobs (one JSON object a line)")
    return jobs


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tortoise_xpu.audio.io import load_audio, save_wav
    from tortoise_xpu.audio.rates import SAMPLE_RATE
    from tortoise_xpu.cli.common import decode_text, read_input_file, sanitize_text
    from tortoise_xpu.cli.longjobs import (JobProgress, check_cluster, interrupted, job_models, make_executor,
                                           print_summary, summary, wav_joiner)
    from tortoise_xpu.cli.synth import resolve_seed
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.pipeline.chunk_synthesis import load_voice
    from tortoise_xpu.pipeline.longform import Unit, chunk_filename, load_state, run_units, settings_key
    from tortoise_xpu.pipeline.presets import preset_settings
    from tortoise_xpu.text.split import split_for_reading

    target = check_cluster(args)
    raw = decode_text(read_input_file(args.jobs, "jobs file"))
    jobs = parse_jobs(raw, args.jobs)
    desired, maximum = parse_text_split(args.text_split)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} exists and is not a folder")
    regenerate = {x.strip() for x in args.regenerate.split(",") if x.strip()}
    unknown = sorted(regenerate - {j.id for j in jobs})
    if unknown:
        raise UserError(f"--regenerate names job(s) {', '.join(unknown)} that are not in {args.jobs}")
    default_seed = args.seed
    if default_seed is None and out.is_dir():
        default_seed = (load_state(out) or {}).get("seed")
    default_seed = resolve_seed(default_seed)
    overrides = tuning_overrides(args)
    table: dict[str, dict] = {}
    voices: dict[str, tuple] = {}
    materials: dict[str, object] = {}
    units: list[Unit] = []
    outputs: dict[str, list[str]] = {}
    for job in jobs:
        voice = job.voice or args.voice
        settings = {**preset_settings(job.preset or args.preset, **overrides), "voice": voice,
                    "force_tokens": args.force_tokens}
        key = settings_key(settings)
        table[key] = settings
        seed = job.seed if job.seed is not None else default_seed
        if voice not in materials:
            try:
                materials[voice] = load_voice(voice, args.voices_dir)
            except UserError as exc:
                raise UserError(f"{args.jobs}:{job.line}: {exc}") from None
        vkey = f"{voice}#{seed}"
        voices[vkey] = (materials[voice], seed)
        chunks = split_for_reading(sanitize_text(job.text, f"{args.jobs}:{job.line}"), desired, maximum)
        if not chunks:
            raise UserError(f"{args.jobs}:{job.line}: the text has nothing speakable in it")
        job_units = [Unit(job.id, i, c, f"parts/{job.id}/{chunk_filename(i)}", seed, key, vkey)
                     for i, c in enumerate(chunks)]
        units += job_units
        outputs[job.output] = [u.key for u in job_units]
    redo = {u.key for u in units if u.job in regenerate}
    models = job_models(args)
    progress = JobProgress(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    subtype = "FLOAT" if args.float32 else "PCM_16"
    # stdout carries the --json summary only (Ray's driver prints its notices there).
    with progress.running(), contextlib.redirect_stdout(sys.stderr):
        try:
            result = run_units(out, units, settings_table=table, voices=voices,
                               executor=make_executor(args, target, models, progress),
                               save_wav=lambda p, w: save_wav(p, w, SAMPLE_RATE, subtype=subtype),
                               load_wav=lambda p: load_audio(p, SAMPLE_RATE, check=False), outputs=outputs,
                               models=models, kind="batch", job_seed=default_seed, regenerate=redo,
                               restart=args.restart, on_event=progress.event,
                               extra={"jobs": [{"id": j.id, "output": j.output, "line": j.line} for j in jobs]},
                               join=wav_joiner(subtype))
        except KeyboardInterrupt:
            return interrupted(out)
    data = summary(result, len(units), default_seed, {
        "folder": str(out), "jobs": len(jobs), "outputs": sorted(str(p) for p in result.outputs.values()),
        "cluster": args.cluster})
    print_summary(args, data, f"{out}: {len(jobs)} job(s), {len(result.synthesised)} chunk(s) synthesised, "
                              f"{len(result.skipped)} already done; {len(result.outputs)} output file(s)")
    return 0
