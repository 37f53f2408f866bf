"""The one table of hardware-parity tolerances, per precision, with the reason for each.

Every comparison in ``tests/parity`` measures an output against the same output computed on the
CPU in float32 (the truth) and reports the *scaled max error*::

    error = max |out - ref| / max |ref|

the largest deviation in units of the output's own range.  Element-wise relative error would
explode on values that are near zero by chance (a waveform crossing zero, a logit of 0.001);
dividing by the range asks the question that matters: "how big is the worst deviation
compared with what this output holds?".  A cell passes when ``error <= rel``.

Logits (class scores the pipeline picks from) are compared as values *and* by top-k agreement:

* top-1: every row's arg-max is the reference's, or the reference itself ranks the two within
  ``2 * rel * max |ref|`` (a tie at this precision: no precision can be asked to break it);
* top-k: the mean overlap of the top-``k`` sets is at least ``min_topk``.

Why these numbers (unit roundoff u: float32 2^-24 = 6e-8, TF32 2^-11 = 4.9e-4, float16 2^-11 =
4.9e-4, bfloat16 2^-8 = 3.9e-3):
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """What one precision must achieve against CPU float32."""

    rel: float       # max |out - ref| / max |ref|
    topk: int        # k of the top-k agreement of logits
    min_topk: float  # required mean overlap of the top-k sets (1.0: identical sets)
    reason: str


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(
        rel=1e-4, topk=5, min_topk=1.0,
        reason="The same arithmetic, only a different order of summation (other kernels, threads, FFT "
               "algorithms): a few float32 ulps per op, 1e-6 of the range after a tiny model's depth. "
               "1e-4 leaves room for full-size depth and long reductions but catches any wrong kernel, "
               "which is off by far more.  Top-5 sets must be identical."),
    "tf32": Tolerance(
        rel=5e-3, topk=5, min_topk=0.8,
        reason="float32 tensors whose convolutions/matmuls run on TF32 tensor cores (cuDNN's default for "
               "convolutions on NVIDIA Ampere and later; the package does not switch it off).  TF32 keeps "
               "10 mantissa bits (u = 4.9e-4), like float16 inputs with a float32 accumulator: a few u per "
               "layer.  Only the 'policy' columns can see it; the float32 columns turn TF32 off."),
    "float16": Tolerance(
        rel=1e-2, topk=5, min_topk=0.8,
        reason="Weights and activations rounded to 11 bits (u = 4.9e-4); every layer adds a few u and "
               "residual stacks, GroupNorm and softmax (computed in float32 by the models) keep it from "
               "growing: 1e-2 of the range is ~20 u.  Top-5 sets may swap near-equal neighbours (>= 80 % "
               "overlap), but top-1 may differ only at a tie."),
    "bfloat16": Tolerance(
        rel=3e-2, topk=5, min_topk=0.8,
        reason="8 mantissa bits (u = 3.9e-3, 8x float16's): the same ~a few u per layer gives errors 8x "
               "larger than float16's.  3e-2 is ~8 u of the range; beyond it a stage has a real problem "
               "(an op that should stay in float32, an overflow, a wrong kernel).  Same top-k rule as "
               "float16."),
}

#: Tokens and choices (greedy AR codes, the CLVP pick) are compared exactly, except where the
#: reference's own margin between the two candidates lies within the precision's tie window
#: (``2 * rel * range``): past such a tie the sequences may legitimately part.
TIE_WINDOW_FACTOR = 2.0

_PRECISION_OF = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def precision_name(dtype: torch.dtype, tf32: bool = False) -> str:
    """Key of :data:`TOLERANCES` for a run in ``dtype`` (``tf32``: float32 with TF32 tensor cores)."""
    name = _PRECISION_OF[dtype]
    return "tf32" if tf32 and name == "float32" else name


def tolerance_for(dtype: torch.dtype, tf32: bool = False) -> Tolerance:
    """The :class:`Tolerance` of a run in ``dtype``."""
    return TOLERANCES[precision_name(dtype, tf32)]
