"""Where the 40-token unit's time goes on a CPU, and the least it can take in float32 here.

Counts the floating-point work of the two big stages with ``torch.utils.flop_counter`` on
full-size networks (random weights: speed does not depend on the values) and times it:

* the AR decode step at batch 16 (the Policy's batch for 16 candidates), with the GPT-2 linears as
  ``x @ W.T`` (the default elsewhere) and as ``W @ x.T`` (``Policy.ar_weight_first``, the CPU's);
* one diffusion step of the ``ultra_fast`` preset (no conditioning-free guidance: batch 1) over the
  frames that 40 codes give;
* the rate of a large square fp32 product: the most this machine's GEMM gets.

The floor printed is the unit's work divided by that rate; nothing that keeps the float32 numbers
(and the preset's 16 candidates and 30 steps) can take less.  Usage::

    python benchmarks/cpu_floor.py [--tokens 40] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from tortoise_xpu.models.autoregressive import UnifiedVoice  # noqa: E402
from tortoise_xpu.models.diffusion_decoder import DiffusionTts  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    # The counter has formulas for the CUDA attention kernels only; the CPU's flash kernel does the
    # same two products (q k^T, then weights v).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flops(fn) -> int:
    """Floating-point operations of ``fn()``, attention included."""
    mapping = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        mapping[cpu_flash] = _cpu_sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def ar_step(tokens: int, weight_first: bool, repeat: int) -> dict:
    """FLOPs and seconds of one decode step at batch 16, mid-way through ``tokens`` codes."""
    model = UnifiedVoice().eval().use_weight_first_linears(weight_first)
    text = torch.randint(1, 255, (1, 28), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(16, model.prompt_length(text.shape[1]) + tokens)
    model.prefill(torch.randn(1, model.config.model_dim), text, cache)
    codes = torch.randint(0, 8192, (16,))
    position = max(1, tokens // 2)
    work = flops(lambda: model.decode_step(codes, position, cache))
    return {"flops": work, "seconds": timed(lambda: model.decode_step(codes, position, cache), repeat)}


@torch.no_grad()
def diffusion_step(tokens: int, repeat: int) -> dict:
    """FLOPs and seconds of one ultra_fast diffusion step for ``tokens`` codes."""
    model = DiffusionTts().eval()
    frames = tokens * 4 * 24000 // 22050  # the pipeline's output length for that many codes
    x = torch.randn(1, model.in_channels, frames)
    emb = torch.randn(1, model.model_channels, frames)
    t = torch.tensor([500])
    fn = lambda: model(x, t, precomputed_aligned_embeddings=emb)  # noqa: E731
    return {"flops": flops(fn), "seconds": timed(fn, repeat), "frames": frames}


def gemm_rate(repeat: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timed(lambda: a @ b, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40, help="forced AR codes of the unit (default 40)")
    parser.add_argument("--candidates", type=int, default=16, help="AR candidates (default 16)")
    parser.add_argument("--steps", type=int, default=30, help="diffusion steps (ultra_fast: 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rate = gemm_rate(args.repeat)
    plain = ar_step(args.tokens, False, args.repeat)
    first = ar_step(args.tokens, True, args.repeat)
    diff = diffusion_step(args.tokens, args.repeat)
    ar_work = plain["flops"] * args.tokens * args.candidates / 16  # one step feeds 16 candidates
    diff_work = diff["flops"] * args.steps
    result = {
        "threads": torch.get_num_threads(),
        "gemm_gflops": rate / 1e9,
        "ar_step_gflop": plain["flops"] / 1e9,
        "ar_step_s": {"x_at_wT": plain["seconds"], "w_at_xT": first["seconds"]},
        "ar_gflops": {"x_at_wT": plain["flops"] / plain["seconds"] / 1e9,
                      "w_at_xT": first["flops"] / first["seconds"] / 1e9},
        "diffusion_frames": diff["frames"],
        "diffusion_step_gflop": diff["flops"] / 1e9,
        "diffusion_step_s": diff["seconds"],
        "diffusion_gflops": diff["flops"] / diff["seconds"] / 1e9,
        "unit_tflop": (ar_work + diff_work) / 1e12,
        "floor_s": {"ar": ar_work / rate, "diffusion": diff_work / rate, "ar+diffusion": (ar_work + diff_work) / rate},
        "at_measured_rates_s": {"ar": first["seconds"] * args.tokens * args.candidates / 16,
                                "diffusion": diff["seconds"] * args.steps},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result
    print(f"| measure ({r['threads']} threads) | value |\n|---|---:|")
    print(f"| 2048³ fp32 product | {r['gemm_gflops']:.1f} GFLOPS |")
    print(f"| AR decode step, batch 16 | {r['ar_step_gflop']:.2f} GFLOP |")
    for key, label in (("x_at_wT", "x @ W.T"), ("w_at_xT", "W @ x.T (weight-first)")):
        print(f"| AR step as {label} | {r['ar_step_s'][key] * 1e3:.0f} ms ({r['ar_gflops'][key]:.1f} GFLOPS) |")
    print(f"| diffusion step, {r['diffusion_frames']} frames | {r['diffusion_step_gflop']:.1f} GFLOP, "
          f"{r['diffusion_step_s']:.2f} s ({r['diffusion_gflops']:.1f} GFLOPS) |")
    print(f"| AR + diffusion work of the unit | {r['unit_tflop']:.2f} TFLOP |")
    print(f"| floor at the square-product rate | AR {r['floor_s']['ar']:.1f} s + diffusion "
          f"{r['floor_s']['diffusion']:.1f} s = {r['floor_s']['ar+diffusion']:.1f} s |")
    print(f"| at the measured rates | AR {r['at_measured_rates_s']['ar']:.1f} s + diffusion "
          f"{r['at_measured_rates_s']['diffusion']:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
