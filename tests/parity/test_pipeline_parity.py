"""End to end: one seed gives the same speech on every backend as on the CPU in float32.

Two levels:

* The model chain (always runs): tiny models of the pipeline's own configs (the registry's
  ``tiny`` preset, weights from ``detweights.fill_``).  From one seed, every random draw is made
  on the CPU: the random voice's noise (through both RLGs), the text, the diffusion noise, the
  vocoder noise.  Then

  - greedy AR decoding gives the same codes as the CPU in float32 (exactly; at a lower
    precision up to the first step where the reference's own top two lie within the precision's
    tie window, after which the branches may legitimately part);
  - CLVP picks the same candidate (unless the reference's scores tie at that precision);
  - given the reference's codes and the same noise, the AR latents are within the precision's
    tolerance, and so are the diffusion mel and the waveform wherever diffusion runs in float32
    (at lower precisions they are shown, not asserted: see ``CHAOTIC``).

* ``TextToSpeech`` itself (tiny random weights written by ``write_random_weights``), float32 on
  each backend against the CPU: the same seed gives the same waveform.  It skips, saying why,
  while the pipeline cannot run yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tests.parity.cases import CPU_FLOAT32, Target, condition_univnet, place
from tests.parity.compare import Measurement, decisive_prefix, measure, strict_float32, tie_window
from tests.parity.conftest import Setting, check, device_label, setting_for, supports_autocast
from tests.parity.tolerances import TOLERANCES, tolerance_for
from tests.reference.detweights import fill_

# The seed of the draws and of the AR weights (the other models take the next ones).  Chosen so the
# tiny random AR's greedy path is decisive for long at float16: 24/24 steps at float32's tie
# window, 15 at float16's, 1 at bfloat16's (a random model's logits are flat; a trained one's are not).
SEED = 7
STEPS = 24
DIFFUSION_STEPS = 4
CANDIDATES = 6
FILES = {"ar": "autoregressive.pth", "rlg_auto": "rlg_auto.pth", "rlg_diffuser": "rlg_diffuser.pth",
         "clvp": "clvp2.pth", "diffusion": "diffusion_decoder.pth", "vocoder": "vocoder.pth"}
# The Policy stage each model runs in (None: the pipeline keeps it in float32).
STAGES = {"ar": "ar", "rlg_auto": None, "rlg_diffuser": None, "clvp": "clvp", "diffusion": "diffusion",
          "vocoder": "vocoder"}
# Why the mel and waveform are asserted only when diffusion runs in float32: with random weights
# the predicted x0 = (x_t - sqrt(1 - a_T) eps) / sqrt(a_T) multiplies an error in eps by 153 at the
# first of 4 steps (1 / sqrt(a_T) of the 4000-step schedule), and a random net does not contract it
# again as a trained denoiser does: float16 rounding ends as 14 % of the mel's range, bfloat16 as 55 %.
# float32's 1e-7 stays far inside 1e-4.  The diffusion model's own outputs are asserted at every
# precision in test_models_parity.py.
CHAOTIC = "not asserted: random-weight diffusion amplifies rounding, see docs/parity.md"
ACCELERATOR_F32 = "accelerator float32 summation order, amplified x153 by random-weight diffusion"


@pytest.fixture(scope="module")
def chain() -> dict[str, torch.nn.Module]:
    """The tiny pipeline models on the CPU in float32 (fixed random weights)."""
    from tortoise_xpu.models import registry

    models = {}
    for i, (key, file) in enumerate(FILES.items()):
        try:
            model = registry.build(file, "tiny", device="cpu")
        except Exception as exc:  # a model module still being written
            pytest.skip(f"tiny {file} cannot be built yet: {type(exc).__name__}: {exc}")
        models[key] = fill_(model, SEED + i).eval()
    condition_univnet(models["vocoder"])
    ar, rlg_a, rlg_d, diff = models["ar"], models["rlg_auto"], models["rlg_diffuser"], models["diffusion"]
    if rlg_a.config.channels != ar.config.model_dim or rlg_d.config.channels != 2 * diff.config.model_channels:
        pytest.skip("the registry's tiny configs do not fit together yet (RLG widths vs AR / diffusion latents)")
    if models["vocoder"].config.n_mel_channels != diff.config.in_channels:
        pytest.skip("the registry's tiny vocoder does not read the tiny diffusion model's mel bands yet")
    return models


def _draws(chain) -> dict[str, torch.Tensor]:
    """Every random input, from one CPU generator: the same numbers for every backend."""
    g = torch.Generator().manual_seed(SEED)
    ar, clvp = chain["ar"].config, chain["clvp"].config
    return {"voice_ar": torch.randn(1, chain["rlg_auto"].config.channels, generator=g),
            "text": torch.randint(1, min(ar.number_text_tokens, clvp.num_text_tokens), (1, 10), generator=g),
            "voice_diffusion": torch.randn(1, chain["rlg_diffuser"].config.channels, generator=g),
            "replace": torch.rand(CANDIDATES - 1, STEPS, generator=g) < 0.15,
            "codes": torch.randint(0, 8192, (CANDIDATES - 1, STEPS), generator=g)}


class Chain:
    """The tiny models placed on one device, each in its dtype, fed the seed's draws."""

    def __init__(self, chain, device: torch.device, dtypes: dict[str, torch.dtype], autocast: bool = False):
        """``autocast``: the backend can autocast to the half dtypes (the diffusion decoder then keeps
        float32 weights and autocasts its layers, as the pipeline does)."""
        self.device, self.cpu = device, chain
        self.m, self.inputs = {}, {}
        for key, model in chain.items():
            target = Target(device, dtypes[key], autocast)
            if target == CPU_FLOAT32:
                self.m[key], self.inputs[key] = model, target
            else:
                self.m[key], self.inputs[key] = place(model, target)
        self.draws = _draws(chain)
        self.text = self.draws["text"].to(device)

    def _put(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self.inputs[key].put(x)

    @torch.no_grad()
    def voice(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The random voice: CPU noise through both RLGs on the device."""
        return (self.m["rlg_auto"].convert(self._put("rlg_auto", self.draws["voice_ar"])).float(),
                self.m["rlg_diffuser"].convert(self._put("rlg_diffuser", self.draws["voice_diffusion"])).float())

    @torch.no_grad()
    def greedy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy codes (1, STEPS) with the stop token masked, and each step's logits (STEPS, 1, V) on the CPU."""
        ar, stop = self.m["ar"], self.cpu["ar"].config.stop_mel_token
        cache = ar.new_cache(1, ar.prompt_length(self.text.shape[1]) + STEPS)
        logits, _ = ar.prefill(self._put("ar", self.voice()[0]), self.text, cache)
        tokens, step_logits = [], []
        for step in range(STEPS):
            logits = logits.float()
            logits[:, stop] = float("-inf")  # min_length, as the pipeline's forced-length decode
            step_logits.append(logits.cpu())
            tokens.append(logits.argmax(-1))
            if step + 1 < STEPS:
                logits, _ = ar.decode_step(tokens[-1], step + 1, cache)
        return torch.stack(tokens, dim=1).cpu(), torch.stack(step_logits)

    @torch.no_grad()
    def clvp_scores(self, codes: torch.Tensor) -> torch.Tensor:
        """Scores (1, CANDIDATES): ``codes`` and variants of it with ~15 % of the codes replaced."""
        others = torch.where(self.draws["replace"], self.draws["codes"], codes.expand(CANDIDATES - 1, -1))
        return self.m["clvp"].score(self.text, torch.cat([codes, others]).to(self.device)).float().cpu()[None]

    @torch.no_grad()
    def speech(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """AR latents, diffusion mel and waveform of ``codes`` (all on the CPU, float32)."""
        from tortoise_xpu.diffusion.samplers import latents_to_mel

        voice_ar, voice_diff = self.voice()
        ar, n = self.m["ar"], codes.shape[1]
        latents = ar(self._put("ar", voice_ar), self.text, torch.tensor([self.text.shape[1]], device=self.device),
                     codes.to(self.device),
                     torch.tensor([n * self.cpu["ar"].config.mel_length_compression], device=self.device),
                     return_latent=True, clip_inputs=False)
        dt = self.inputs["diffusion"].dtype
        mel = latents_to_mel(self.m["diffusion"], latents.to(dt), voice_diff.to(dt), steps=DIFFUSION_STEPS,
                             sampler="p", cond_free=True, cond_free_k=2.0,
                             generator=torch.Generator().manual_seed(SEED + 1))
        wav = self.m["vocoder"].inference(self._put("vocoder", mel), generator=torch.Generator().manual_seed(SEED + 2))
        return latents.float().cpu(), mel.float().cpu(), wav.float().cpu()


@dataclass
class Reference:
    tokens: torch.Tensor
    step_logits: torch.Tensor
    scores: torch.Tensor
    latents: torch.Tensor
    mel: torch.Tensor
    waveform: torch.Tensor


@pytest.fixture(scope="module")
def reference_run(chain) -> Reference:
    c = Chain(chain, CPU_FLOAT32.device, dict.fromkeys(chain, torch.float32))
    tokens, step_logits = c.greedy()
    return Reference(tokens, step_logits, c.clvp_scores(tokens), *c.speech(tokens))


def _weakest(settings: list[Setting]) -> Setting:
    """The setting with the loosest tolerance: a chain is as precise as its least precise stage."""
    return max(settings, key=lambda s: TOLERANCES[s.precision].rel)


def test_same_seed_same_tokens_choice_and_waveform(chain, reference_run, backend, dtype, parity):
    settings = {k: setting_for(backend, dtype, STAGES[k]) for k in chain}
    ref, ar_setting = reference_run, settings["ar"]
    with ar_setting.context():
        c = Chain(chain, backend.device, {k: s.dtype for k, s in settings.items()},
                  autocast=supports_autocast(backend, settings["diffusion"].dtype))
        tokens, _ = c.greedy()
        scores = c.clvp_scores(ref.tokens)             # the same candidates as the reference's
        latents, mel, wav = c.speech(ref.tokens)       # given the reference's codes and the same noise

    # Greedy codes: identical up to the reference's first tie at this precision.
    finite = ref.step_logits.masked_fill(torch.isinf(ref.step_logits), 0.0)
    decided = decisive_prefix(ref.step_logits.clamp(min=float(finite.min())), tie_window(finite, ar_setting.tolerance))
    mismatch = int((tokens[:, :decided] != ref.tokens[:, :decided]).sum())
    overall = int((tokens != ref.tokens).sum())
    codes = Measurement("pipeline/greedy codes", ar_setting.column, ar_setting.precision, float(mismatch), 0.0,
                        unit="mismatches", note=f"{decided}/{STEPS} steps decisive, {overall} differ in all")
    if mismatch:
        codes.failures.append(f"{mismatch} greedy codes differ within the first {decided} (decisive) steps")
    if ar_setting.precision == "float32" and decided < STEPS:
        codes.failures.append(f"the float32 reference ties after {decided} steps: pick another SEED")

    # The CLVP choice over fixed candidates: the top-1 check excuses only a tie in the reference.
    pick = settings["clvp"].measure("pipeline/clvp scores", scores, ref.scores, logits=True,
                                    note=f"pick {int(scores.argmax())} vs {int(ref.scores.argmax())}")

    # Given the reference's codes and the same noise: latents, mel and waveform within tolerance.
    speech = [settings["ar"].measure("pipeline/ar latents", latents, ref.latents),
              _weakest([settings["ar"], settings["diffusion"]]).measure("pipeline/diffusion mel", mel, ref.mel),
              _weakest(list(settings.values())).measure("pipeline/waveform", wav, ref.waveform)]
    if settings["diffusion"].precision != "float32":
        speech[1].as_information(CHAOTIC)
        speech[2].as_information(CHAOTIC)
    elif not backend.capabilities().is_cpu:
        # float32 on an accelerator: its kernels sum in another order than the CPU's (the diffusion
        # model's eps lands ~7e-6 away on an H200, test_models_parity.py), and the first random-weight
        # step multiplies that by 153, so the chain lands ~3e-4 away (measured on an H200): asserted
        # against the reduced-precision float32 (TF32) bound instead of the per-model float32 one.
        speech[1:] = [measure(m.row, m.column, m.precision, out, want, TOLERANCES["tf32"], note=ACCELERATOR_F32)
                      for m, out, want in ((speech[1], mel, ref.mel), (speech[2], wav, ref.waveform))]
    check([codes, pick, *speech], parity)


# ------------------------------------------------------------------------------------------ TextToSpeech

TTS_SETTINGS = dict(num_autoregressive_samples=2, diffusion_iterations=3, max_mel_tokens=12)


@pytest.fixture(scope="module")
def tts_models_dir(request):
    try:
        return request.getfixturevalue("tiny_models_dir")  # tests/fixtures_tiny.py
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_models_dir fixture (tests/fixtures_tiny.py) to build the pipeline from")


@pytest.fixture(scope="module")
def tts_reference(tts_models_dir):
    """The CPU float32 waveform, or a skip saying why the pipeline cannot run yet."""
    try:
        from tortoise_xpu import TextToSpeech

        tts = TextToSpeech(models_dir=tts_models_dir, device=CPU_FLOAT32.device.type, dtype="float32")
        return tts.tts("Parity check.", seed=SEED, **TTS_SETTINGS)
    except Exception as exc:
        pytest.skip(f"TextToSpeech is not usable yet on the CPU: {type(exc).__name__}: {exc}")


def test_text_to_speech_float32(tts_models_dir, tts_reference, backend, parity):
    from tortoise_xpu import TextToSpeech

    label = device_label(backend)
    with strict_float32():
        tts = TextToSpeech(models_dir=tts_models_dir, device=label, dtype="float32")
        wav = tts.tts("Parity check.", seed=SEED, **TTS_SETTINGS)
    check([measure("pipeline/TextToSpeech waveform", f"{label} float32", "float32", wav, tts_reference,
                   tolerance_for(torch.float32))], parity)
