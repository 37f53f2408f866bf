"""What the parity suite runs: every model's stages, with fixed random weights and fixed inputs.

A :class:`Case` builds a model (tiny config filled by ``tests/reference/detweights.fill_``, or a
full-size checkpoint from ``--full-size DIR``), makes its inputs once on the CPU from a seeded
generator, and runs its stages on a :class:`Target` (a device and a dtype), returning one
:class:`Output` per stage.  The reference is the same ``run`` on the CPU in float32.

Models and inputs are placed the way the pipeline places them: each model cast whole with
``Module.to(dtype)`` (``load_model(dtype=...)``), floating inputs cast to the stage dtype, integer
tensors (tokens, lengths) unchanged, diffusion timesteps kept in float32 (the model embeds them in
float32).  The exception is the pipeline's too: a model with ``layer_autocast_dtype`` (the
diffusion decoder) takes float32 inputs and runs its main layers under autocast to a half dtype,
where the backend can autocast to it (``use_layer_autocast``: those layers' conv/linear weights
stored in the half dtype, everything else float32).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tests.reference.detweights import fill_

WEIGHT_SEED = 2024


@dataclass(frozen=True)
class Target:
    """Where and in which dtype a stage runs (``autocast``: the backend can autocast to ``dtype``)."""

    device: torch.device
    dtype: torch.dtype
    autocast: bool = False

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """A floating tensor moved and cast to the target; any other tensor only moved."""
        if x.is_floating_point():
            return x.to(device=self.device, dtype=self.dtype)
        return x.to(self.device)

    def model(self, model: nn.Module) -> nn.Module:
        """A copy of the CPU float32 ``model`` on the target (the reference model is never modified)."""
        return copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()


CPU_FLOAT32 = Target(torch.device("cpu"), torch.float32)


def uses_autocast(model: nn.Module, target: Target) -> bool:
    """Whether the pipeline would run ``model``'s layers under autocast on ``target`` (``use_layer_autocast``)."""
    return target.dtype != torch.float32 and target.autocast and hasattr(model, "layer_autocast_dtype")


def place(model: nn.Module, target: Target) -> tuple[nn.Module, Target]:
    """A copy of the CPU float32 ``model`` placed as the pipeline would, and the target of its inputs."""
    if uses_autocast(model, target):
        placed = copy.deepcopy(model).to(target.device).eval().use_layer_autocast(target.dtype)
        return placed, Target(target.device, torch.float32)
    return target.model(model), target


@dataclass
class Output:
    """One stage's result; ``logits`` marks class scores (also checked by top-k agreement)."""

    tensor: torch.Tensor
    logits: bool = False


Outputs = dict[str, Output]


@dataclass(frozen=True)
class Case:
    """One model of the suite.

    ``stage`` is the Policy stage whose dtype the pipeline runs this model in (None: the pipeline
    keeps it in float32).  ``inputs(model, generator)`` returns CPU float32 inputs (it may run the
    model to make them, e.g. a conditioning latent for the later stages); ``run(model, inputs,
    target)`` runs every stage of an already-placed model.
    """

    name: str
    file: str
    stage: str | None
    build_tiny: Callable[[], nn.Module]
    inputs: Callable[[nn.Module, torch.Generator], dict[str, Any]]
    run: Callable[[nn.Module, dict[str, Any], Target], Outputs]


def _tiny(cls: type, config: Any) -> Callable[[], nn.Module]:
    return lambda: fill_(cls(config), WEIGHT_SEED).eval()


def _randint(g: torch.Generator, high: int, *shape: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=g)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


# ------------------------------------------------------------------------------------ autoregressive

DECODE_STEPS = 20


