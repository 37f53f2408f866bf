"""Every bad-input and failure case of issue 7, what the user sees, and helpers to test it.

``CASES`` is the single source of docs/errors.md: each test in tests/test_errors_*.py
names its case id and asserts the case's ``exit`` code and ``expect`` patterns against
what the CLI (or the API) really printed.  ``tests/test_errors_runtime.py`` checks that
the table in docs/errors.md equals :func:`render_table` and that every case id is used by
a test.  After editing the table, regenerate the doc with::

    python -m tests.error_cases        # rewrites the generated part of docs/errors.md
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
BEGIN = "<!-- generated from tests/error_cases.py: python -m tests.error_cases -->"
END = "<!-- end of generated table -->"

# Tiny generation settings: the few tests that run real (tiny random) models stay fast.
TINY = ["--preset", "ultra_fast", "--num-autoregressive-samples", "2", "--diffusion-iterations", "2",
        "--max-mel-tokens", "8", "--device", "cpu", "-q"]


@dataclass(frozen=True)
class Case:
    """One case: what goes in, what happens, the exit code, and what the user reads."""

    id: str
    area: str
    given: str
    outcome: str                 # refused / cleaned / accepted / warned / handled
    exit: int | None             # the CLI exit code (None where the case is an API behaviour)
    shows: str                   # the message (or result) as the user sees it, abridged
    expect: tuple[str, ...] = ()  # regexes the message must match


def _c(id, area, given, outcome, exit, shows, *expect):
    return Case(id, area, given, outcome, exit, shows, tuple(expect))


TEXT, AUDIO, ASSETS, RUNTIME = "Text", "Audio (voice clips)", "Assets and files", "Runtime"
LONGFORM = "Long-form jobs (read, batch, --cluster)"
SETTINGS = "Settings and output files"

_CASES = [
    # ---------------------------------------------------------------------------------- text
    _c("text.empty", TEXT, "empty text (`speak \"\"`, an empty `-f` file, an empty `read` file)", "refused", 2,
       "error: the text is empty · `read`: error: FILE has nothing speakable in it",
       r"the text is empty|nothing speakable"),
    _c("text.whitespace", TEXT, "only spaces, tabs and newlines", "refused", 2,
       "error: the text is empty", r"the text is empty"),
    _c("text.brackets_only", TEXT, "only a redaction prompt: `[I am really sad]`", "refused", 2,
       "error: all of the text is inside [brackets], which steer the voice but are cut from the audio: nothing "
       "would be spoken. Put the words to say outside the brackets, or turn redaction off (--disable-redaction) "
       "to read them aloud", r"inside \[brackets\]", r"nothing would be spoken", r"--disable-redaction"),
    _c("text.unbalanced_brackets", TEXT, "unbalanced brackets: `hello [there`, `hello] there`", "refused", 2,
       "error: '[' is never closed with ']': every redaction bracket needs a closing one (to read brackets aloud "
       "instead, turn redaction off: --disable-redaction) · error: ']' at character 6 has no matching '['",
       r"never closed|no matching '\['", r"--disable-redaction"),
    _c("text.nested_brackets", TEXT, "nested brackets: `[a [b] c] d`", "refused", 2,
       "error: nested '[' at character 4: redaction brackets cannot be nested (...)", r"cannot be nested"),
    _c("text.speak_too_long", TEXT, "1 MB of text to `speak` (anything over 2000 characters)", "refused", 2,
       "error: the text has 1000000 characters; `speak` takes up to 2000. For long texts use: tortoise-xpu read "
       "FILE -o OUTPUT_DIR (resumable, one WAV per chunk)", r"takes up to 2000", r"tortoise-xpu read"),
    _c("text.speak_split", TEXT, "300 to 2000 characters to `speak`", "accepted", 0,
       "split at sentence ends into chunks of at most 300 characters, spoken in turn and joined into one WAV"),
    _c("text.too_many_tokens", TEXT, "a short text that cleans into more tokens than one AR pass reads "
       "(e.g. 240 CJK characters, 300 characters of digits)", "refused", 2,
       "error: the text is 900 tokens long but the model reads at most 401 tokens at a time (...): split it "
       "with '|' between the parts, or use `tortoise-xpu read` (...)", r"tokens long", r"tortoise-xpu read"),
    _c("text.emoji_only", TEXT, "only emoji / symbols: `😀🎉`", "refused", 2,
       "error: the text is empty after cleaning: nothing to say ('😀🎉' has no letters or digits once symbols and "
       "emoji are dropped)", r"empty after cleaning"),
    _c("text.emoji_mixed", TEXT, "emoji between words: `good 😀 morning`", "cleaned", 0,
       "emoji have no spoken form and are dropped; the words are spoken"),
    _c("text.cjk", TEXT, "Chinese / Japanese / Korean: `你好世界`", "cleaned", 0,
       "transliterated to Latin letters (`ni hao shi jie`) like every non-ASCII letter: the checkpoints "
       "read English only, so expect an English-accented romanisation"),
    _c("text.rtl", TEXT, "right-to-left scripts and bidi marks: `שלום`, `مرحبا`, U+202E", "cleaned", 0,
       "transliterated to Latin letters; invisible direction marks are dropped"),
    _c("text.control_chars", TEXT, "control characters in text: `hello\\x00world\\x07`, a lone surrogate "
       "from a non-UTF-8 argv", "cleaned", 0, "each becomes a space (the tokenizer would read `[UNK]`)"),
    _c("text.control_only", TEXT, "only control characters", "refused", 2,
       "error: the text holds only control characters: nothing to say", r"only control characters"),
    _c("text.binary_file", TEXT, "a binary file given as text (`-f song.mp3`)", "refused", 2,
       "error: FILE does not look like text: 110 of 512 characters are control characters (a binary file?)",
       r"does not look like text"),
    _c("text.utf16_file", TEXT, "a text file in UTF-16 (with or without BOM) or UTF-32 with BOM", "accepted", 0,
       "decoded; the words are spoken"),
    _c("text.latin1_file", TEXT, "a text file in Latin-1 / Windows-1252", "accepted", 0,
       "decoded (Windows-1252 first, so curly quotes and dashes survive); the words are spoken"),
    _c("text.file_missing", TEXT, "`-f` naming a missing file or a folder", "refused", 2,
       "error: text file not found: FILE · error: FILE is a folder, not a text file",
       r"text file not found|is a folder"),
    # ---------------------------------------------------------------------------------- audio
    _c("audio.missing", AUDIO, "`--voice clip.wav` that does not exist", "refused", 2,
       "error: clip.wav: no such file or voice folder", r"no such file"),
    _c("audio.directory", AUDIO, "a folder where a clip is expected (`detect DIR`), or a voice folder "
       "without clips", "refused", 2,
       "error: DIR is a folder, not an audio file · error: voice folder DIR has no audio clips (...) and no "
       "latents file", r"is a folder, not an audio file|has no audio clips"),
    _c("audio.zero_length", AUDIO, "a zero-length file", "refused", 2,
       "error: FILE: the file is empty (0 bytes)", r"empty \(0 bytes\)"),
    _c("audio.corrupt_header", AUDIO, "a WAV with a corrupt header", "refused", 2,
       "error: FILE: not a readable audio file (... Malformed 'fmt ' chunk.)", r"not a readable audio file"),
    _c("audio.not_audio", AUDIO, "a text file renamed `.wav`", "refused", 2,
       "error: FILE: not a readable audio file (... Format not recognised.)", r"not a readable audio file"),
    _c("audio.silent", AUDIO, "a silent clip (digital silence or below -80 dBFS)", "refused", 2,
       "error: FILE: the clip is silent (digital silence); record the voice louder", r"is silent"),
    _c("audio.clipped", AUDIO, "a clipped clip (over 0.1 % of samples at full scale)", "warned", 0,
       "warning: FILE: clipped (51840 samples, 78.4 %, at full scale); the clip is used", r"clipped"),
    _c("audio.nan_inf", AUDIO, "NaN or infinite samples (float WAV)", "refused", 2,
       "error: FILE: 1 of 66150 samples are NaN or infinite", r"NaN or infinite"),
    _c("audio.rates", AUDIO, "8 kHz, 48 kHz and 96 kHz clips", "accepted", 0,
       "resampled to 22.05 kHz (and 24 kHz for the diffusion latent)"),
    _c("audio.channels", AUDIO, "stereo and 6-channel clips", "accepted", 0,
       "channels averaged to mono"),
    _c("audio.long_clip", AUDIO, "a 10-minute clip", "warned", 0,
       "warning: FILE: only the first 30 s of 600 s are used (only those are read from disk)", r"first 30 s"),
    _c("audio.no_usable_clips", AUDIO, "a voice folder whose clips are all unusable", "refused", 2,
       "error: none of the 2 voice clips is usable: A: the clip is silent (...); B: not a readable audio file "
       "(...) · with some usable clips: warning: skipping B: ... and the rest are used",
       r"none of the 2 voice clips is usable"),
    _c("audio.mixed_formats", AUDIO, "a voice folder mixing wav, flac, ogg (and mp3 where libsndfile has it)",
       "accepted", 0, "every clip is read"),
    # ---------------------------------------------------------------------------------- assets
    _c("assets.unknown_voice", ASSETS, "`--voice tomm`", "refused", 2,
       "error: unknown voice 'tomm' (did you mean: tom?; searched DIRS; 'random' needs no files)",
       r"unknown voice 'tomm'", r"did you mean: tom"),
    _c("assets.unknown_preset", ASSETS, "`--preset nope` (API: `preset_settings('nope')`)", "refused", 2,
       "tortoise-xpu speak: error: argument -p/--preset: invalid choice: 'nope' (choose from 'ultra_fast', "
       "'fast', 'standard', 'high_quality', ...) (see tortoise-xpu speak --help)",
       r"invalid choice: 'nope'", r"ultra_fast"),
    _c("assets.unknown_sampler", ASSETS, "`--sampler euler` (API: `tts(sampler='euler')`)", "refused", 2,
       "tortoise-xpu speak: error: argument --sampler: invalid choice: 'euler' (choose from 'p', 'ddim', "
       "'dpm++2m') (...)", r"invalid choice: 'euler'", r"ddim"),
    _c("assets.unknown_device", ASSETS, "`--device tpu`", "refused", 2,
       "error: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N, rocm, rocm:N, xpu, xpu:N, mps, directml, "
       "directml:N, dml, dml:N", r"unknown device 'tpu'", r"valid: auto, cpu"),
    _c("assets.unavailable_backend", ASSETS, "a backend this machine cannot run (`--device xpu` on a CPU build)",
       "refused", 2,
       "error: device 'xpu' is not available: this torch build (2.x+cpu) has no XPU support; install torch "
       "from the PyTorch XPU wheel index", r"is not available: ", r"install"),
    _c("assets.missing_model", ASSETS, "a model file missing from the models folder (offline)", "refused", 2,
       "error: rlg_auto.pth is not in DIR and could not be downloaded (...). Missing there: rlg_auto.pth (every "
       "missing core file). Offline? Run `tortoise-xpu models download --models-dir DIR` on a machine with "
       "internet (...)", r"is not in", r"Missing there: ", r"tortoise-xpu models download"),
    _c("assets.truncated_checkpoint", ASSETS, "a truncated checkpoint", "refused", 2,
       "error: autoregressive.pth is truncated or corrupt (...); fetch it again", r"truncated or corrupt"),
    _c("assets.wrong_model", ASSETS, "the checkpoint of another model under this model's name", "refused", 2,
       "error: autoregressive.pth does not fit UnifiedVoice (autoregressive.pth): 40 missing keys (...), 30 "
       "unexpected keys (...); this looks like clvp2.pth, not autoregressive.pth",
       r"does not fit", r"missing key", r"looks like clvp2\.pth"),
    _c("assets.wrong_shape", ASSETS, "a checkpoint of the right model with other shapes", "refused", 2,
       "error: autoregressive.pth does not fit UnifiedVoice (...): N shape mismatches (KEY: file (...) vs model "
       "(...), ...); every key is there but shapes differ, so the file was made with another configuration",
       r"shape mismatch", r"file \(\d+"),
    _c("assets.checksum_mismatch", ASSETS, "a download whose sha256 differs / a file on disk that fails "
       "`models verify`", "refused", 2,
       "download: tokenizer.json: FAILED: checksum mismatch ... (nothing kept) · verify (exit 1): sha256 "
       "1a2b… differs from the manifest's 3c4d…; fetch it again: tortoise-xpu models download NAME --force",
       r"checksum mismatch|differs"),
    _c("assets.malicious_pth", ASSETS, "a `.pth` that would run code when unpickled (model file or voice "
       "latents)", "refused", 2,
       "error: autoregressive.pth was refused as unsafe: it holds more than tensors (Unsupported global: GLOBAL "
       "io.open), and unpickling that could run code; only plain weight files are accepted · a latents file in the "
       "pre-1.6 pickle format: error: FILE is not a valid latents file (not a torch zip archive). The code never "
       "runs (weights-only loading; torch's advice to turn that off is never shown)",
       r"refused as unsafe|not a valid latents file"),
    _c("assets.latents_shape", ASSETS, "a latents `.pth` of the wrong shapes", "refused", 2,
       "error: conditioning latents of widths 7 and 9 do not fit these models (64 and 128): they were made "
       "with other model files · not (1, D) tensors: error: FILE has latents of shapes (3, 5) and (1, 9); "
       "expected (1, 1024) and (1, 2048)", r"latents of (widths 7 and 9|shapes \(3, 5\))"),
    _c("assets.output_is_folder", ASSETS, "`-o` naming an existing folder", "refused", 2,
       "error: cannot write DIR: it is a folder; give a file name (checked before any synthesis)",
       r"is a folder"),
    # ---------------------------------------------------------------------------------- runtime
    _c("runtime.oom_backoff", RUNTIME, "out of memory in AR sampling (the batch is too big)", "handled", 0,
       "the batch is halved and only the failed batch redone; the run ends with every candidate, identical to "
       "a run without the OOM"),
    _c("runtime.oom_batch1", RUNTIME, "out of memory even at batch size 1", "refused", 1,
       "error: out of memory on cpu even at batch size 1 (...); try --low-vram (one model on the device at a "
       "time), --dtype float16 or bfloat16, a smaller --batch-size for the other stages, or --device cpu",
       r"out of memory", r"--low-vram", r"--device cpu"),
    _c("runtime.oom_other_stage", RUNTIME, "out of memory in diffusion / vocoder / CLVP", "refused", 1,
       "error: out of memory on DEVICE during the diffusion stage (...); try --low-vram (...) or --device cpu",
       r"out of memory", r"during the diffusion stage", r"--low-vram"),
    _c("runtime.device_error", RUNTIME, "a device / driver failure mid-run", "refused", 1,
       "error: the device failed on DEVICE during the ar stage: <driver message>. Run again (the seed makes it "
       "repeatable); if it persists update the GPU driver, run `tortoise-xpu doctor`, or use --device cpu",
       r"the device failed", r"during the ar stage", r"--device cpu"),
    _c("runtime.ctrl_c_read", RUNTIME, "Ctrl-C during `read`", "handled", 130,
       "interrupted: finished chunks are kept in DIR; run the same command again to resume — finished chunk "
       "files are never rewritten (same sha256), the manifest says which are pending",
       r"interrupted", r"resume"),
    _c("runtime.read_lock", RUNTIME, "two `read` runs on the same folder at once", "refused", 2,
       "error: DIR is in use by another tortoise-xpu run (pid N); wait for it to finish or remove "
       "DIR/.tortoise-xpu.lock if it is not running", r"in use by another tortoise-xpu run \(pid \d+\)"),
    _c("runtime.disk_full", RUNTIME, "disk full while writing a WAV, a chunk, the manifest or latents", "refused",
       1, "error: cannot write FILE: No space left on device; free some space or write somewhere else (nothing "
       "was left under that name)", r"cannot write", r"(?i)no space left"),
    # ---------------------------------------------------------- the models folder and its files (issue 16)
    _c("assets.models_dir_not_a_folder", ASSETS, "`$TORTOISE_XPU_MODELS` or `--models-dir` naming a file (or a "
       "path under one), for `speak`, `models verify` and every other command", "refused", 2,
       "error: models folder FILE is a file; point $TORTOISE_XPU_MODELS at a folder",
       r"models folder .* is a file", r"point (\$TORTOISE_XPU_MODELS|--models-dir) at a folder"),
    _c("assets.verify_bad_mel_norms", ASSETS, "`models verify` on a mel_norms.pth that is not 80 finite floats "
       "(wrong shape, integers, NaN)", "refused", 1,
       "mel_norms.pth: failed: mel_norms.pth holds a float32 tensor of shape (79,); expected 80 floats, one per "
       "mel band", r"mel_norms\.pth holds", r"expected 80"),
    _c("assets.verify_bad_tokenizer", ASSETS, "`models verify` on a tokenizer.json that does not parse as a "
       "tokenizer", "refused", 1,
       "tokenizer.json: failed: tokenizer.json is not valid JSON: (...)",
       r"tokenizer\.json (is not valid JSON|has no 'model' section|does not load as a tokenizer)"),
    # ------------------------------------------------------------- long-form jobs (read, batch, --cluster)
    _c("longform.settings_changed", LONGFORM, "`read`/`batch` run again on a folder with other settings, seed, "
       "voice or model files than its finished chunks were made with", "warned", 0,
       "warning: 4 finished chunk(s) were made with other settings (temperature 0.8→0.7); they are kept and the "
       "new settings apply to the 0 chunk(s) still to make; add --restart to make them again with the new "
       "settings", r"finished chunk\(s\) were made with other settings", r"kept", r"--restart"),
    _c("longform.manifest_unknown", LONGFORM, "an output folder whose manifest.json is unreadable, not ours, or "
       "of an unknown version (version 1 is migrated: its chunks are kept)", "refused", 2,
       "error: DIR/manifest.json has manifest version 99, which this tortoise-xpu does not know (it writes "
       "version 2); move it away to start the folder afresh", r"manifest", r"move it away"),
    _c("batch.bad_line", LONGFORM, "a `batch` jobs line that is not a JSON object, lacks id/text, has an unknown "
       "field, preset, bad seed or output name, or repeats an id or output", "refused", 2,
       "error: jobs.jsonl:3: \"seed\" must be an integer 0 <= seed < 2**63; got -1 · error: jobs.jsonl:2: id "
       "'a' is already used on line 1", r"^error: \S+:\d+: "),
    _c("batch.empty", LONGFORM, "a `batch` jobs file with no jobs (empty, blank lines only)", "refused", 2,
       "error: jobs.jsonl holds no jobs (one JSON object a line)", r"holds no jobs"),
    _c("cluster.no_ray", LONGFORM, "`--cluster` without Ray installed", "refused", 2,
       "error: --cluster needs Ray, which is not installed; install it with: pip install "
       "'tortoise-xpu[cluster]'  (or: pip install 'ray[client]')", r"needs Ray", r"pip install"),
    _c("cluster.bad_value", LONGFORM, "`--cluster` with anything but auto, ray://HOST:PORT, local, local:N",
       "refused", 2, "error: --cluster takes auto, ray://HOST:PORT or local[:N]; got 'tcp://x'",
       r"--cluster takes auto, ray://HOST:PORT or local\[:N\]"),
    _c("cluster.unreachable", LONGFORM, "`--cluster auto` with no running cluster, or a `ray://` address that "
       "does not answer", "refused", 2,
       "error: cannot reach the running Ray cluster: <Ray's reason>; start one with `ray start --head` (or set "
       "RAY_ADDRESS), or run on this machine with --cluster local", r"cannot reach", r"--cluster local"),
    # ------------------------------------------------------------- issue 16: reliability (round 2)
    _c("text.unspeakable_chunk", TEXT, "a long run of emoji, `=` or `* ` between sentences (it becomes a chunk "
       "of its own that cleans to nothing), in `speak` or `read`", "warned", 0,
       "warning: skipping chunk 2 of 3 ('😀😀😀…'): nothing speakable after cleaning · the other chunks are "
       "spoken", r"skipping chunk \d+ of \d+", r"nothing speakable after cleaning"),
    _c("text.unspeakable_all", TEXT, "a long text whose every chunk cleans to nothing (only emoji / symbols)",
       "refused", 2, "error: the text is empty after cleaning: nothing to say (chunk 1 of 3: '😀😀😀…' has no "
       "letters or digits once symbols and emoji are dropped)", r"empty after cleaning", r"chunk 1 of \d+"),
    _c("text.api_not_str", TEXT, "API: `tts(None)`, bytes or a number as the text", "refused", None,
       "UserError: text must be a string; got NoneType", r"text must be a string"),
    _c("text.tokens_split", TEXT, "`text 'Dr. Smith paid $7.50.' --tokens --split`", "accepted", 0,
       "the cleaned text, its token ids and their count, then each chunk with its own ids"),
    _c("audio.huge_header", AUDIO, "a clip whose header promises more samples than can be read (a huge rate, "
       "length or channel count)", "refused", 2,
       "error: FILE: too long to read (... frames x N channels at R Hz is more than 67,108,864 samples); cut the "
       "part you need into its own file · error: FILE: 1000 channels; at most 64 are read",
       r"too long to read|channels; at most"),
    _c("audio.api_nan_clips", AUDIO, "API: `voice_samples` holding NaN or infinite samples (all-NaN clips), or "
       "integer tensors", "refused", None,
       "UserError: voice_samples[0] holds 22050 NaN or infinite values of 22050", r"NaN or infinite|floating point"),
    _c("assets.expanded_tensor", ASSETS, "a small `.pth` (latents or checkpoint) holding a stride-0 or "
       "overlapping view far larger than its storage (2 kB of storage viewed as 12 GB)", "refused", 2,
       "error: FILE was refused as unsafe: tensor [0] is a view of 1.9 GB (shape (1, 500000000), strides (0, 0)) "
       "over 2.0 kB of storage: an expanded or overlapping tensor ... · beyond the element cap: tensor [0] has "
       "3,000,000,000 elements (...). Nothing is copied: the process grows by under 150 MB",
       r"refused as unsafe", r"expanded or overlapping|elements"),
    _c("assets.zip_bomb", ASSETS, "a `.pth` whose archive entries are compressed far beyond what torch writes "
       "(a zip bomb), or would unpack beyond the limit of the file's kind", "refused", 2,
       "error: FILE was refused as unsafe: entry 'archive/data/0' is compressed 1029:1 (509.6 kB unpacking to "
       "512.0 MB), a zip bomb · latents: entry 'archive/data/0' would unpack to 512.0 MB (at most 16.0 MB)",
       r"refused as unsafe", r"zip bomb|would unpack"),
    _c("assets.latents_dtype", ASSETS, "latents of dtype int64, bool or complex; NaN or infinite latents (file, "
       "or `conditioning_latents` through the API)", "refused", 2,
       "error: FILE was refused as unsafe: tensor [0] has dtype int64; expected one of bfloat16, float16, float32, "
       "float64 · error: FILE was refused: tensor [0] holds NaN or infinite values",
       r"has dtype|NaN or infinite"),
    _c("assets.safetensors_lying", ASSETS, "a `.safetensors` whose header lies: offsets past the end, a shape "
       "that does not match its bytes, a huge shape, an unknown dtype, NaN weights", "refused", 2,
       "error: clvp2.safetensors is truncated or corrupt (entry 'w' has offsets 0..1099511627776 that do not fit "
       "its shape or the file); convert or fetch it again · error: clvp2.safetensors was refused as unsafe: "
       "tensor w has dtype C64", r"truncated or corrupt|refused"),
    _c("settings.seed_range", SETTINGS, "`--seed -1`, `--seed 18446744073709551616`, `--seed 1.5`; API "
       "`seed=1.5`, `seed=True`, `seed=-1`", "refused", 2,
       "tortoise-xpu speak: error: argument --seed: seed must be an integer 0 <= seed < 2**63; got -1 (see "
       "tortoise-xpu speak --help) · API: UserError: seed must be an integer 0 <= seed < 2**63; got float 1.5",
       r"seed must be an integer 0 <= seed < 2\*\*63|is not an integer"),
    _c("settings.knob_range", SETTINGS, "a knob out of range or not finite: `--diffusion-iterations 0`, "
       "`--temperature nan` / `inf`, `--length-penalty nan`, `--cond-free-k nan`, `--top-p 0`, `-k 0` (API: the "
       "same keywords, checked before any model loads)", "refused", 2,
       "tortoise-xpu speak: error: argument --temperature: temperature must be a finite number > 0 and <= 100 "
       "(AR sampling temperature); got nan (see tortoise-xpu speak --help)",
       r"must be (a finite number|an integer)|is not an integer"),
    _c("settings.output_not_regular", SETTINGS, "`-o` naming a device node (`/dev/null`), a FIFO or a socket",
       "refused", 2, "error: cannot write /dev/null: it exists and is a character device, not a regular file; "
       "choose another name (checked before any synthesis; never replaced)", r"not a regular file"),
    _c("settings.output_name", SETTINGS, "`-o` with a name over NAME_MAX (300 characters), a path over "
       "PATH_MAX, or bytes that are not valid in the filesystem encoding (non-UTF-8)", "refused", 2,
       "error: cannot write aaa…: the name aaa… is 304 bytes long; this filesystem allows 255 · error: cannot "
       "write b\\udcff.wav: the name is not valid utf-8 (a name in another encoding?); choose a name in plain text",
       r"bytes long; this filesystem allows|is not valid utf-8"),
    _c("settings.output_long_name", SETTINGS, "`-o` with a long name within NAME_MAX (240 characters)", "accepted",
       0, "written (the temporary file's name is bounded, so it fits as well)"),
    _c("settings.output_format", SETTINGS, "`-o out.mp3`, `out.flac`, `out.ogg`, `out.wav`", "accepted", 0,
       "encoded as the extension says (MP3 under .mp3, not WAV bytes)"),
    _c("settings.output_unknown_format", SETTINGS, "`-o out.xyz`, or a name without an extension", "refused", 2,
       "error: cannot tell the audio format from '.xyz': end the output name with .wav, .flac, .ogg, .opus, .mp3 or .pcm",
       r"cannot tell the audio format"),
    _c("settings.output_stdout", SETTINGS, "`-o -`", "accepted", 0,
       "the WAV goes to standard output, messages to standard error; with `-k 2` or `--json`: error: -o - writes "
       "the audio to standard output: it takes one candidate and no --json"),
    _c("settings.detect_some_bad", SETTINGS, "`detect good.wav bad.wav`", "refused", 2,
       "good.wav: 3.1% (likely not Tortoise) on standard output, then error: bad.wav: not a readable audio file "
       "(...); exit 2", r"^error: .*bad\.wav"),
]

CASES: dict[str, Case] = {c.id: c for c in _CASES}
assert len(CASES) == len(_CASES), "duplicate case id"


# ------------------------------------------------------------------------------------ the doc

def render_table() -> str:
    """The generated part of docs/errors.md: one table per area (in order of first appearance)."""
    out = [BEGIN, ""]
    areas: dict[str, list[Case]] = {}  # cases appended later in the list join their area's table
    for c in _CASES:
        areas.setdefault(c.area, []).append(c)
    for n, (area, cases) in enumerate(areas.items()):
        if n:
            out.append("")
        out += [f"### {area}", "", "| case | input | outcome | exit | what the user sees |", "|---|---|---|---|---|"]
        for c in cases:
            code = "—" if c.exit is None else str(c.exit)
            out.append(f"| `{c.id}` | {_cell(c.given)} | {c.outcome} | {code} | {_cell(c.shows)} |")
    out += ["", END]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def doc_table() -> str:
    """The generated part as it is in docs/errors.md now ('' when absent)."""
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        return ""
    return text[start:end + len(END)] + "\n"


def write_doc() -> None:
    """Replace the generated part of docs/errors.md with :func:`render_table`."""
    text = DOC.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise SystemExit(f"{DOC} has no generated-table markers")
    DOC.write_text(text[:start] + render_table().rstrip("\n") + text[end + len(END):], encoding="utf-8")


# ------------------------------------------------------------------------------------ CLI helpers

def run_cli(argv: Sequence[object], capsys) -> tuple[int, str, str]:
    """Run ``tortoise-xpu ARGV`` in this process; returns (exit code, stdout, stderr)."""
    from tortoise_xpu.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line of a failed run's stderr (warnings excepted); asserts there is exactly one."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    return lines[0]


def check_case(case_id: str, code: int, err: str, *, absent: Sequence[Path] = (), line: str | None = None) -> str:
    """Assert a CLI outcome matches ``CASES[case_id]``: exit code, one clean line, patterns, no files left.

    ``absent``: paths that must not exist afterwards (outputs, and their folder's temp files).
    Returns the message line.
    """
    case = CASES[case_id]
    assert code == case.exit, f"{case_id}: exit {code}, expected {case.exit}; stderr:\n{err}"
    msg = line if line is not None else (error_line(err) if case.exit else err)
    for pattern in case.expect:
        assert re.search(pattern, msg), f"{case_id}: {pattern!r} not in {msg!r}"
    for p in absent:
        p = Path(p)
        assert not p.exists(), f"{case_id}: {p} was left behind"
        if p.parent.is_dir():
            leftovers = [q.name for q in p.parent.iterdir() if q.name.startswith(f".{p.name}.")]
            assert not leftovers, f"{case_id}: temporary files left: {leftovers}"
    return msg


# ------------------------------------------------------------------------------------ a fake synthesiser

class _ReachedModels(Exception):
    """Raised where the pipeline would start running models (fake runs stop there)."""


@pytest.fixture
def fake_synth(monkeypatch):
    """``TextToSpeech.tts`` runs every real check (settings, brackets, tokenizer, length) and then,
    instead of running models, returns 0.2 s of a tone per candidate.  Records each call."""
    import torch

    from tortoise_xpu.pipeline.context import RunContext
    from tortoise_xpu.pipeline.tts import TextToSpeech

    calls: list[dict] = []
    real_tts = TextToSpeech.tts

    @contextlib.contextmanager
    def stop_at_models(self, stage):
        raise _ReachedModels(stage)
        yield  # pragma: no cover

    def tts(self, text, *args, k=1, **kwargs):
        try:
            real_tts(self, text, *args, k=k, **kwargs)
        except _ReachedModels:
            pass
        calls.append({"text": text, "k": k, **kwargs})
        n = 4800
        wav = 0.3 * torch.sin(torch.arange(n) * (2 * math.pi * 220 / 24000)).reshape(1, n)
        return wav if k == 1 else [wav.clone() for _ in range(k)]

    monkeypatch.setattr(RunContext, "timed", stop_at_models)
    monkeypatch.setattr(TextToSpeech, "tts", tts)
    return calls


if __name__ == "__main__":
    write_doc()
    print(f"wrote {DOC}")
