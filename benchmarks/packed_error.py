"""The error of the CPU's packed preparations (models/packed.py) against float32, full size.

    python benchmarks/packed_error.py --models-dir DIR [--steps 32] [--seeds 2] [--frames 174] [--threads 2]

Loads ``autoregressive.pth`` and ``diffusion_decoder.pth`` from DIR (the official file format) and
compares the float32 models with the preparations a CPU whose probe picked bfloat16 runs
(``Policy.packed_weights``):

* AR: every GPT-2 linear and the mel head packed in bfloat16 (``UnifiedVoice.use_packed_linears``),
  the rest of the model cast to bfloat16.  Per seed (a random voice latent, 40 random text tokens):
  the logits of ``--steps`` decode steps teacher-forced on float32's greedy codes (scaled max error
  and top-5 overlap, the parity suite's measures) and the free-running greedy codes.
* Diffusion: every per-step layer in bfloat16 under autocast, packed, on channels-last features
  (``use_layer_autocast(bfloat16, every_step_layer=True).use_packed_convs()``), against float32 and
  against the original's own ``use_fp16`` scheme (first layer float32) unpacked: the ε and variance
  outputs of one denoising step at three timesteps, ``--frames`` frames, random aligned embeddings.

The parity suite's bfloat16 tolerance is 5e-2 of the reference's range (tests/parity/tolerances.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.int8_error import logits_run  # noqa: E402


def scaled_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    finite = torch.isfinite(ref)
    return float((out.float() - ref).abs()[finite].max() / ref[finite].abs().max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--frames", type=int, default=174)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from tortoise_xpu.models.loading import load_model

    out: dict = {"ar": [], "diffusion": []}
    ref_ar = load_model("autoregressive", a.models_dir)
    packed_ar = copy.deepcopy(ref_ar).to(torch.bfloat16).use_packed_linears(torch.bfloat16, rows=16)
    with torch.no_grad():
        for seed in range(a.seeds):
            g = torch.Generator().manual_seed(seed)
            cond = torch.randn(1, ref_ar.config.model_dim, generator=g)
            text = torch.randint(1, 255, (1, 40), generator=g)
            ref, greedy = logits_run(ref_ar, cond, text, a.steps)
            got, _ = logits_run(packed_ar, cond.bfloat16(), text, a.steps, codes=greedy)
            _, greedy_p = logits_run(packed_ar, cond.bfloat16(), text, a.steps)
            top_ref, top_out = ref.topk(5, -1).indices, got.topk(5, -1).indices
            same = greedy_p == greedy
            out["ar"].append({
                "seed": seed, "scaled_max_error": scaled_error(got, ref),
                "top5_overlap": float((top_out[:, :, None] == top_ref[:, None, :]).any(-1).float().mean()),
                "greedy_agreement": float(same.float().mean()),
                "greedy_first_difference": int((~same).nonzero()[0, 0]) if bool((~same).any()) else a.steps})
    del ref_ar, packed_ar

    ref_diff = load_model("diffusion", a.models_dir)
    original_fp16 = copy.deepcopy(ref_diff).use_layer_autocast(torch.bfloat16)
    packed_diff = copy.deepcopy(ref_diff).use_layer_autocast(torch.bfloat16, every_step_layer=True).use_packed_convs()
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(1, ref_diff.in_channels, a.frames, generator=g)
    emb = torch.randn(1, ref_diff.model_channels, a.frames, generator=g)
    c = ref_diff.in_channels
    with torch.no_grad():
        for t in (10, 500, 3999):
            steps = torch.tensor([t])
            ref = ref_diff(x, steps, precomputed_aligned_embeddings=emb)
            orig = original_fp16(x, steps, precomputed_aligned_embeddings=emb)
            got = packed_diff(x, steps, precomputed_aligned_embeddings=emb)
            out["diffusion"].append({
                "timestep": t,
                "eps_error": scaled_error(got[:, :c], ref[:, :c]),
                "variance_error": scaled_error(got[:, c:], ref[:, c:]),
                "original_fp16_eps_error": scaled_error(orig[:, :c], ref[:, :c]),
                "original_fp16_variance_error": scaled_error(orig[:, c:], ref[:, c:])})

    print("| AR seed | logits scaled max error | top-5 overlap | greedy codes equal | first differing step |")
    print("|---|---:|---:|---:|---:|")
    for r in out["ar"]:
        print(f"| {r['seed']} | {r['scaled_max_error']:.2e} | {r['top5_overlap']:.2f} | "
              f"{r['greedy_agreement']:.2f} | {r['greedy_first_difference']} of {a.steps} |")
    print()
    print(f"| diffusion timestep ({a.frames} frames) | ε error | variance error | "
          "original's use_fp16 scheme: ε | variance |")
    print("|---|---:|---:|---:|---:|")
    for r in out["diffusion"]:
        print(f"| {r['timestep']} | {r['eps_error']:.2e} | {r['variance_error']:.2e} | "
              f"{r['original_fp16_eps_error']:.2e} | {r['original_fp16_variance_error']:.2e} |")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
