"""Stage kernels of the full-size models in float32, bfloat16 and int8 on this CPU: what the precision policy rests on.

    python benchmarks/cpu_precision.py --models-dir DIR [--threads 2] [--stages ar diffusion clvp] [--json OUT]

Times, on the official-size networks loaded from DIR (the official file format):

* ``ar``: one AR decode step at batch 1 (streaming) and batch 16 (the candidates of ``tts``), after a
  100-position prompt, in float32 (weight-first linears, the pipeline's float32 path), bfloat16
  (the model cast) and int8 (``models/quant.py``: weight-only int8 GPT-2 linears and mel head);
* ``diffusion``: one denoiser call over 174 frames (the 40-code unit), float32 and the pipeline's
  half scheme (``use_layer_autocast(bfloat16)``);
* ``clvp``: scoring 16 candidates of 40 codes, float32 and bfloat16.

Prints a table (ms per call, best of ``--repeat``) with each precision's speed-up over float32 and
the CPU's flags; ``--json`` writes it.  Numbers from a shared machine are noisy: compare within a run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_ms(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def ar_rows(models_dir: str, repeat: int) -> list[dict]:
    from tortoise_xpu.models.loading import load_model
    from tortoise_xpu.models.quant import quantize_ar_int8

    base = load_model("autoregressive", models_dir)
    rows = []
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, base.config.model_dim, generator=g)
    text = torch.randint(1, 255, (1, 96), generator=g)
    variants = {}
    variants["float32"] = base.use_weight_first_linears(True)
    variants["bfloat16"] = copy.deepcopy(base).use_weight_first_linears(False).to(torch.bfloat16)
    q = copy.deepcopy(base)
    quantize_ar_int8(q)
    variants["int8"] = q
    if torch.get_num_threads() > 1:  # the int8 products on one intra-op thread (Policy.ar_int8_one_thread)
        q1 = copy.deepcopy(q)
        quantize_ar_int8(q1, one_thread=True)
        variants["int8, one thread"] = q1
    for batch in (1, 16):
        times = {}
        for name, model in variants.items():
            dtype = torch.bfloat16 if name == "bfloat16" else torch.float32
            cache = model.new_cache(batch, model.prompt_length(text.shape[1]) + 64, dtype=dtype)
            with torch.no_grad():
                model.prefill(cond.to(dtype), text, cache)
                tokens = torch.randint(0, 8192, (batch,), generator=g)
                pos = [1]

                def step():
                    model.decode_step(tokens, pos[0], cache)
                    pos[0] = pos[0] % 60 + 1

                times[name] = best_ms(step, repeat)
        rows += [{"stage": f"ar step, batch {batch}", "precision": k, "ms": v, "speedup": times["float32"] / v}
                 for k, v in times.items()]
    del variants, q, base
    return rows


def diffusion_rows(models_dir: str, repeat: int) -> list[dict]:
    from tortoise_xpu.models.loading import load_model

    model = load_model("diffusion", models_dir)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 40, 1024, generator=g)
    cond = torch.randn(1, 2048, generator=g)
    times = {}
    for name in ("float32", "bfloat16"):
        m = model if name == "float32" else copy.deepcopy(model).use_layer_autocast(torch.bfloat16)
        with torch.no_grad():
            emb = m.timestep_independent(latents, cond, 174, False)
            denoise = m.denoiser(emb, True)
            x = torch.randn(1, 100, 174, generator=g)
            t = torch.tensor([500])
            times[name] = best_ms(lambda: denoise(x, t, False), repeat)
    return [{"stage": "diffusion step, 174 frames", "precision": k, "ms": v, "speedup": times["float32"] / v}
            for k, v in times.items()]


def clvp_rows(models_dir: str, repeat: int) -> list[dict]:
    from tortoise_xpu.models.loading import load_model

    model = load_model("clvp", models_dir)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(1, 255, (1, 30), generator=g)
    codes = torch.randint(0, 8192, (16, 40), generator=g)
    times = {}
    for name in ("float32", "bfloat16"):
        m = model if name == "float32" else copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            times[name] = best_ms(lambda: m.score(text, codes), repeat)
    return [{"stage": "clvp, 16 x 40 codes", "precision": k, "ms": v, "speedup": times["float32"] / v}
            for k, v in times.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--stages", nargs="+", default=["ar", "diffusion", "clvp"], choices=["ar", "diffusion", "clvp"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tortoise_xpu.backends.cpu import cpu_flags

    flags, source = cpu_flags()
    rows = []
    for stage in args.stages:
        rows += {"ar": ar_rows, "diffusion": diffusion_rows, "clvp": clvp_rows}[stage](args.models_dir, args.repeat)
    print(f"CPU flags ({source}): {' '.join(sorted(flags))}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    print("| stage | precision | ms | speed-up over float32 |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['precision']} | {r['ms']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"flags": sorted(flags), "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