def _ar_inputs(model, g: torch.Generator) -> dict[str, Any]:
    c = model.config
    text = _randint(g, c.number_text_tokens, 2, 12, low=1)
    codes = _randint(g, 8192, 2, 16)
    mels = _randn(g, 2, 2, c.mel_channels, 48)
    with torch.no_grad():
        cond = model.get_conditioning(mels)
        # The decode stage is teacher-forced with the reference's own greedy codes (stop masked, as the
        # pipeline's min_length does), so every backend sees the same sequence and step logits line up.
        cache = model.new_cache(2, model.prompt_length(text.shape[1]) + DECODE_STEPS)
        logits, _ = model.prefill(cond, text, cache)
        greedy = []
        for step in range(DECODE_STEPS):
            logits = logits.clone()
            logits[:, c.stop_mel_token] = float("-inf")
            greedy.append(logits.argmax(-1))
            if step + 1 < DECODE_STEPS:
                logits, _ = model.decode_step(greedy[-1], step + 1, cache)
    return {"mels": mels, "cond": cond, "text": text, "text_lengths": torch.tensor([12, 9]), "codes": codes,
            "wav_lengths": torch.tensor([16 * c.mel_length_compression, 11 * c.mel_length_compression]),
            "greedy": torch.stack(greedy, dim=1)}


def _ar_decode(model, x: dict, t: Target, tensor_position: bool) -> torch.Tensor:
    text, greedy = t.put(x["text"]), t.put(x["greedy"])
    cache = model.new_cache(2, model.prompt_length(text.shape[1]) + DECODE_STEPS)
    logits, _ = model.prefill(t.put(x["cond"]), text, cache)
    steps = [logits]
    position = torch.zeros((), dtype=torch.long, device=t.device)
    for k in range(1, DECODE_STEPS):
        if tensor_position:
            position.fill_(k)  # the static-shape path that graph capture replays
        logits, _ = model.decode_step(greedy[:, k - 1], position if tensor_position else k, cache)
        steps.append(logits)
    return torch.stack(steps)  # (steps, B, V)


def _ar_run(model, x: dict, t: Target) -> Outputs:
    cond, text, codes = t.put(x["cond"]), t.put(x["text"]), t.put(x["codes"])
    lengths, wavs = t.put(x["text_lengths"]), t.put(x["wav_lengths"])
    text_logits, mel_logits = model(cond, text, lengths, codes, wavs)
    return {
        "conditioning": Output(model.get_conditioning(t.put(x["mels"]))),
        "text_logits": Output(text_logits, logits=True),
        "mel_logits": Output(mel_logits, logits=True),
        "latents": Output(model(cond, text, lengths, codes, wavs, return_latent=True, clip_inputs=False)),
        "decode[int]": Output(_ar_decode(model, x, t, tensor_position=False), logits=True),
        "decode[tensor]": Output(_ar_decode(model, x, t, tensor_position=True), logits=True),
    }


# ------------------------------------------------------------------------------------ CLVP / CVVP

# Long enough that rotary positions pass 256, where bfloat16 stops holding integers exactly
# (the pipeline scores up to 500 codes).
CLVP_CODES = 300


def _clvp_inputs(model, g: torch.Generator) -> dict[str, Any]:
    c = model.config
    return {"text": _randint(g, c.num_text_tokens, 1, 40, low=1), "codes": _randint(g, c.num_speech_tokens, 4, CLVP_CODES)}


def _clvp_run(model, x: dict, t: Target) -> Outputs:
    text, codes = t.put(x["text"]), t.put(x["codes"])
    return {
        "text_latent": Output(model.embed_text(text)),
        "speech_latent": Output(model.embed_speech(codes)),
        "score": Output(model.score(text, codes)[None], logits=True),
    }


def _cvvp_inputs(model, g: torch.Generator) -> dict[str, Any]:
    c = model.config
    return {"mels": _randn(g, 2, c.mel_channels, 64), "codes": _randint(g, c.mel_codes or 8192, 4, 120)}


def _cvvp_run(model, x: dict, t: Target) -> Outputs:
    return {"score": Output(model.score(t.put(x["mels"]), t.put(x["codes"]))[None], logits=True)}


# ------------------------------------------------------------------------------------ diffusion

TIMESTEPS = (0, 50, 1000, 3999)


