"""The one table of hardware-parity tolerances, per precision, with the reason for each.

Every comparison in ``tests/parity`` measures an output against the same output computed on the
CPU in float32 (the truth) and reports the *scaled max error*::

    error = max |out - ref| / max |ref|

the largest deviation in units of the output's own range.  Element-wise relative error would
explode on values that are near zero by chance (a waveform crossing zero, a logit of 0.001);
dividing by the range asks the question that matters: how big is the worst deviation compared
with what this output holds?  A cell passes when ``error <= rel``.

Logits and scores (what the pipeline picks from) are compared as values *and* by agreement:

* top-1: every row's arg-max is the reference's, or the reference itself ranks the two within
  ``2 * rel * max |ref|`` (a tie at this precision, which no backend can be asked to break);
* top-k: the mean overlap of the top-``k`` sets is at least ``min_topk``.

Greedy codes and the CLVP pick are compared exactly, up to the reference's first tie at the
precision (:data:`TIE_WINDOW_FACTOR`).

The numbers were set from what the tiny models measure on the CPU (docs/parity.md has the
table) and from the unit roundoff u of each format: float32 2^-24 = 6e-8, TF32 and float16
2^-11 = 4.9e-4, bfloat16 2^-8 = 3.9e-3.  They are bounds for correct arithmetic, not targets:
a wrong kernel, an overflow or an op that must stay in float32 is off by far more.
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
        reason="The same arithmetic in another order (other kernels, thread counts, FFT algorithms): a few "
               "ulps per op, ~1e-6 of the range after a tiny model.  1e-4 leaves room for full-size depth "
               "and long reductions and still catches any wrong kernel.  Top-5 sets must be identical."),
    "tf32": Tolerance(
        rel=5e-3, topk=5, min_topk=0.8,
        reason="float32 tensors whose convolutions/matmuls run on TF32 tensor cores (cuDNN's default for "
               "convolutions on NVIDIA Ampere and later; the package does not switch it off).  TF32 keeps "
               "10 mantissa bits like float16, with float32 accumulation, so float16's budget halved.  "
               "Only 'policy' columns can see it: the float32 columns turn TF32 off."),
    "float16": Tolerance(
        rel=1e-2, topk=5, min_topk=0.8,
        reason="Weights and activations rounded to 11 bits (u = 4.9e-4).  Measured on the tiny models: "
               "at most 3.4e-3 (CLVP's speech latent), most stages 1e-3; 1e-2 is ~20 u.  Top-5 sets may "
               "swap near-equal neighbours (>= 80 % overlap); the top-1 may differ only at a tie."),
    "bfloat16": Tolerance(
        rel=5e-2, topk=5, min_topk=0.8,
        reason="8 mantissa bits (u = 3.9e-3, 8x float16's), so errors 8x float16's: measured at most "
               "3.7e-2 (CLVP's speech latent: attention that averages 300 positions loses the digits the "
               "average cancels; no op in it needs float32 - rotary angles in float32 only take it to "
               "2.8e-2), the diffusion decoder cast whole 1.5-2.6e-2 (autocast, as the pipeline runs it: "
               "< 7e-3), the rest < 1.5e-2.  5e-2 is ~13 u.  Same top-k rule."),
    "int8": Tolerance(
        rel=1.5e-1, topk=5, min_topk=0.85,
        reason="Weight-only int8 of the AR linears (models/quant.py), bfloat16 activations into the int8 "
               "product.  Per-output-channel scales put every weight within max|row| / 254 of its value: "
               "bfloat16's step for the row's largest weight, but coarser than bfloat16 for the typical "
               "ones, more so the heavier the row's tail.  Measured on six heavy-tailed AR models "
               "(Student-t weights, 3 dof; tests/test_quant.py): 4.9e-2 to 1.28e-1 of the logits' range "
               "(the same models in bfloat16: 1.0e-2 to 1.6e-2), top-5 overlap 0.89 to 0.96.  So 1.5e-1 "
               "(a max over every logit of every step: one outlying weight shows), top-5 sets >= 85 %, "
               "and the greedy arg-max equal up to ties within 2 x rel of the range."),
}

#: Greedy codes and the CLVP pick may part from the reference only where the reference's own
#: margin between its top two is within ``TIE_WINDOW_FACTOR * rel * max |logits|``: two values
#: each off by up to ``rel * max`` can swap order inside that window and nowhere else.
TIE_WINDOW_FACTOR = 2.0

_PRECISION_OF = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def precision_name(dtype: torch.dtype, tf32: bool = False) -> str:
    """Key of :data:`TOLERANCES` for a run in ``dtype`` (``tf32``: float32 with TF32 tensor cores)."""
    name = _PRECISION_OF[dtype]
    return "tf32" if tf32 and name == "float32" else name


def tolerance_for(dtype: torch.dtype, tf32: bool = False) -> Tolerance:
    """The :class:`Tolerance` of a run in ``dtype``."""
    return TOLERANCES[precision_name(dtype, tf32)]
