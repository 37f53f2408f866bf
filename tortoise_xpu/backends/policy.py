"""The run policy: dtype per stage, AR batch size, residency, AR decode mode (graphs, buckets, compile).

One pure function, :func:`make_policy`, computes a frozen :class:`Policy` from
what a device can do (:class:`~tortoise_xpu.backends.base.Capabilities`), how
much memory it has, the byte sizes of the models, the number of AR candidates
and the user's overrides.  No card names: the numbers decide.

Memory model (all byte counts, derived from the official model shapes):

* weights: each model's float32 bytes scaled to its stage dtype (for the
  diffusion decoder only the part that the autocast scheme stores in half,
  :data:`DIFFUSION_HALF_FRACTION`); with
  ``resident`` every model stays on the device, otherwise only the model of
  the running stage is there (the AR model during AR sampling).
* per AR sample: the preallocated KV cache, ``2 * layers * positions * dim``
  elements (30 * 1008 * 1024 for the official AR: 1008 = 402 text + 604 mel
  positions + 2), plus a working-memory margin of one layer's full-length
  attention scores and probabilities, hidden/MLP activations and prompt logits.
* headroom: ``max(512 MiB, 5 % of the total)`` is never planned for (desktop
  compositors, allocator fragmentation, driver workspaces).

The batch is the largest power-of-two divisor of the candidate count that fits
(capped at :data:`MAX_AR_BATCH`), never 0.  Where the driver cannot report free
memory the budget is a documented guess (:data:`UNIFIED_FREE_FRACTION` of the
total for unified memory, :data:`UNKNOWN_FREE_BYTES` when even the total is
unknown), and the OOM back-off (``backends.oom``) covers a wrong guess.

Compared with the published tiers (the original: 16/8/4/1 above 14/10/7 GiB
free; the oneAPI fork: 8 above 11 GiB, else 4), this model gives the same or a
larger batch at float32 (never smaller), because those thresholds also carried
the original's growing Hugging Face cache (its measured peak at batch 16 and
500 tokens was 10.2 GiB allocated, 38 GiB reserved on an H100), while our KV
cache is preallocated.  tests/test_policy.py asserts the comparison and
docs/backends.md shows it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

from tortoise_xpu.assets.catalogue import official_parameters
from tortoise_xpu.backends.base import Backend, Capabilities, CPUFeatures, dtype_name
from tortoise_xpu.errors import UserError

__all__ = [
    "ARShape", "COMPILE_ENV", "DECODE_BUCKET_ENV", "DECODE_MODE_ENV", "DECODE_MODES", "DEFAULT_DECODE_BUCKET",
    "MAX_AR_BATCH", "OFFICIAL_MODEL_BYTES", "Overrides", "Policy", "STAGES", "UNIFIED_FREE_FRACTION",
    "UNKNOWN_FREE_BYTES", "compile_backend", "diffusion_workspace_bytes", "headroom_bytes", "make_policy",
    "official_ar_shape", "overrides_from_args", "parse_dtype", "per_sample_bytes", "policy_for", "usable_bytes",
    "CPU_MIN_SPEEDUP", "CPU_SMALL_BATCH", "PACKED_ENV", "cpu_precision", "int8_on_one_thread", "parse_ar_int8",
]

GiB = 1 << 30
MiB = 1 << 20

#: Pipeline stages that have a dtype of their own.
STAGES: tuple[str, ...] = ("ar", "clvp", "diffusion", "vocoder")

#: float32 bytes of the official models, per stage (parameter counts of the official checkpoints x 4,
#: from the asset catalogue).
OFFICIAL_MODEL_BYTES: Mapping[str, int] = MappingProxyType({
    stage: official_parameters(file) * 4
    for stage, file in (("ar", "autoregressive.pth"), ("clvp", "clvp2.pth"), ("diffusion", "diffusion_decoder.pth"),
                        ("vocoder", "vocoder.pth"))
})

#: Part of the diffusion decoder's parameters held in the half dtype when its stage runs in half
#: precision: the convolution/linear weights of its main layers after the first
#: (``DiffusionTts.use_layer_autocast``); the rest stays float32, as in the original's use_fp16.
DIFFUSION_HALF_FRACTION = 113_332_224 / official_parameters("diffusion_decoder.pth")

#: Largest AR batch ever chosen: past it progress gets coarse and the per-step cache read grows
#: with no throughput measured to gain (perf notes measured up to 64).
MAX_AR_BATCH = 64

#: Part of the total of a unified-memory device (Apple silicon, Intel iGPU) planned as free
#: when the driver cannot say: the OS and other programs share that memory.
UNIFIED_FREE_FRACTION = 0.6

#: Free memory assumed when a device reports neither free nor total (DirectML):
#: a 4 GB card with a desktop on it.
UNKNOWN_FREE_BYTES = 3 * GiB

#: The AR decode engine's modes (pipeline/decode.py): eager steps, static shapes over cache buckets,
#: or static steps replayed as device graphs.
DECODE_MODES: tuple[str, ...] = ("eager", "static", "graph")
#: Cache positions per bucket of the static and graph decode modes.
DEFAULT_DECODE_BUCKET = 64
#: Environment switches of the decode engine, read where a live Policy is made (:func:`policy_for`)
#: and nowhere else: a decode mode, a bucket length, and ``torch.compile`` (1 = inductor, or a backend name).
DECODE_MODE_ENV = "TORTOISE_XPU_DECODE"
DECODE_BUCKET_ENV = "TORTOISE_XPU_DECODE_BUCKET"
COMPILE_ENV = "TORTOISE_XPU_COMPILE"
#: ``0`` (or off/false/no): do not prepack the CPU's weights for oneDNN (``Policy.packed_weights``); for A/B runs.
PACKED_ENV = "TORTOISE_XPU_PACKED"

#: Diffusion output frames of the longest clip (500 mel codes), from the perf anchor.
DIFFUSION_FRAMES = 2176


@dataclass(frozen=True)
class ARShape:
    """The autoregressive model's dimensions that size its per-sample memory.

    Derived from the model's config (:meth:`of`); :func:`official_ar_shape` is the official one.
    """

    layers: int
    dim: int
    heads: int
    #: Static KV-cache length: max_text_tokens + max_mel_tokens + 2 (1008 for the official model).
    positions: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> "ARShape":
        """The shape of an AR model built with ``config`` (an ``ARConfig``: read, not imported)."""
        return cls(layers=config.layers, dim=config.model_dim, heads=config.heads,
                   positions=config.max_text_tokens + config.max_mel_tokens + 2, vocab=config.number_mel_codes)


@functools.lru_cache(maxsize=None)
def official_ar_shape() -> ARShape:
    """The shape of the official AR model, from ``ARConfig``'s defaults (the official checkpoint's)."""
    from tortoise_xpu.models.autoregressive import ARConfig

    return ARShape.of(ARConfig())


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def per_sample_bytes(dtype: torch.dtype, shape: ARShape | None = None) -> int:
    """Device bytes one AR candidate needs: its KV cache plus a working-memory margin
    (``shape``: the AR model's, default the official one)."""
    shape = shape or official_ar_shape()
    item = _itemsize(dtype)
    length = shape.positions
    kv_cache = 2 * shape.layers * length * shape.dim * item
    # One layer is live at a time: its full-length attention scores + probabilities (the math
    # attention path materialises them), ~16 hidden-sized activations (residual, norm, q/k/v,
    # attention output, the 4x-wide MLP in and out), and the prompt pass's logits.
    working = (2 * shape.heads * length * length + 16 * length * shape.dim + length * shape.vocab) * item
    return kv_cache + working


def diffusion_workspace_bytes(dtype: torch.dtype, heads: int = 16, channels: int = 1024,
                              frames: int = DIFFUSION_FRAMES) -> int:
    """Working memory of one diffusion step on the longest clip, with conditioning-free guidance (batch 2)."""
    item = _itemsize(dtype)
    return 2 * (2 * heads * frames * frames + 16 * frames * channels) * item


def headroom_bytes(total_bytes: int | None) -> int:
    """Memory never planned for: ``max(512 MiB, 5 % of total)``."""
    return max(512 * MiB, (total_bytes or 0) // 20)


def usable_bytes(caps: Capabilities, free_bytes: int | None, total_bytes: int | None) -> tuple[int, str]:
    """The memory budget in bytes and a phrase saying where it came from."""
    if free_bytes is not None:
        if total_bytes is not None:
            free_bytes = min(free_bytes, total_bytes)
        source = "free memory reported by the device"
    elif total_bytes is not None:
        free_bytes = int(total_bytes * (UNIFIED_FREE_FRACTION if caps.unified_memory else 1.0))
        source = (f"{UNIFIED_FREE_FRACTION:.0%} of the shared memory (the driver reports no free figure)"
                  if caps.unified_memory else "total memory (the driver reports no free figure)")
    else:
        free_bytes = UNKNOWN_FREE_BYTES
        total_bytes = UNKNOWN_FREE_BYTES
        source = f"an assumed {UNKNOWN_FREE_BYTES / GiB:.0f} GiB (the device reports no memory figures)"
    return max(0, free_bytes - headroom_bytes(total_bytes)), source


_DTYPE_ALIASES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def parse_dtype(value: torch.dtype | str) -> torch.dtype:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16`` (float32, float16, bfloat16 only)."""
    if isinstance(value, torch.dtype):
        if value in (torch.float32, torch.float16, torch.bfloat16):
            return value
    elif isinstance(value, str) and value.strip().lower().replace("torch.", "") in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[value.strip().lower().replace("torch.", "")]
    raise UserError(f"unsupported dtype {value!r}; choose float32, float16 or bfloat16")


def compile_backend(value: str | bool | None) -> str | None:
    """The ``torch.compile`` backend a compile switch asks for: None (off), "inductor" for
    1/true/yes/on/True, else the named backend (e.g. ``eager``, ``aot_eager`` to check tracing)."""
    if value is None or value is False:
        return None
    text = "1" if value is True else str(value).strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return None
    return "inductor" if text in ("1", "true", "yes", "on") else text


@dataclass(frozen=True)
class Overrides:
    """The user's policy overrides (``--dtype``, ``--batch-size``, ``--low-vram``, ``--high-vram``,
    ``bench --decode/--compile``); None or False leaves the decision to :func:`make_policy`.

    ``decode_mode`` forces the AR decode mode (``eager``, ``static`` or ``graph``), ``decode_bucket``
    the static path's bucket length, ``compile`` wraps the static decode step in ``torch.compile``
    (True = inductor, or a backend name)."""

    dtype: torch.dtype | str | None = None
    batch_size: int | None = None
    low_vram: bool = False
    high_vram: bool = False
    graph_capture: bool | None = None
    # --- perf: CPU precision ------------------------------------------------------------------
    #: int8 weights for the AR linears: None = the policy decides (CPU: where measured faster),
    #: True/False = forced (``--ar-int8 on|off``).
    ar_int8: bool | None = None
    #: Residency decided by the model store that runs the Policy (True: resident, False: per stage);
    #: None leaves it to the memory model.  ``low_vram``/``high_vram`` win over it.
    resident: bool | None = None
    decode_mode: str | None = None
    decode_bucket: int | None = None
    compile: bool | str | None = None
    #: Prepack the CPU's AR linears and diffusion convolutions (None: wherever torch can).
    packed: bool | None = None

    def with_environment(self, environ: Mapping[str, str] | None = None) -> "Overrides":
        """These overrides, with the decode switches left unset filled in from the environment
        (``$TORTOISE_XPU_DECODE``, ``$TORTOISE_XPU_DECODE_BUCKET``, ``$TORTOISE_XPU_COMPILE``) and the
        packing switch (``$TORTOISE_XPU_PACKED``)."""
        env = os.environ if environ is None else environ
        mode = env.get(DECODE_MODE_ENV, "").strip().lower() or None
        bucket = env.get(DECODE_BUCKET_ENV, "").strip() or None
        if bucket is not None and not bucket.isdigit():
            raise UserError(f"${DECODE_BUCKET_ENV} must be a whole number of positions, got {bucket!r}")
        return dataclasses.replace(
            self, decode_mode=self.decode_mode if self.decode_mode is not None else mode,
            decode_bucket=self.decode_bucket if self.decode_bucket is not None else (int(bucket) if bucket else None),
            compile=self.compile if self.compile is not None else env.get(COMPILE_ENV),
            packed=self.packed if self.packed is not None else _env_switch(env.get(PACKED_ENV)))


def _env_switch(value: str | None) -> bool | None:
    """An on/off environment value -> True/False; unset or empty -> None."""
    text = (value or "").strip().lower()
    if not text:
        return None
    return text not in ("0", "off", "false", "no")


@dataclass(frozen=True)
class Policy:
    """How a run uses its device. Built by :func:`make_policy`; read by the pipeline."""

    ar_dtype: torch.dtype
    clvp_dtype: torch.dtype
    diffusion_dtype: torch.dtype
    vocoder_dtype: torch.dtype
    #: AR candidates generated per batch (a divisor of ``candidates``, >= 1).
    ar_batch_size: int
    #: True: every model stays on the device; False: each is moved there for its stage only.
    resident: bool
    #: The backend can capture device graphs and the decode may use them.
    graph_capture: bool
    #: Compute STFT with complex tensors on the device (else a real-valued formulation).
    use_complex_stft: bool
    candidates: int = 16
    #: Run the AR model's linear layers as ``weight @ x.T`` with out-major weights
    #: (``UnifiedVoice.use_weight_first_linears``): faster decoding where the device's GEMM prefers it.
    ar_weight_first: bool = False
    #: The AR decode engine's mode (:data:`DECODE_MODES`), cache positions per bucket of its static
    #: path, and the ``torch.compile`` backend of its static step (None: not compiled).
    decode_mode: str = "eager"
    decode_bucket: int = DEFAULT_DECODE_BUCKET
    compile: str | None = None
    #: The memory budget the batch was sized from, and one AR sample's bytes.
    budget_bytes: int = 0
    per_sample_bytes: int = 0
    # --- perf: CPU precision (see cpu_precision below) ------------------------------------------
    #: The AR model's GPT-2 linears and mel head hold int8 weights (``models.quant.quantize_ar_int8``);
    #: the rest of the AR stage runs in ``ar_dtype``.
    ar_int8: bool = False
    #: Run the int8 products on one intra-op thread (measured faster than all threads on this CPU).
    ar_int8_one_thread: bool = False
    #: The CPU's AR linears (unless int8) and the diffusion decoder's main convolutions hold weights
    #: prepacked for oneDNN (``models.packed``): 1.8-3.6x faster few-row products than unpacked ones.
    packed_weights: bool = False
    #: Why each stage got its dtype on this CPU (stage -> one sentence); empty off the CPU.
    precision_reasons: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    #: Why each decision came out as it did, one sentence each.
    notes: tuple[str, ...] = field(default=(), compare=False)

    def dtype(self, stage: str) -> torch.dtype:
        """The dtype of a stage: ``"ar"``, ``"clvp"``, ``"diffusion"`` or ``"vocoder"``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return getattr(self, f"{stage}_dtype")

    @property
    def low_vram(self) -> bool:
        return not self.resident

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dtypes as names)."""
        return {
            "dtypes": {stage: dtype_name(self.dtype(stage)) for stage in STAGES},
            "ar_batch_size": self.ar_batch_size,
            "candidates": self.candidates,
            "resident": self.resident,
            "graph_capture": self.graph_capture,
            "decode_mode": self.decode_mode,
            "decode_bucket": self.decode_bucket,
            "compile": self.compile,
            "use_complex_stft": self.use_complex_stft,
            "ar_weight_first": self.ar_weight_first,
            "ar_int8": self.ar_int8,
            "ar_int8_one_thread": self.ar_int8_one_thread,
            "packed_weights": self.packed_weights,
            "precision_reasons": dict(self.precision_reasons),
            "budget_bytes": self.budget_bytes,
            "per_sample_bytes": self.per_sample_bytes,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line, e.g. ``bf16/bf16/bf16/fp32, batch 16, resident, graphs``."""
        short = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        dtypes = "/".join(short.get(self.dtype(s), dtype_name(self.dtype(s))) for s in STAGES)
        if self.ar_int8:
            dtypes += " (AR int8 weights)"
        parts = [dtypes, f"batch {self.ar_batch_size}", "resident" if self.resident else "per-stage"]
        if self.graph_capture:
            parts.append("graphs")
        if self.decode_mode != ("graph" if self.graph_capture else "eager"):
            parts.append(f"{self.decode_mode} decode")
        if self.compile:
            parts.append(f"compiled ({self.compile})")
        return ", ".join(parts)


