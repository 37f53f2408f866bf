"""Golden: the key names and shapes of every OFFICIAL checkpoint file, from the ORIGINAL classes.

Run from the repository root with the reference venv:

    /work/ref/.venv/bin/python -m tests.reference.gen_assets

Each original class is built on the meta device with the constructor values the original's
``api.py`` / ``api_fast.py`` use (anchors.md §3), and its ``state_dict()`` key → shape list is
saved, wrapped the way the file is (``vocoder.pth`` as ``{'model_g': ...}``).  This is exactly
what ``make_random_weights.py`` (and the real files) contain, without writing 4 GB: our
``tests/test_loading.py`` checks that ``models random-weights`` writes the same keys and shapes
and that every such file loads strictly into our networks.  Output:
``tests/reference/goldens/assets/official_keys.json`` (plain JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "goldens" / "assets" / "official_keys.json"


def _original_models() -> dict:
    """File name → (original module built on meta, wrapper key or None)."""
    sys.path.insert(0, "/work/ref")  # compat.py: lets transformers 4.31 import beside newer tokenizers
    try:
        from compat import prepare_transformers

        prepare_transformers()
    except ImportError:
        pass
    from tortoise.models.autoregressive import UnifiedVoice
    from tortoise.models.classifier import AudioMiniEncoderWithClassifierHead
    from tortoise.models.clvp import CLVP
    from tortoise.models.cvvp import CVVP
    from tortoise.models.diffusion_decoder import DiffusionTts
    from tortoise.models.hifigan_decoder import HifiganGenerator
    from tortoise.models.random_latent_generator import RandomLatentConverter
    from tortoise.models.vocoder import UnivNetGenerator

    with torch.device("meta"):
        built = {
            "autoregressive.pth": UnifiedVoice(
                max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30, model_dim=1024,
                heads=16, number_text_tokens=255, start_text_token=255, checkpointing=False,
                train_solo_embeddings=False),
            "diffusion_decoder.pth": DiffusionTts(
                model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
                in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0,
                unconditioned_percentage=0),
            "clvp2.pth": CLVP(
                dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
                text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20, speech_heads=12,
                speech_seq_len=430, use_xformers=True),
            "cvvp.pth": CVVP(
                model_dim=512, transformer_heads=8, dropout=0, mel_codes=8192, conditioning_enc_depth=8,
                cond_mask_percentage=0, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1),
            "vocoder.pth": UnivNetGenerator(),
            "rlg_auto.pth": RandomLatentConverter(1024),
            "rlg_diffuser.pth": RandomLatentConverter(2048),
            "classifier.pth": AudioMiniEncoderWithClassifierHead(
                2, spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2, attn_blocks=4,
                num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5, distribute_zero_label=False),
            "hifidecoder.pth": HifiganGenerator(
                in_channels=1024, out_channels=1, resblock_type="1",
                resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], resblock_kernel_sizes=[3, 7, 11],
                upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512,
                upsample_factors=[8, 8, 2, 2], cond_channels=1024),
        }
    wrappers = {"vocoder.pth": "model_g"}
    return {name: (model, wrappers.get(name)) for name, model in built.items()}


def main() -> None:
    files = {}
    for name, (model, wrapper) in _original_models().items():
        sd = model.state_dict()
        files[name] = {
            "wrapper": wrapper,
            "params": sum(p.numel() for p in model.parameters()),
            "keys": [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()],
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": "tortoise-tts 3.0.0 classes on the meta device", "files": files},
                              indent=0, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    for name, entry in files.items():
        print(f"  {name:<22} {len(entry['keys']):5d} keys  {entry['params']:>12,} params")


if __name__ == "__main__":
    main()