def _diffusion_inputs(model, g: torch.Generator) -> dict[str, Any]:
    c = model.config
    latents = _randn(g, 1, 12, c.in_latent_channels)
    length = 12 * 4 * 24000 // 22050
    mels = _randn(g, 1, 2, c.in_channels, 64)
    with torch.no_grad():
        voice = model.get_conditioning(mels)
        aligned = model.timestep_independent(latents, voice, length)
    return {"mels": mels, "voice": voice, "latents": latents, "length": length,
            "aligned": aligned.expand(len(TIMESTEPS), -1, -1),
            "x": _randn(g, len(TIMESTEPS), c.in_channels, length),
            "timesteps": torch.tensor(TIMESTEPS, dtype=torch.float32)}


def _diffusion_run(model, x: dict, t: Target) -> Outputs:
    c = model.config.in_channels
    noisy, steps = t.put(x["x"]), x["timesteps"].to(t.device)  # timesteps stay float32
    aligned = t.put(x["aligned"])
    out = {"conditioning": Output(model.get_conditioning(t.put(x["mels"]))),
           "aligned": Output(model.timestep_independent(t.put(x["latents"]), t.put(x["voice"]), x["length"]))}
    for label, free in (("", False), ("[cond-free]", True)):
        y = model(noisy, steps, precomputed_aligned_embeddings=aligned, conditioning_free=free)
        out[f"eps{label}"] = Output(y[:, :c])
        out[f"variance{label}"] = Output(y[:, c:])
    return out


# ------------------------------------------------------------------------------------ vocoders and the rest

def _univnet_mel(g: torch.Generator, channels: int, frames: int = 24) -> torch.Tensor:
    # log-mel-like values: silence is -11.5, speech peaks near 2
    return _randn(g, 1, channels, frames) * 2.0 - 5.0


def condition_univnet(model: nn.Module) -> nn.Module:
    """Scale a random UnivNet's kernel predictors so they emit conv-sized kernels (in place).

    With ``fill_`` weights the predicted location-variable kernels come out ~50x larger than a
    conv of that fan-in would have (std ~10 instead of 1/sqrt(C_in k)), so each LVC layer
    amplifies perturbations ~10x: rounding the float32 *weights* to bfloat16 alone moves the
    waveform by 66 % of its range.  That measures the chaos of the random net, not the arithmetic
    of a backend.  Scaling each kernel predictor's outputs to conv-like statistics (kernels std
    1/sqrt(C_in k), biases std 0.1, as a trained vocoder has) leaves a network where weight
    rounding moves the output by 0.3 % and the comparison means something.
    """
    probe = _univnet_mel(torch.Generator().manual_seed(WEIGHT_SEED), model.config.n_mel_channels)
    with torch.no_grad():
        for block in model.res_stack:
            kp = block.kernel_predictor
            kernels, bias = kp(probe)
            k_scale = (kp.conv_in_channels * kp.conv_kernel_size) ** -0.5 / float(kernels.std())
            b_scale = 0.1 / float(bias.std())
            for conv, scale in ((kp.kernel_conv, k_scale), (kp.bias_conv, b_scale)):
                conv.weight.mul_(scale)
                conv.bias.mul_(scale)
    return model


def _tiny_univnet(config: Any) -> Callable[[], nn.Module]:
    from tortoise_xpu.models.vocoder import UnivNetGenerator

    return lambda: condition_univnet(fill_(UnivNetGenerator(config), WEIGHT_SEED).eval())


def _univnet_inputs(model, g: torch.Generator) -> dict[str, Any]:
    c = model.config
    mel = _univnet_mel(g, c.n_mel_channels)
    return {"mel": mel, "z": _randn(g, 1, c.noise_dim, mel.shape[-1] + 10)}


def _univnet_run(model, x: dict, t: Target) -> Outputs:
    return {"waveform": Output(model.inference(t.put(x["mel"]), z=t.put(x["z"])))}


def _hifigan_inputs(model, g: torch.Generator) -> dict[str, Any]:
    c = model.config
    return {"latents": _randn(g, 1, 10, c.in_channels), "g": _randn(g, 1, c.cond_channels)}


