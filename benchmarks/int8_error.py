"""The error of int8 AR weights (models/quant.py) against float32 on the full-size AR model.

    python benchmarks/int8_error.py --models-dir DIR [--steps 32] [--seeds 2] [--threads 2]

Loads ``autoregressive.pth`` from DIR (the official file format), quantises a copy, and for each
seed (a random voice latent and 40 random text tokens) compares, over ``--steps`` decode steps:

* the logits of every step, teacher-forced on float32's greedy codes: scaled max error
  (``max |int8 - fp32| / max |fp32|``) and the mean top-5 overlap, the parity suite's measures
  (tests/parity/tolerances.py, "int8": 1e-1 and >= 85 %);
* free-running greedy codes: the fraction equal to float32's, and the first step where they part.

The random full-size checkpoints have Gaussian weights, the forgiving case for per-channel int8
(tests/test_quant.py measures heavy-tailed weights); no real checkpoint can be downloaded here.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def logits_run(model, cond, text, steps: int, codes: torch.Tensor | None = None):
    """Greedy decode (stop token masked) or teacher-forced on ``codes``: (logits (steps, V), codes (steps,))."""
    cache = model.new_cache(1, model.prompt_length(text.shape[1]) + steps)
    logits, _ = model.prefill(cond, text, cache)
    out, picked = [], []
    for k in range(steps):
        logits = logits.float().clone()
        logits[:, model.config.stop_mel_token] = float("-inf")
        out.append(logits[0])
        picked.append(int(codes[k]) if codes is not None else int(logits.argmax(-1)))
        if k + 1 < steps:
            logits, _ = model.decode_step(torch.tensor([picked[-1]]), k + 1, cache)
    return torch.stack(out), torch.tensor(picked)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from tortoise_xpu.models.loading import load_model
    from tortoise_xpu.models.quant import quantize_ar_int8

    ref_model = load_model("autoregressive", a.models_dir)
    q_model = copy.deepcopy(ref_model)
    report = quantize_ar_int8(q_model)
    rows = []
    with torch.no_grad():
        for seed in range(a.seeds):
            g = torch.Generator().manual_seed(seed)
            cond = torch.randn(1, ref_model.config.model_dim, generator=g)
            text = torch.randint(1, 255, (1, 40), generator=g)
            ref, greedy = logits_run(ref_model, cond, text, a.steps)
            out, _ = logits_run(q_model, cond, text, a.steps, codes=greedy)
            _, greedy_q = logits_run(q_model, cond, text, a.steps)
            finite = torch.isfinite(ref)
            err = float((out - ref).abs()[finite].max() / ref[finite].abs().max())
            top_ref, top_out = ref.topk(5, -1).indices, out.topk(5, -1).indices
            overlap = float((top_out[:, :, None] == top_ref[:, None, :]).any(-1).float().mean())
            same = (greedy_q == greedy)
            first_diff = int((~same).nonzero()[0, 0]) if bool((~same).any()) else a.steps
            rows.append({"seed": seed, "scaled_max_error": err, "top5_overlap": overlap,
                         "greedy_agreement": float(same.float().mean()), "greedy_first_difference": first_diff})
    print(f"int8 AR weights: {report.layers} layers, {report.float_bytes / 2**20:.0f} MiB float32 -> "
          f"{report.int8_bytes / 2**20:.0f} MiB int8")
    print("| seed | logits scaled max error | top-5 overlap | greedy codes equal | first differing step |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['scaled_max_error']:.2e} | {r['top5_overlap']:.2f} | "
              f"{r['greedy_agreement']:.2f} | {r['greedy_first_difference']} of {a.steps} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "steps": a.steps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