def _largest_divisor(candidates: int, limit: int, power_of_two: bool) -> int:
    """Largest divisor of ``candidates`` that is <= ``limit`` (and a power of two if asked); >= 1."""
    best = 1
    for size in range(1, min(candidates, max(limit, 1)) + 1):
        if candidates % size == 0 and (not power_of_two or size & (size - 1) == 0):
            best = size
    return best


def _default_half(caps: Capabilities) -> torch.dtype:
    # The CPU is fastest in float32 (bf16 matmuls are emulated on most CPUs); GPUs prefer bf16
    # (float32's range, no overflow), then fp16.
    if caps.is_cpu:
        return torch.float32
    if caps.bfloat16:
        return torch.bfloat16
    if caps.float16:
        return torch.float16
    return torch.float32


def _coerce_overrides(overrides: Overrides | Mapping[str, Any] | None) -> Overrides:
    if overrides is None:
        return Overrides()
    if isinstance(overrides, Overrides):
        return overrides
    unknown = set(overrides) - set(Overrides.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown policy override(s): {', '.join(sorted(unknown))}")
    return Overrides(**overrides)


def make_policy(caps: Capabilities, free_bytes: int | None, total_bytes: int | None,
                model_bytes: Mapping[str, int] | None = None, candidates: int = 16,
                overrides: Overrides | Mapping[str, Any] | None = None, shape: ARShape | None = None) -> Policy:
    """Compute the run policy. Pure: same inputs, same Policy; no device is touched.

    Args:
        caps: what the device supports (``backend.capabilities()``).
        free_bytes: free device memory before the models are loaded, or ``None`` if unknown.
        total_bytes: total device memory, or ``None`` if unknown.
        model_bytes: float32 bytes per stage (``"ar"``, ``"clvp"``, ``"diffusion"``, ``"vocoder"``);
            other keys count as extra float32 models kept with the rest. Default: the official models.
        candidates: AR samples to generate (the preset's ``num_autoregressive_samples``).
        overrides: the user's choices; they win over every derived decision.
        shape: the AR dimensions that size the KV cache (default: the official model's).

    Raises:
        UserError: an override the device cannot honour (an unsupported dtype, both
            low- and high-VRAM, a batch size below 1) or fewer than one candidate.
    """
    ov = _coerce_overrides(overrides)
    model_bytes = OFFICIAL_MODEL_BYTES if model_bytes is None else model_bytes
    if candidates < 1:
        raise UserError(f"the number of candidates must be at least 1, got {candidates}")
    if ov.low_vram and ov.high_vram:
        raise UserError("--low-vram and --high-vram cannot be used together")
    if ov.batch_size is not None and ov.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {ov.batch_size}")
    if ov.decode_mode is not None and ov.decode_mode not in DECODE_MODES:
        raise UserError(f"unknown decode mode {ov.decode_mode!r}; choose one of {', '.join(DECODE_MODES)}")
    if ov.decode_bucket is not None and ov.decode_bucket < 1:
        raise UserError(f"the decode bucket must be at least 1 position, got {ov.decode_bucket}")
    notes: list[str] = []

    # dtypes
    if ov.dtype is not None:
        forced = parse_dtype(ov.dtype)
        if not caps.supports(forced):
            raise UserError(f"{caps.backend} does not support {dtype_name(forced)}; "
                            f"supported: {', '.join(d for d in caps.dtypes() if d in _DTYPE_ALIASES)}")
        stage_dtypes = dict.fromkeys(STAGES, forced)
        notes.append(f"dtype {dtype_name(forced)} for every stage (--dtype)")
    else:
        half = _default_half(caps)
        # The vocoder is 15M parameters: float32 costs nothing there and keeps the waveform clean.
        stage_dtypes = {"ar": half, "clvp": half, "diffusion": half, "vocoder": torch.float32}
        if not caps.is_cpu:  # the CPU's per-stage choice is cpu_precision's (its notes follow)
            notes.append(f"dtype {dtype_name(half)} for AR, CLVP and diffusion (the fastest supported), "
                         "float32 for the vocoder")

    # memory
    def on_device(stage: str) -> int:
        scale = _itemsize(stage_dtypes[stage]) / 4 if stage in stage_dtypes else 1.0
        if stage == "diffusion":
            scale = 1 - DIFFUSION_HALF_FRACTION * (1 - scale)  # (a whole-model cast, DirectML's, is smaller)
        return int(model_bytes.get(stage, 0) * scale)

    all_models = sum(on_device(stage) for stage in model_bytes)
    ar_model = on_device("ar")
    sample = per_sample_bytes(stage_dtypes["ar"], shape)
    workspace = diffusion_workspace_bytes(stage_dtypes["diffusion"])
    budget, source = usable_bytes(caps, free_bytes, total_bytes)
    room_resident = max(0, budget - all_models) // sample
    room_per_stage = max(0, budget - ar_model) // sample

    # residency
    if ov.low_vram:
        resident = False
        notes.append("each model on the device for its stage only (--low-vram)")
    elif ov.high_vram:
        resident = True
        notes.append("all models resident (--high-vram)")
    elif ov.resident is not None:
        resident = bool(ov.resident)
        notes.append("all models resident (the model store keeps them so)" if resident else
                     "each model on the device for its stage only (the model store moves them so)")
    elif caps.is_cpu or caps.unified_memory:
        resident = True
        notes.append("all models resident (memory is shared with the host: moving them frees nothing)")
    else:
        cap = min(candidates, MAX_AR_BATCH)
        same_batch = (_largest_divisor(candidates, min(room_resident, cap), True)
                      >= _largest_divisor(candidates, min(room_per_stage, cap), True))
        resident = same_batch and budget >= all_models + workspace
        notes.append("all models resident (they fit without shrinking the batch)" if resident else
                     "each model on the device for its stage only (keeping all resident would shrink the batch)")

    # batch
    room = room_resident if resident else room_per_stage
    if ov.batch_size is not None:
        batch = _largest_divisor(candidates, ov.batch_size, power_of_two=False)
        notes.append(f"AR batch {batch} (--batch-size {ov.batch_size}"
                     f"{', rounded down to a divisor of the candidates' if batch != ov.batch_size else ''})")
    else:
        batch = _largest_divisor(candidates, min(room, MAX_AR_BATCH), power_of_two=True)
        notes.append(f"AR batch {batch}: {room} candidate(s) of {sample / GiB:.2f} GiB fit in "
                     f"{budget / GiB:.1f} GiB ({source})")
        if room == 0:
            notes.append("the models barely fit: batch 1, try --low-vram or a smaller dtype")

    # perf: on a CPU, each stage's dtype and the AR's int8 weights from what the CPU can do
    ar_int8, int8_one_thread, reasons = False, False, ()
    if caps.is_cpu:
        stage_dtypes, ar_int8, reasons = cpu_precision(caps, stage_dtypes, batch, ov)
        int8_one_thread = ar_int8 and int8_on_one_thread(caps.cpu, batch)
        notes.extend(f"{stage}: {why}" for stage, why in reasons)
    elif ov.ar_int8:
        raise UserError("int8 AR weights (--ar-int8 on) are implemented for the CPU only")

    graphs = caps.graphs and not caps.is_cpu
    if ov.graph_capture is not None:
        graphs = bool(ov.graph_capture) and caps.graphs
    # A forced graph mode without a capturing backend runs the same static steps without graphs.
    decode_mode = ov.decode_mode or ("graph" if graphs else "eager")
    if decode_mode == "graph" and not caps.graphs:
        decode_mode = "static"
    if ov.decode_mode is not None:
        notes.append(f"AR decode mode {decode_mode} (forced)")
    compiled = compile_backend(ov.compile)
    use_complex_stft = caps.complex and not caps.quirks.needs_real_stft
    packed = caps.is_cpu and caps.cpu is not None and caps.cpu.packed_kernel and ov.packed is not False
    if packed:
        notes.append("weights prepacked for oneDNN: the AR's linears" + (" (but the int8 ones)" if ar_int8 else "")
                     + " and the diffusion decoder's convolutions")
    # Measured for float32 only (MKL's sgemm); other dtypes take other kernels.  Packed products beat it.
    ar_weight_first = (caps.weight_first_gemm and stage_dtypes["ar"] == torch.float32 and not ar_int8
                       and not packed)
    if ar_weight_first:
        notes.append("AR linear layers as weight @ x.T with out-major weights (faster few-row products here)")

    return Policy(
        ar_dtype=stage_dtypes["ar"], clvp_dtype=stage_dtypes["clvp"], diffusion_dtype=stage_dtypes["diffusion"],
        vocoder_dtype=stage_dtypes["vocoder"], ar_batch_size=batch, resident=resident,
        graph_capture=graphs, use_complex_stft=use_complex_stft, candidates=candidates,
        ar_weight_first=ar_weight_first, decode_mode=decode_mode,
        decode_bucket=ov.decode_bucket or DEFAULT_DECODE_BUCKET, compile=compiled, budget_bytes=budget,
        per_sample_bytes=sample, ar_int8=ar_int8, ar_int8_one_thread=int8_one_thread, packed_weights=packed,
        precision_reasons=reasons,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------------
# perf: CPU precision.  A pure function of the CPU's features (flags and measured kernel speeds,
# ``Capabilities.cpu``), the AR batch and the user's overrides.
# ---------------------------------------------------------------------------------------------------

#: A half type or int8 must be at least this much faster than float32 in the measured kernel to be
#: chosen: below it the gain is within the noise of one measurement on a busy machine.
CPU_MIN_SPEEDUP = 1.2
#: AR batches up to this size are timed by the 1-row kernel, larger ones by the 16-row kernel.
CPU_SMALL_BATCH = 4


def cpu_precision(caps: Capabilities, stage_dtypes: dict[str, torch.dtype], batch: int,
                  ov: Overrides) -> tuple[dict[str, torch.dtype], bool, tuple[tuple[str, str], ...]]:
    """Each stage's dtype and the AR's int8 weights on a CPU, with one reason per stage.

    * ``--dtype`` given: that dtype everywhere (only ``--ar-int8`` still applies).
    * bfloat16 for a stage (AR, CLVP, diffusion) where the CPU has bfloat16 instructions (AVX-512
      BF16 or AMX-BF16) and that stage's kernel measured at least :data:`CPU_MIN_SPEEDUP` x faster
      in bfloat16.  Unmeasured (``TORTOISE_XPU_CPU_PROBE=0``): float32, whatever the flags (AVX-512
      BF16 alone is not always faster: the bfloat16 products of a few rows are slower here).
      AVX2-only CPUs stay in float32.
    * int8 AR weights where the CPU has int8 dot-product instructions (VNNI / AMX-INT8), torch has
      the kernel, and the AR kernel at this batch measured at least :data:`CPU_MIN_SPEEDUP` x faster
      in int8 than the faster of float32 and (where chosen) bfloat16; then the AR stage's other tensors stay
      float32.  ``--ar-int8 on|off`` forces it.  Its error: tests/test_quant.py, docs/performance.md.
    * The vocoders (UnivNet, the streaming HiFi-GAN) likewise, timed by a HiFi-GAN-like convolution
      (``vocoder``): their few-channel convolutions over many frames ran 1.8x faster in bfloat16 on
      a Zen 4, within the parity suite's bfloat16 tolerance (docs/parity.md).
    """
    cpu = caps.cpu
    out = dict(stage_dtypes)
    reasons: dict[str, str] = {}
    ar_key = "ar_b1" if batch <= CPU_SMALL_BATCH else "ar_b16"

    def fmt(x: float | None) -> str:
        return "not measured" if x is None else f"{x:.2f}x float32"

    if ov.dtype is None and cpu is not None:
        for stage, kernel in (("ar", ar_key), ("clvp", "clvp"), ("diffusion", "diffusion"), ("vocoder", "vocoder")):
            measured = cpu.speedup(f"bf16/{kernel}")
            if not cpu.bf16:
                out[stage], reasons[stage] = torch.float32, "float32: no bfloat16 instructions (AVX-512 BF16, AMX)"
            elif measured is not None:
                fast = measured >= CPU_MIN_SPEEDUP
                out[stage] = torch.bfloat16 if fast else torch.float32
                reasons[stage] = (f"{'bfloat16' if fast else 'float32'}: its kernel ({kernel}) in bfloat16 "
                                  f"measured {fmt(measured)}")
            else:
                out[stage], reasons[stage] = torch.float32, "float32: bfloat16 not measured (TORTOISE_XPU_CPU_PROBE=0)"
    elif cpu is None:
        reasons["ar"] = "float32: the CPU's features are unknown"

    int8_speed = _int8_speed(cpu, ar_key)
    if ov.ar_int8 is not None:
        ar_int8 = bool(ov.ar_int8)
        if ar_int8 and cpu is not None and not cpu.int8_kernel:
            raise UserError("--ar-int8 on needs torch's weight-only int8 product (torch >= 2.3)")
        why = f"int8 weights forced {'on' if ar_int8 else 'off'} (--ar-int8)"
    elif cpu is None or not cpu.int8_dot or not cpu.int8_kernel:
        ar_int8, why = False, "no int8 weights: no int8 dot-product instructions (VNNI, AMX-INT8) or kernel"
    elif int8_speed is None:
        ar_int8, why = False, "no int8 weights: not measured"
    else:
        bf16_speed = cpu.speedup(f"bf16/{ar_key}") if out["ar"] == torch.bfloat16 else 1.0
        # int8 costs accuracy: it must beat the best float path by the same margin a half type needs
        ar_int8 = int8_speed >= CPU_MIN_SPEEDUP * max(bf16_speed or 1.0, 1.0)
        why = f"{'int8' if ar_int8 else 'no int8'} weights: the AR kernel ({ar_key}) in int8 measured {fmt(int8_speed)}"
    if ar_int8:
        out["ar"] = torch.float32 if ov.dtype is None else out["ar"]
        reasons["ar"] = why + ", the rest of the stage " + ("float32" if out["ar"] == torch.float32 else
                                                            f"{dtype_name(out['ar'])}")
    else:
        reasons["ar"] = f"{reasons['ar']}; {why}" if "ar" in reasons else why
    order = [s for s in STAGES if s in reasons]
    return out, ar_int8, tuple((s, reasons[s]) for s in order)


def _int8_speed(cpu: CPUFeatures | None, key: str) -> float | None:
    """The better of the measured int8 speed-ups at all threads and on one thread (None: not measured)."""
    if cpu is None:
        return None
    speeds = [s for s in (cpu.speedup(f"int8/{key}"), cpu.speedup(f"int8_1t/{key}")) if s is not None]
    return max(speeds) if speeds else None


def int8_on_one_thread(cpu: CPUFeatures | None, batch: int) -> bool:
    """Whether the int8 product measured faster on one intra-op thread than on all of them."""
    key = "ar_b1" if batch <= CPU_SMALL_BATCH else "ar_b16"
    one = cpu.speedup(f"int8_1t/{key}") if cpu is not None else None
    return one is not None and one > (cpu.speedup(f"int8/{key}") or 0.0)


def policy_for(backend: Backend, candidates: int = 16, model_bytes: Mapping[str, int] | None = None,
               **overrides: Any) -> Policy:
    """:func:`make_policy` for a live backend: reads its capabilities and memory now.

    Call it before the models are loaded on the device (free memory must not
    already count them).  ``overrides`` are :class:`Overrides` fields; the decode switches
    they leave unset are read from the environment here (:meth:`Overrides.with_environment`),
    the one place the package reads them.
    """
    memory = backend.memory()
    return make_policy(backend.capabilities(), memory.free, memory.total, model_bytes=model_bytes,
                       candidates=candidates, overrides=Overrides(**overrides).with_environment())


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    """The :class:`Overrides` given by ``cli.common.add_device_args`` flags (missing flags mean none)."""
    return Overrides(
        dtype=getattr(args, "dtype", None),
        batch_size=getattr(args, "batch_size", None),
        low_vram=bool(getattr(args, "low_vram", False)),
        high_vram=bool(getattr(args, "high_vram", False)),
        ar_int8=parse_ar_int8(getattr(args, "ar_int8", None)),
    )


def parse_ar_int8(value: str | bool | None) -> bool | None:
    """``--ar-int8`` value -> Overrides.ar_int8: ``auto``/None -> None, ``on`` -> True, ``off`` -> False."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("on", "1", "true", "yes"):
        return True
    if text in ("off", "0", "false", "no"):
        return False
    raise UserError(f"--ar-int8 takes auto, on or off, not {value!r}")