def _hifigan_run(model, x: dict, t: Target) -> Outputs:
    return {"waveform": Output(model.inference(t.put(x["latents"]), t.put(x["g"])))}


def _rlg_inputs(model, g: torch.Generator) -> dict[str, Any]:
    return {"noise": _randn(g, 3, model.config.channels)}


def _rlg_run(model, x: dict, t: Target) -> Outputs:
    return {"latent": Output(model.convert(t.put(x["noise"])))}


def _classifier_inputs(model, g: torch.Generator) -> dict[str, Any]:
    return {"wav": (_randn(g, 2, model.config.spec_dim, 8000) * 0.3).clamp(-1, 1)}


def _classifier_run(model, x: dict, t: Target) -> Outputs:
    return {"logits": Output(model(t.put(x["wav"])), logits=True)}


# ------------------------------------------------------------------------------------ the list

def all_cases() -> list[Case]:
    """Every model case, in pipeline order."""
    from tortoise_xpu.models.autoregressive import ARConfig, UnifiedVoice
    from tortoise_xpu.models.classifier import AudioMiniEncoderWithClassifierHead, ClassifierConfig
    from tortoise_xpu.models.clvp import CLVP, CLVPConfig
    from tortoise_xpu.models.cvvp import CVVP, CVVPConfig
    from tortoise_xpu.models.diffusion_decoder import DiffusionConfig, DiffusionTts
    from tortoise_xpu.models.hifigan import HifiGanConfig, HifiganGenerator
    from tortoise_xpu.models.random_latent import RandomLatentConverter, RLGConfig
    from tortoise_xpu.models.vocoder import UnivNetConfig

    rlg = RLGConfig.tiny()
    return [
        Case("autoregressive", "autoregressive.pth", "ar", _tiny(UnifiedVoice, ARConfig.tiny()), _ar_inputs, _ar_run),
        Case("clvp", "clvp2.pth", "clvp", _tiny(CLVP, CLVPConfig.tiny()), _clvp_inputs, _clvp_run),
        Case("cvvp", "cvvp.pth", "clvp", _tiny(CVVP, CVVPConfig.tiny()), _cvvp_inputs, _cvvp_run),
        Case("diffusion", "diffusion_decoder.pth", "diffusion", _tiny(DiffusionTts, DiffusionConfig.tiny()),
             _diffusion_inputs, _diffusion_run),
        Case("univnet", "vocoder.pth", "vocoder", _tiny_univnet(UnivNetConfig.tiny()),
             _univnet_inputs, _univnet_run),
        Case("hifigan", "hifidecoder.pth", None, _tiny(HifiganGenerator, HifiGanConfig.tiny()),
             _hifigan_inputs, _hifigan_run),
        Case("rlg_auto", "rlg_auto.pth", None, _tiny(RandomLatentConverter, rlg), _rlg_inputs, _rlg_run),
        Case("rlg_diffuser", "rlg_diffuser.pth", None,
             _tiny(RandomLatentConverter, dataclasses.replace(rlg, channels=2 * rlg.channels)), _rlg_inputs, _rlg_run),
        Case("classifier", "classifier.pth", None, _tiny(AudioMiniEncoderWithClassifierHead, ClassifierConfig.tiny()),
             _classifier_inputs, _classifier_run),
    ]


def build(case: Case, full_size_dir: Path | None) -> nn.Module:
    """The case's CPU float32 model: tiny with fixed random weights, or the checkpoint in ``full_size_dir``."""
    if full_size_dir is None:
        return case.build_tiny()
    from tortoise_xpu.models.loading import load_model

    return load_model(case.file, full_size_dir).float().eval()


@torch.no_grad()
def run(case: Case, model: nn.Module, inputs: dict[str, Any], target: Target) -> Outputs:
    """All stages of ``case`` on ``target`` (``model`` is the CPU float32 one; it is copied there)."""
    placed, target = (model, target) if target == CPU_FLOAT32 else place(model, target)
    outputs = case.run(placed, inputs, target)
    return {k: Output(v.tensor.detach().float().cpu(), v.logits) for k, v in outputs.items()}
