"""Full-size reference parity: our networks against the ORIGINAL tortoise-tts 3.0.0, official shapes.

Run by hand in the original's venv, from the repository root:

    /work/ref/.venv/bin/python -m tests.reference.fullsize_parity --weights DIR --out report.md

``DIR`` holds full-size random checkpoints written by the original classes
(``/work/shared/reference/make_random_weights.py``: autoregressive.pth, diffusion_decoder.pth,
clvp2.pth, cvvp.pth, vocoder.pth, rlg_auto.pth, rlg_diffuser.pth, classifier.pth).  That script
does not write ``hifidecoder.pth``; when DIR lacks it, one is written here from the original
``HifiganGenerator`` (official constructor of ``api_fast.py``, the same perturbed init) into a
temporary folder.

For every model, one at a time (the full set would not fit a small machine's memory twice):

1. our ``tortoise_xpu.models.loading.load_model(name, path=...)`` loads the original's file with
   ``strict=True`` (a failure is a failed row, and the comparisons of that model are skipped);
2. the original class loads the same file with ``strict=True``;
3. with ``--our-weights DIR2`` (files from ``tortoise-xpu models random-weights``), the original
   class also loads OUR file with ``strict=True`` (key names and shapes; built on the meta device,
   tensors assigned), the other direction of the file-format promise;
4. both networks get identical seeded inputs and their outputs are compared, float32 CPU.

A row passes when ``max |ours - original| <= 1e-4``, or ``<= 1e-5 * max |original|`` where the
values are large.  UnivNet is the exception that is explained in its rows: its float32 result can
be limited by rounding chaos, so the original's own float32-vs-float64 difference is measured as
the noise floor F, the float32 row passes at ``max(1e-4, 2 F)`` (two correct float32 runs can each
be F away from the exact result), and the float64 results of both implementations (identical
weights) are compared at 1e-4 as well.

The report is a markdown table (stdout, and ``--out``); the exit status is 1 when any row fails.
Our package imports with torch alone, so it runs inside the original's venv from this checkout.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)   # torch.nn.utils.weight_norm deprecation
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tortoise_xpu.models import registry  # noqa: E402
from tortoise_xpu.models.loading import load_model  # noqa: E402

ABS_TOL = 1e-4
REL_TOL = 1e-5

# The official constructor calls of the original's api.py / api_fast.py.
AR_KW = dict(max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30, model_dim=1024,
             heads=16, number_text_tokens=255, start_text_token=255, checkpointing=False,
             train_solo_embeddings=False)
DIFF_KW = dict(model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
               in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0, unconditioned_percentage=0)
CLVP_KW = dict(dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
               text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20, speech_heads=12,
               speech_seq_len=430, use_xformers=True)
CVVP_KW = dict(model_dim=512, transformer_heads=8, dropout=0, mel_codes=8192, conditioning_enc_depth=8,
               cond_mask_percentage=0, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1)
CLASSIFIER_KW = dict(spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2, attn_blocks=4,
                     num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5, distribute_zero_label=False)
HIFI_KW = dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
               resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512,
               upsample_factors=[8, 8, 2, 2], cond_channels=1024)
HIFI_SEED = 1242  # make_random_weights uses 1234..1241 for the other eight files

# Input sizes: modest, so the whole run fits a busy 2-core machine (about 10-20 minutes).
AR_TEXT, AR_CODES, AR_DECODE_STEPS = 30, 60, 11   # prefill + 10 cached steps
DIFF_FRAMES = 100


# ----------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    model: str
    what: str
    diff: float | None = None
    scale: float | None = None
    ok: bool = True
    note: str = ""

    @property
    def rel(self) -> float | None:
        if self.diff is None or self.scale is None:
            return None
        return self.diff / self.scale if self.scale > 0 else (0.0 if self.diff == 0 else math.inf)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def compare(model: str, what: str, ours: torch.Tensor, ref: torch.Tensor, *, abs_tol: float = ABS_TOL,
            note: str = "") -> Row:
    """One row: max |ours - ref| against ``abs_tol`` or ``REL_TOL * max |ref|``."""
    ours, ref = torch.as_tensor(ours).detach(), torch.as_tensor(ref).detach()
    if ours.shape != ref.shape:
        return Row(model, what, ok=False, note=f"shape {tuple(ours.shape)} vs original {tuple(ref.shape)}")
    diff = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    ok = bool(diff <= max(abs_tol, REL_TOL * scale))
    if not math.isfinite(diff):
        ok, note = False, (note + "; " if note else "") + "non-finite values"
    return Row(model, what, diff, scale, ok, note)


def fact(model: str, what: str, ok: bool, note: str = "") -> Row:
    """A row without numbers (a strict load, an equality of integer outputs)."""
    return Row(model, what, ok=ok, note=note)


def table(rows: list[Row]) -> str:
    lines = ["| model | compared | max abs diff | max \\|value\\| | relative | pass |",
             "|---|---|---:|---:|---:|:---:|"]
    for r in rows:
        what = r.what + (f" — {r.note}" if r.note else "")
        lines.append(f"| {r.model} | {what} | {_fmt(r.diff)} | {_fmt(r.scale)} | {_fmt(r.rel)} | "
                     f"{'✓' if r.ok else '✗ FAIL'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- helpers
def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _randint(seed: int, lo: int, hi: int, *shape: int) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=torch.Generator().manual_seed(seed))


def _read(path: Path) -> object:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _has_meta(module: torch.nn.Module) -> bool:
    for m in module.modules():
        tensors = list(m._parameters.values()) + list(m._buffers.values())
        tensors += [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        if any(t is not None and t.is_meta for t in tensors):
            return True
    return False


def original_loaded(make: Callable[[], torch.nn.Module], state: dict) -> torch.nn.Module:
    """The original network holding ``state``, loaded with strict=True.

    Built on the meta device and assigned the file's tensors when that leaves nothing on meta
    (no random initialisation of hundreds of millions of parameters); otherwise (non-persistent
    buffers, weight-norm hooks) built on the CPU and loaded by copy."""
    with torch.device("meta"):
        model = make()
    model.load_state_dict(state, strict=True, assign=True)
    if _has_meta(model):
        del model
        model = make()
        model.load_state_dict(state, strict=True)
    model.eval()  # not ``return model.eval()``: the original UnivNet's eval() returns None
    return model


def original_accepts(model_name: str, make: Callable[[], torch.nn.Module], our_dir: Path | None,
                     unwrap: str | None = None) -> list[Row]:
    """Load OUR random-weights file into the original class with strict=True (names and shapes)."""
    if our_dir is None:
        return []
    path = our_dir / model_name_file(model_name)
    if not path.is_file():
        return [fact(model_name, f"original class ← our {path.name} (strict=True)", False, "file missing")]
    raw = _read(path)
    state = raw[unwrap] if unwrap else raw
    try:
        with torch.device("meta"):
            module = make()
        module.load_state_dict(state, strict=True, assign=True)
        n = sum(t.numel() for t in state.values())
        return [fact(model_name, f"original class ← our {path.name} (strict=True)", True, f"{n:,} values")]
    except Exception as exc:  # report, don't abort the other models
        return [fact(model_name, f"original class ← our {path.name} (strict=True)", False,
                     str(exc).splitlines()[0][:160])]


_FILES = {"AR": "autoregressive.pth", "CLVP": "clvp2.pth", "CVVP": "cvvp.pth", "diffusion": "diffusion_decoder.pth",
          "UnivNet": "vocoder.pth", "HiFi-GAN": "hifidecoder.pth", "rlg_auto": "rlg_auto.pth",
          "rlg_diffuser": "rlg_diffuser.pth", "classifier": "classifier.pth"}


def model_name_file(model_name: str) -> str:
    return _FILES[model_name]


def ours_loaded(model_name: str, path: Path, **kw) -> tuple[torch.nn.Module, Row]:
    """Our network from the original's file, through the package's strict loader."""
    model = load_model(model_name_file(model_name), path=path, **kw)
    n = sum(p.numel() for p in model.parameters())
    return model, fact(model_name, f"ours ← original {path.name} via load_model (strict=True)", True,
                       f"{n:,} parameters")


# ------------------------------------------------------------------------------------- models
@torch.no_grad()
def check_ar(path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.autoregressive import UnifiedVoice as Original

    m = "AR"
    make = lambda: Original(**AR_KW)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))

    cond_mels = _randn(1, 2, 2, 80, 150)
    ref_cond = orig.get_conditioning(cond_mels)
    rows.append(compare(m, "conditioning latent (2 voices × 2 clips × 150 frames)",
                        ours.get_conditioning(cond_mels), ref_cond))

    # Teacher forcing with clip_inputs=True (the original's default); hooks take both heads' logits.
    text = _randint(2, 1, 255, 2, AR_TEXT)
    codes = _randint(3, 0, 8192, 2, AR_CODES)
    text_lengths = torch.tensor([AR_TEXT, AR_TEXT - 6])
    wav_lengths = torch.tensor([AR_CODES * 1024, (AR_CODES - 14) * 1024 + 512])
    got = {}
    hooks = [orig.text_head.register_forward_hook(lambda mod, i, o: got.__setitem__("text", o)),
             orig.mel_head.register_forward_hook(lambda mod, i, o: got.__setitem__("mel", o))]
    orig(ref_cond, text.clone(), text_lengths, codes.clone(), wav_lengths)
    for h in hooks:
        h.remove()
    text_logits, mel_logits = ours(ref_cond, text, text_lengths, codes, wav_lengths, clip_inputs=True)
    rows.append(compare(m, f"teacher-forced text logits ({AR_TEXT} tokens)", text_logits, got["text"]))
    rows.append(compare(m, f"teacher-forced mel logits ({AR_CODES} codes)", mel_logits, got["mel"]))

    # The latents pass as the pipeline calls it (clip_inputs=False, return_latent=True).
    lat_lengths = torch.tensor([AR_CODES * 1024, (AR_CODES - 10) * 1024])
    full_text = torch.full((2,), AR_TEXT)
    ref_lat = orig(ref_cond, text.clone(), full_text, codes.clone(), lat_lengths, return_latent=True,
                   clip_inputs=False)
    rows.append(compare(m, "latents pass (return_latent, clip_inputs=False)",
                        ours(ref_cond, text, full_text, codes, lat_lengths, return_latent=True, clip_inputs=False),
                        ref_lat))

    # Greedy decode through the original's UNCACHED path (kv_cache=False: contiguous mel positions),
    # recording the lm_head logits of each step; ours: prefill + cached decode steps fed the same codes.
    orig.post_init_gpt2_config(kv_cache=False)
    prompt_len = 1 + AR_TEXT + 2 + 1
    steps = []
    hook = orig.inference_model.lm_head.register_forward_hook(lambda mod, i, o: steps.append(o[:, -1].clone()))
    ref_codes = orig.inference_speech(ref_cond, text, do_sample=False, max_generate_length=AR_DECODE_STEPS,
                                      min_length=prompt_len + AR_DECODE_STEPS)
    hook.remove()
    ref_steps = torch.stack(steps)
    cache = ours.new_cache(2, ours.prompt_length(AR_TEXT) + AR_DECODE_STEPS)
    logits, _ = ours.prefill(ref_cond, text, cache)
    our_steps = [logits]
    for k in range(1, AR_DECODE_STEPS):
        logits, _ = ours.decode_step(ref_codes[:, k - 1], k, cache)
        our_steps.append(logits)
    our_steps = torch.stack(our_steps)
    rows.append(compare(m, f"KV-cached decode (prefill + {AR_DECODE_STEPS - 1} steps) vs original uncached, "
                           "logits at every step", our_steps, ref_steps))
    masked = our_steps.clone()
    masked[..., 8193] = -float("inf")  # the original masked the stop token (min_length)
    rows.append(fact(m, f"greedy codes from our cached logits = original's ({AR_DECODE_STEPS} steps × 2)",
                     torch.equal(masked.argmax(-1).T, ref_codes)))
    return rows


def _pipeline_codes(seed: int, batch: int, length: int) -> torch.Tensor:
    """Candidates as CLVP/CVVP see them: stopped at varying lengths, padded, fixed by the original."""
    from tests.reference.gen_clvp import pipeline_codes

    return pipeline_codes(torch.Generator().manual_seed(seed), batch, length)


@torch.no_grad()
def check_clvp(path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.clvp import CLVP as Original

    m = "CLVP"
    make = lambda: Original(**CLVP_KW)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))

    b = 4
    text = F.pad(_randint(10, 1, 256, 1, AR_TEXT), (0, 1))   # one text, padded with a 0 as the pipeline does
    texts = F.pad(_randint(11, 1, 256, b, AR_TEXT), (0, 1))
    codes = _pipeline_codes(12, b, AR_CODES)
    ref = orig(text.repeat(b, 1), codes, return_loss=False)
    rows.append(compare(m, f"scores of {b} candidates ({AR_CODES} codes) for one text", ours.score(text, codes), ref))
    matrix = orig(texts.repeat_interleave(b, 0), codes.repeat(b, 1), return_loss=False).view(b, b)
    rows.append(compare(m, f"similarity matrix {b}×{b}", ours.similarity_matrix(texts, codes), matrix))
    return rows


@torch.no_grad()
def check_cvvp(path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.cvvp import CVVP as Original

    m = "CVVP"
    make = lambda: Original(**CVVP_KW)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))

    b, clips = 3, 2
    mel_conds = _randn(20, 1, clips, 80, 120)
    codes = _pipeline_codes(21, b, AR_CODES)
    ref = sum(orig(mel_conds[:, k].repeat(b, 1, 1), codes, return_loss=False) for k in range(clips)) / clips
    rows.append(compare(m, f"pipeline score ({clips} clips × {b} candidates)", ours.score(mel_conds[0], codes), ref))
    conds = _randn(22, b, 80, 100)
    rows.append(compare(m, "pairwise similarity (forward)", ours(conds, codes), orig(conds, codes, return_loss=False)))
    return rows


@torch.no_grad()
def check_diffusion(path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.diffusion_decoder import DiffusionTts as Original

    m = "diffusion"
    make = lambda: Original(**DIFF_KW)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))

    frames = 23  # AR latents; 23 * 4 * 24000 // 22050 = 100 mel frames
    length = frames * 4 * 24000 // 22050
    assert length == DIFF_FRAMES
    cond_mels = _randn(30, 2, 2, 100, 120)
    ref_cond = orig.get_conditioning(cond_mels)
    rows.append(compare(m, "conditioning latent (2 × 2 clips × 120 frames)", ours.get_conditioning(cond_mels),
                        ref_cond))
    latents = _randn(31, 2, frames, 1024)
    ref_emb = orig.timestep_independent(latents, ref_cond, length, False)
    rows.append(compare(m, f"aligned embeddings (timestep_independent, {frames} latents → {length} frames)",
                        ours.timestep_independent(latents, ref_cond, length), ref_emb))
    x = _randn(32, 2, 100, length)
    for t in (torch.tensor([0, 2000]), torch.tensor([1234, 1234]), torch.tensor([3999, 17])):
        for free in (False, True):
            ref = orig(x, t, precomputed_aligned_embeddings=ref_emb, conditioning_free=free)
            out = ours(x, t, precomputed_aligned_embeddings=ref_emb, conditioning_free=free)
            label = f"t={t.tolist()}{', conditioning-free' if free else ''}"
            rows.append(compare(m, f"ε {label}", out[:, :100], ref[:, :100]))
            rows.append(compare(m, f"variance {label}", out[:, 100:], ref[:, 100:]))
    return rows


@torch.no_grad()
def check_univnet(path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.vocoder import UnivNetGenerator as Original

    m = "UnivNet"
    rows = original_accepts(m, Original, our_dir, unwrap="model_g")
    ours, row = ours_loaded(m, path)
    rows.append(row)
    raw = _read(path)
    orig = original_loaded(Original, raw["model_g"])  # the file's weights as they are (perturbed init)
    orig.eval(inference=True)  # removes weight norm, as api.py does

    # Mels in the range the diffusion decoder produces (log magnitudes, about -11.5 .. 2.3).
    mel = _randn(40, 1, 100, 40) * 2.0 - 5.0
    z = _randn(41, 1, 64, 50)
    ref32 = orig.inference(mel, z=z)
    out32 = ours.inference(mel, z=z)
    del orig, ours
    # Float64 on both sides with identical weights (the original's, weight norm removed in
    # float64; our converter's fold is what the float32 row above checks) and the generator's
    # forward on the same padded mel (the inference wrappers differ only in float64: the original
    # pads with a float32 constant): the same computation in nearly exact arithmetic.  The
    # original's float32-vs-float64 gap is the noise floor: how far float32 rounding alone moves
    # a correct implementation.
    orig64 = original_loaded(Original, raw["model_g"]).double()
    orig64.eval(inference=True)
    ours64 = registry.build("vocoder.pth", device="cpu").double()
    ours64.load_state_dict(orig64.state_dict(), strict=True)
    padded = torch.cat((mel, torch.full((1, 100, 10), -11.5129)), dim=2).double()
    ref64_raw = orig64(padded, z.double())
    out64_raw = ours64(padded, z.double())
    ref64 = orig64.inference(mel.double(), z=z.double())
    floor = (ref32.double() - ref64).abs().max().item()
    rows.append(compare(m, "noise floor: original float32 vs original float64", ref32, ref64,
                        abs_tol=math.inf, note="measured, not asserted"))
    rows.append(compare(m, "ours float32 vs original float64", out32, ref64, abs_tol=math.inf,
                        note="measured, not asserted: compare with the noise floor"))
    tol = max(ABS_TOL, 2 * floor)
    note = "" if tol == ABS_TOL else f"tolerance 2 × noise floor = {tol:.1e}"
    rows.append(compare(m, "waveform, 40 frames, fixed noise (float32)", out32, ref32, abs_tol=tol, note=note))
    rows.append(compare(m, "generator forward, both float64, identical weights", out64_raw, ref64_raw))
    return rows


@torch.no_grad()
def check_hifigan(path: Path, our_dir: Path | None) -> list[Row]:
    from tests.reference.gen_vocoders import _CpuOnlyTo
    from tortoise.models.hifigan_decoder import HifiganGenerator as Original

    m = "HiFi-GAN"
    make = lambda: Original(**HIFI_KW)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))
    orig.remove_weight_norm()

    latents = _randn(50, 1, 20, 1024)
    g = _randn(51, 1, 1024)  # api_fast passes the (1, 1024) AR conditioning latent
    with _CpuOnlyTo():  # its inference() moves the input to a hard-coded accelerator
        ref = orig.inference(latents, g)
    rows.append(compare(m, "waveform from 20 AR latents + speaker latent", ours.inference(latents, g), ref))
    return rows


def _check_rlg(m: str, channels: int, path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.random_latent_generator import RandomLatentConverter as Original

    make = lambda: Original(channels)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))
    noise = _randn(60 + channels, 3, channels)
    with torch.no_grad():
        rows.append(compare(m, f"latents from fixed noise (3 × {channels})", ours.convert(noise), orig.layers(noise)))
    return rows


def check_rlg_auto(path: Path, our_dir: Path | None) -> list[Row]:
    return _check_rlg("rlg_auto", 1024, path, our_dir)


def check_rlg_diffuser(path: Path, our_dir: Path | None) -> list[Row]:
    return _check_rlg("rlg_diffuser", 2048, path, our_dir)


@torch.no_grad()
def check_classifier(path: Path, our_dir: Path | None) -> list[Row]:
    from tortoise.models.classifier import AudioMiniEncoderWithClassifierHead as Original

    m = "classifier"
    make = lambda: Original(2, **CLASSIFIER_KW)  # noqa: E731
    rows = original_accepts(m, make, our_dir)
    ours, row = ours_loaded(m, path)
    rows.append(row)
    orig = original_loaded(make, _read(path))
    x = (_randn(70, 2, 1, 24000) * 0.3).clamp(-1, 1)
    rows.append(compare(m, "logits (2 clips × 1 s)", ours(x), orig(x)))
    clip = x[0]  # classify_audio_clip: (1, samples) → (1, 1, samples) → softmax[0][0]
    prob = F.softmax(orig(clip.unsqueeze(0)), dim=-1)[0][0]
    rows.append(compare(m, "probability 'made by Tortoise' of one clip", torch.tensor(ours.classify(clip)), prob))
    return rows


CHECKS: list[tuple[str, Callable[[Path, Path | None], list[Row]]]] = [
    ("AR", check_ar), ("CLVP", check_clvp), ("CVVP", check_cvvp), ("diffusion", check_diffusion),
    ("UnivNet", check_univnet), ("HiFi-GAN", check_hifigan), ("rlg_auto", check_rlg_auto),
    ("rlg_diffuser", check_rlg_diffuser), ("classifier", check_classifier),
]


# --------------------------------------------------------------------------------- hifidecoder
@torch.no_grad()
def write_hifidecoder(path: Path, seed: int = HIFI_SEED) -> None:
    """A full-size random hifidecoder.pth from the original ``HifiganGenerator``, as make_random_weights
    would write it: constructor init, then every constant parameter (biases, norm gains) gets N(0, 0.02)
    noise so no path is silently multiplied by 0 or 1; saved as the weight-normed state dict."""
    from tortoise.models.hifigan_decoder import HifiganGenerator as Original

    torch.manual_seed(seed)
    model = Original(**HIFI_KW)
    for p in model.parameters():
        flat = p.detach().reshape(-1)
        if p.numel() and bool(torch.all(flat == flat[0])):
            p.add_(torch.randn_like(p) * 0.02)
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, path)


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, type=Path,
                    help="folder of full-size random checkpoints written by the original classes")
    ap.add_argument("--our-weights", type=Path, default=None,
                    help="also load these files (tortoise-xpu models random-weights) into the original classes")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here too")
    ap.add_argument("--only", nargs="*", choices=[n for n, _ in CHECKS], help="run only these models")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    timings: list[str] = []
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="fullsize-parity-") as tmp:
        paths = {name: args.weights / model_name_file(name) for name, _ in CHECKS}
        if not paths["HiFi-GAN"].is_file() and (not args.only or "HiFi-GAN" in args.only):
            paths["HiFi-GAN"] = Path(tmp) / "hifidecoder.pth"
            write_hifidecoder(paths["HiFi-GAN"])
            print(f"wrote {paths['HiFi-GAN']} from the original HifiganGenerator (seed {HIFI_SEED})", flush=True)
        for name, check in CHECKS:
            if args.only and name not in args.only:
                continue
            t0 = time.time()
            try:
                if not paths[name].is_file():
                    raise FileNotFoundError(f"{paths[name]} missing")
                new = check(paths[name], args.our_weights)
            except Exception as exc:
                traceback.print_exc()
                new = [fact(name, "check aborted", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]
            rows += new
            gc.collect()  # one model pair at a time: free it before the next
            timings.append(f"{name} {time.time() - t0:.0f}s")
            print(table(new).split("\n", 2)[2], flush=True)
            print(f"   ({name}: {time.time() - t0:.0f} s)", flush=True)

    failed = [r for r in rows if not r.ok]
    import tortoise

    header = [
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} · torch {torch.__version__} · "
        f"original tortoise-tts from {Path(tortoise.__file__).parent} · Python {platform.python_version()} · "
        f"{args.threads} threads · float32 CPU · {time.time() - t_start:.0f} s ({', '.join(timings)})",
        "",
        f"Pass: max abs diff ≤ {ABS_TOL:g}, or relative ≤ {REL_TOL:g} where values are large.",
        "",
    ]
    report = "\n".join(header) + table(rows) + "\n\n" + (
        f"**{len(failed)} of {len(rows)} rows FAILED.**" if failed else f"All {len(rows)} rows pass.") + "\n"
    print()
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
