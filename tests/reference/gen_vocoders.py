"""Goldens for the UnivNet vocoder, the HiFi-GAN decoder, the RLGs and the classifier.

Run in the ORIGINAL's venv, from the repository root:

    /work/ref/.venv/bin/python -m tests.reference.gen_vocoders

Writes tests/reference/goldens/vocoders/{univnet,hifigan,rlg,classifier}.pt.  Each holds a list
of cases: the constructor arguments, the seed, ``detweights.digest`` of the original's state
dict, the inputs and the outputs.

Weight norm (UnivNet, HiFi-GAN): the original is built weight-normed, as the checkpoints are, and
``detweights.fill_`` fills its ``weight_g`` / ``weight_v``.  Our tests wrap the same convs of our
plain model in ``torch.nn.utils.weight_norm`` (identical names, hence identical draws and digest),
then fold the state dict with ``convert_state_dict`` and load it strictly, so the checkpoint
conversion is tested along with the network.  The original runs with weight norm removed, as
``api.py`` does (``eval(inference=True)``).

Each model is also run once at its official size (marked ``official``; our tests run those
cases only with ``-m slow``) on a short input.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from tests.reference import detweights

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.nn.utils.weight_norm deprecation

from tortoise.models.classifier import AudioMiniEncoderWithClassifierHead  # noqa: E402
from tortoise.models.hifigan_decoder import HifiganGenerator  # noqa: E402
from tortoise.models.random_latent_generator import RandomLatentConverter  # noqa: E402
from tortoise.models.vocoder import UnivNetGenerator  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens", "vocoders")


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- UnivNet
UNIVNET_CONFIGS = {
    "tiny": dict(noise_dim=16, channel_size=8, dilations=[1, 3, 9], strides=[4, 2], lReLU_slope=0.2,
                 kpnet_conv_size=3, hop_length=8, n_mel_channels=20),
    "odd_stride": dict(noise_dim=8, channel_size=4, dilations=[1, 3], strides=[3, 2], lReLU_slope=0.1,
                       kpnet_conv_size=5, hop_length=6, n_mel_channels=12),
    "official": dict(noise_dim=64, channel_size=32, dilations=[1, 3, 9, 27], strides=[8, 8, 4], lReLU_slope=0.2,
                     kpnet_conv_size=3, hop_length=256, n_mel_channels=100),
}


KERNEL_GAIN = 0.1


@torch.no_grad()
def condition_univnet_(model: torch.nn.Module) -> None:
    """Scale the kernel predictors' kernel-conv gains (``weight_g``) by KERNEL_GAIN.

    With plain ``fill_`` weights the predicted LVC kernels are large (|k| ~ 100 at official size,
    driven by the -11.5 silence frames), each LVC layer then amplifies by ~100 and the official-size
    net turns chaotic: float32 rounding alone moves its output by 0.07 (measured against float64),
    so no two implementations could agree to 1e-4.  At 0.1 the float32-vs-float64 error is ~2e-6
    and the output still depends on the mel.  Our tests apply the same step before the digest."""
    for block in model.res_stack:
        block.kernel_predictor.kernel_conv.weight_g.mul_(KERNEL_GAIN)


@torch.no_grad()
def univnet_cases() -> list[dict]:
    cases = []
    for name, seed, batch, frames in [("tiny", 0, 2, 7), ("tiny", 1, 1, 5), ("odd_stride", 2, 2, 6),
                                      ("official", 3, 1, 4)]:
        cfg = UNIVNET_CONFIGS[name]
        model = UnivNetGenerator(**cfg)
        detweights.fill_(model, seed)
        condition_univnet_(model)
        digest = detweights.digest(model)
        model.eval(inference=True)  # removes weight norm, as api.py does
        # Mels in the range the diffusion decoder produces (log-magnitudes, about -11.5 .. 2.3).
        mel = _randn(seed + 100, batch, cfg["n_mel_channels"], frames) * 2.0 - 5.0
        z = _randn(seed + 200, batch, cfg["noise_dim"], frames + 10)
        wav = model.inference(mel, z=z)
        # z=None: the original draws from the global CPU generator; ours takes a seeded Generator.
        torch.manual_seed(seed + 300)
        wav_drawn = model.inference(mel)
        cases.append(dict(name=name, config=cfg, seed=seed, digest=digest, mel=mel, z=z, wav=wav,
                          noise_seed=seed + 300, wav_drawn=wav_drawn, raw=model(mel, z[:, :, :frames])))
    return cases


# --------------------------------------------------------------------------- HiFi-GAN
HIFI_CONFIGS = {
    "tiny": dict(in_channels=32, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 2,
                 resblock_kernel_sizes=[3, 5], upsample_kernel_sizes=[4, 4], upsample_initial_channel=32,
                 upsample_factors=[2, 2], cond_channels=16, conv_post_bias=True),
    "type2_nocond": dict(in_channels=12, out_channels=2, resblock_type="2", resblock_dilation_sizes=[[1, 3], [2, 5]],
                         resblock_kernel_sizes=[3, 7], upsample_kernel_sizes=[6, 4], upsample_initial_channel=16,
                         upsample_factors=[3, 2], cond_channels=0, conv_post_bias=False),
    "official": dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                     resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                     upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2], cond_channels=1024,
                     conv_post_bias=True),
}


class _CpuOnlyTo:
    """Make ``tensor.to(<accelerator>)`` a no-op: the original's ``inference`` moves its input to a
    hard-coded accelerator, which this CPU machine lacks.  Nothing else in the call is touched."""

    def __enter__(self):
        self.orig = torch.Tensor.to

        def to(t, *args, **kwargs):
            if len(args) == 1 and not kwargs and isinstance(args[0], str) and torch.device(args[0]).type != "cpu":
                return t
            return self.orig(t, *args, **kwargs)

        torch.Tensor.to = to
        return self

    def __exit__(self, *exc):
        torch.Tensor.to = self.orig


@torch.no_grad()
def hifigan_cases() -> list[dict]:
    cases = []
    for name, seed, batch, steps in [("tiny", 10, 1, 6), ("tiny", 11, 2, 5), ("type2_nocond", 12, 2, 9),
                                     ("official", 13, 1, 3)]:
        cfg = HIFI_CONFIGS[name]
        model = HifiganGenerator(**cfg).eval()
        detweights.fill_(model, seed)
        digest = detweights.digest(model)
        model.remove_weight_norm()
        case = dict(name=name, config=cfg, seed=seed, digest=digest)
        if cfg["cond_channels"] > 0:
            latents = _randn(seed + 100, batch, steps, cfg["in_channels"])
            g = _randn(seed + 200, 1, cfg["cond_channels"])  # api_fast passes the (1, 1024) AR latent
            with _CpuOnlyTo():
                wav = model.inference(latents, g)
            case.update(latents=latents, g=g, wav=wav)
        else:
            x = _randn(seed + 100, batch, cfg["in_channels"], steps)
            case.update(x=x, out=model(x))
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- RLG
@torch.no_grad()
def rescale_equal_linear_(model: torch.nn.Module) -> None:
    """Give the equalised-lr layers their trained scale: ``fill_`` draws N(0,1)/sqrt(fan_in), which the
    run-time factor lr_mul/sqrt(fan_in) would shrink to nothing after five layers (the output would not
    depend on the noise).  Stored weights ~ N(0,1)/lr_mul, as the original's init, keep the signal.
    Our test applies the same step."""
    for layer in model.layers[:-1]:
        layer.weight.mul_(layer.weight.shape[1] ** 0.5 / layer.lr_mul)


@torch.no_grad()
def rlg_cases() -> list[dict]:
    cases = []
    for name, channels, seed, batch in [("tiny", 16, 20, 3), ("tiny", 16, 21, 1), ("official_auto", 1024, 22, 2),
                                        ("official_diffuser", 2048, 23, 1)]:
        model = RandomLatentConverter(channels).eval()
        detweights.fill_(model, seed)
        rescale_equal_linear_(model)
        noise = _randn(seed + 100, batch, channels)
        torch.manual_seed(seed + 300)
        drawn = model(torch.zeros(batch))  # draws randn(batch, channels) from the global CPU generator
        cases.append(dict(name=name, channels=channels, seed=seed, digest=detweights.digest(model), noise=noise,
                          out=model.layers(noise), noise_seed=seed + 300, drawn=drawn))
    return cases


# --------------------------------------------------------------------------- classifier
CLASSIFIER_CONFIGS = {
    "tiny": dict(spec_dim=1, embedding_dim=32, depth=2, downsample_factor=4, resnet_blocks=2, attn_blocks=2,
                 num_attn_heads=2, base_channels=8, dropout=0, kernel_size=5, distribute_zero_label=False),
    "k3": dict(spec_dim=1, embedding_dim=48, depth=3, downsample_factor=2, resnet_blocks=1, attn_blocks=1,
               num_attn_heads=4, base_channels=16, dropout=0, kernel_size=3, distribute_zero_label=False),
    "official": dict(spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2, attn_blocks=4,
                     num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5, distribute_zero_label=False),
}


@torch.no_grad()
def classifier_cases() -> list[dict]:
    cases = []
    for name, seed, batch, samples in [("tiny", 30, 2, 1000), ("tiny", 31, 1, 777), ("k3", 32, 2, 300),
                                       ("official", 33, 1, 6000)]:
        cfg = CLASSIFIER_CONFIGS[name]
        model = AudioMiniEncoderWithClassifierHead(2, **cfg).eval()
        detweights.fill_(model, seed)
        x = (_randn(seed + 100, batch, 1, samples) * 0.3).clamp(-1, 1)
        logits = model(x)
        # classify_audio_clip: a (1, samples) clip from load_audio → (1, 1, samples) → softmax[0][0]
        clip = x[0]
        prob = F.softmax(model(clip.cpu().unsqueeze(0)), dim=-1)[0][0]
        cases.append(dict(name=name, config=cfg, seed=seed, digest=detweights.digest(model), x=x, logits=logits,
                          clip=clip, prob=prob))
    return cases


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for fname, make in [("univnet.pt", univnet_cases), ("hifigan.pt", hifigan_cases), ("rlg.pt", rlg_cases),
                        ("classifier.pt", classifier_cases)]:
        cases = make()
        path = os.path.join(OUT, fname)
        torch.save({"torch": str(torch.__version__), "cases": cases}, path)
        print(f"wrote {path} ({os.path.getsize(path):,} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
