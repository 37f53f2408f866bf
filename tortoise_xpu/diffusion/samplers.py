"""Samplers that turn noise into a normalised mel with the diffusion decoder.

Three samplers share one entry point, ``sample``:

* ``"p"``: ancestral sampling, the original Tortoise's ``p_sample_loop``: the ε prediction gives
  x0 (clipped to [-1, 1]), the posterior mean q(x_{t-1} | x_t, x0), and the model's "learned
  range" variance, an interpolation in log space between the posterior variance and beta.
* ``"ddim"``: DDIM with eta = 0 (deterministic), as the original's ``ddim_sample_loop``.
* ``"dpm++2m"``: DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling
  of Diffusion Probabilistic Models", Algorithm 2): a second-order multistep solver of the
  probability-flow ODE in log-SNR, on data predictions, with time-uniform steps.

Conditioning-free (classifier-free) guidance, when on, needs the model's unconditional output too:

* p / ddim: the original's ramp, ``ε = (1 + k_i) ε_c - k_i ε_u`` with ``k_i = k (1 - i / N)``
  for respaced step i = N-1 .. 0, so the guidance grows towards the end;
* dpm++2m: the constant ``ε = ε_u + k (ε_c - ε_u)`` of tortoise-tts-fast.

Random draws come from a CPU ``torch.Generator`` and are then moved to the device, so one seed gives
one result on every backend (up to floating point).  The initial noise is ``randn * temperature``;
p and ddim draw one further ``randn`` per step (used by p except at its last step), in the original's order,
so the original run with ``torch.manual_seed(s)`` and ours with ``Generator().manual_seed(s)`` use the
same numbers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from tortoise_xpu.diffusion.schedule import TRAINED_STEPS, DiffusionSchedule

SAMPLERS = ("p", "ddim", "dpm++2m")

# The original's Tacotron mel normalisation bounds: log(1e-5) and the largest log-mel seen in training.
TACOTRON_MEL_MAX = 2.3143386840820312
TACOTRON_MEL_MIN = -11.512925148010254

# (x, timesteps, want_unconditional) -> (conditional output, unconditional output or None)
Denoiser = Callable[[torch.Tensor, torch.Tensor, bool], "tuple[torch.Tensor, torch.Tensor | None]"]
Progress = Callable[[int, int], None]


def denormalize_mel(mel: torch.Tensor) -> torch.Tensor:
    """Map the decoder's [-1, 1] mel back to log-mel (the vocoder's input)."""
    return (mel + 1) / 2 * (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN) + TACOTRON_MEL_MIN


def output_length(latent_frames: int) -> int:
    """Mel frames (24 kHz, hop 256) for AR latents at 22.05 kHz / 1024 samples per code."""
    return latent_frames * 4 * 24000 // 22050


def _draw(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    draw = torch.randn(shape, generator=generator, dtype=torch.float32)
    return draw if device is None else draw.to(device)


def _split(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = out.float()
    return out[:, :channels], out[:, channels:]


@torch.no_grad()
def sample(model_fn: Denoiser, shape: tuple[int, ...], *, sampler: str = "p", steps: int = 100,
           cond_free: bool = True, cond_free_k: float = 2.0, generator: torch.Generator | None = None,
           temperature: float = 1.0, progress: Progress | None = None, device: torch.device | str | None = None,
           noise: torch.Tensor | None = None, clip_denoised: bool = True, skip_type: str = "time_uniform",
           trained_steps: int = TRAINED_STEPS) -> torch.Tensor:
    """Sample a normalised mel of ``shape`` (B, C, L); returns float32 on ``device``.

    ``model_fn(x, timesteps, want_uncond)`` returns the (B, 2C, L) model output (ε, variance value)
    and, when asked, the unconditional one (``DiffusionTts.denoiser`` builds it).  ``timesteps``
    are trained-step indices (0..trained_steps-1; fractional for dpm++2m).  ``steps``: model
    evaluations (respaced steps for p/ddim).  ``generator``: a CPU generator (None: torch's global
    one).  ``noise``: the initial x_T to use instead of a draw (not scaled by ``temperature``).
    ``clip_denoised``: clip every x0 prediction to [-1, 1] (the original does, for p and ddim).
    ``skip_type`` (dpm++2m only): "time_uniform" (steps uniform in t, as tortoise-tts-fast) or
    "logSNR" (uniform in log-SNR; more accurate at few steps on this schedule).
    ``progress(done, total)`` is called after each step.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown diffusion sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("the diffusion noise generator must be a CPU torch.Generator")
    if steps < 1:
        raise ValueError(f"diffusion steps must be at least 1, got {steps}")
    shape = tuple(int(s) for s in shape)
    x = (noise.to(device=device, dtype=torch.float32) if noise is not None
         else _draw(shape, generator, device) * temperature)
    if sampler == "dpm++2m":
        return _dpmpp_2m(model_fn, x, steps, cond_free, cond_free_k, clip_denoised, progress,
                         DiffusionSchedule.trained(trained_steps), skip_type)
    return _ancestral_or_ddim(model_fn, x, sampler == "p", DiffusionSchedule.respaced(steps, trained_steps),
                              cond_free, cond_free_k, clip_denoised, generator, progress)


def _ancestral_or_ddim(model_fn: Denoiser, x: torch.Tensor, ancestral: bool, sched: DiffusionSchedule,
                       cond_free: bool, cond_free_k: float, clip_denoised: bool,
                       generator: torch.Generator | None, progress: Progress | None) -> torch.Tensor:
    n = sched.num_steps
    b, c = x.shape[:2]
    s = sched.scalar
    for done, i in enumerate(reversed(range(n)), start=1):
        t = torch.full((b,), float(sched.timestep_map[i]), device=x.device)
        out, out_u = model_fn(x, t, cond_free)
        eps, var_value = _split(out, c)
        if cond_free:
            k = cond_free_k * (1 - i / n)  # the ramp: no guidance at the noisy start, k at the end
            eps = (1 + k) * eps - k * _split(out_u, c)[0]
        x0 = s("sqrt_recip_alphas_cumprod", i) * x - s("sqrt_recipm1_alphas_cumprod", i) * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        # The original draws a noise tensor at every step (unused at the last step, and by DDIM);
        # drawing it too leaves the generator where the original's is, so whatever draws next
        # (the vocoder, the next candidate) gets the original's numbers for the same seed.
        noise = _draw(x.shape, generator, x.device)
        if ancestral:
            mean = s("posterior_mean_coef1", i) * x0 + s("posterior_mean_coef2", i) * x
            if i > 0:
                # variance value in [-1, 1] picks a log variance between the posterior's and beta's
                frac = (var_value + 1) / 2
                log_var = frac * s("log_betas", i) + (1 - frac) * s("posterior_log_variance_clipped", i)
                x = mean + torch.exp(0.5 * log_var) * noise
            else:
                x = mean
        else:
            # ε re-derived from the (clipped) x0, as the original, then the eta=0 DDIM update.
            eps = (s("sqrt_recip_alphas_cumprod", i) * x - x0) / s("sqrt_recipm1_alphas_cumprod", i)
            ac_prev = s("alphas_cumprod_prev", i)
            x = x0 * _f32_sqrt(ac_prev) + _f32_sqrt(_f32(1.0 - ac_prev)) * eps
        if progress is not None:
            progress(done, n)
    return x


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def _f32_sqrt(v: float) -> float:
    """sqrt as a float32 tensor op computes it (torch's CPU float32 sqrt is not always correctly
    rounded; using it keeps DDIM bit-compatible with the original's tensor arithmetic)."""
    return torch.tensor(v, dtype=torch.float32).sqrt().item()


def _lambda(sched: DiffusionSchedule, t: float) -> float:
    """log-SNR / 2, log(α/σ), at fractional model step ``t`` (float64)."""
    la = sched.log_alpha(t)
    return la - 0.5 * math.log(-math.expm1(2 * la))


def _solver_times(sched: DiffusionSchedule, steps: int, skip_type: str) -> list[float]:
    """``steps + 1`` model timesteps from the last trained step down to 0."""
    top = float(sched.num_steps - 1)
    if skip_type == "time_uniform":  # uniform in DPM-Solver's t = (n + 1) / N, i.e. in n
        return [top * (1 - j / steps) for j in range(steps + 1)]
    if skip_type != "logSNR":
        raise ValueError(f"unknown dpm++2m skip type {skip_type!r}; use 'time_uniform' or 'logSNR'")
    lam_top, lam_end = _lambda(sched, top), _lambda(sched, 0.0)
    times = [top]
    for j in range(1, steps):
        target = lam_top + (lam_end - lam_top) * j / steps
        lo, hi = 0.0, top  # λ falls as t grows: bisect for λ(t) = target
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if _lambda(sched, mid) > target:
                lo = mid
            else:
                hi = mid
        times.append(0.5 * (lo + hi))
    return times + [0.0]


def _dpmpp_2m(model_fn: Denoiser, x: torch.Tensor, steps: int, cond_free: bool, cond_free_k: float,
              clip_denoised: bool, progress: Progress | None, sched: DiffusionSchedule,
              skip_type: str) -> torch.Tensor:
    """DPM-Solver++(2M) on the trained discrete schedule, from step N-1 down to 0.

    With x_θ the data prediction and λ = log(α/σ): a first-order step is
    x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x_θ(s), h = λ_t - λ_s; second-order steps use the data
    prediction extrapolated linearly in λ from the last two, D = (1 + 1/2r) x_θ(s) - (1/2r) x_θ(s'),
    r = h_prev / h.  The first step (no history) and the last step are first order: on this
    schedule the last interval is by far the longest in λ (σ falls from ~0.1 to 0.005), and
    extrapolating across it overshoots.
    """
    b, c = x.shape[:2]
    times = _solver_times(sched, steps, skip_type)
    log_alpha = [sched.log_alpha(t) for t in times]
    alpha = [math.exp(la) for la in log_alpha]
    sigma = [math.sqrt(-math.expm1(2 * la)) for la in log_alpha]
    lam = [la - math.log(sg) for la, sg in zip(log_alpha, sigma)]

    def data_prediction(x_t: torch.Tensor, j: int) -> torch.Tensor:
        t = torch.full((b,), float(times[j]), device=x_t.device)
        out, out_u = model_fn(x_t, t, cond_free)
        eps = _split(out, c)[0]
        if cond_free:
            eps_u = _split(out_u, c)[0]
            eps = eps_u + cond_free_k * (eps - eps_u)
        x0 = (x_t - sigma[j] * eps) / alpha[j]
        return x0.clamp(-1, 1) if clip_denoised else x0

    d_cur, d_prev, h_prev = data_prediction(x, 0), None, 0.0
    for j in range(1, steps + 1):
        h = lam[j] - lam[j - 1]
        if j == 1 or j == steps:
            d = d_cur
        else:
            half_inv_r = h / (2 * h_prev)
            d = (1 + half_inv_r) * d_cur - half_inv_r * d_prev
        x = (sigma[j] / sigma[j - 1]) * x - (alpha[j] * math.expm1(-h)) * d
        if progress is not None:
            progress(j, steps)
        if j < steps:
            d_prev, d_cur, h_prev = d_cur, data_prediction(x, j), h
    return x


def latents_to_mel(model, latents: torch.Tensor, conditioning_latent: torch.Tensor, *, steps: int = 100,
                   sampler: str = "p", cond_free: bool = True, cond_free_k: float = 2.0, temperature: float = 1.0,
                   generator: torch.Generator | None = None, progress: Progress | None = None,
                   batch_cond_free: bool = True, clip_denoised: bool = True) -> torch.Tensor:
    """AR latents (B, S, 1024) + diffusion voice latent (1 or B, 2048) -> log-mel (B, 100, L).

    ``model`` is a ``DiffusionTts``; L = S * 4 * 24000 // 22050.  The original's
    ``do_spectrogram_diffusion`` (which is this with ``sampler="p"``), denormalised for the vocoder.
    """
    with torch.no_grad():
        length = output_length(latents.shape[1])
        emb = model.timestep_independent(latents, conditioning_latent, length, False)
        mel = sample(model.denoiser(emb, batch_cond_free), (latents.shape[0], model.in_channels, length),
                     sampler=sampler, steps=steps, cond_free=cond_free, cond_free_k=cond_free_k,
                     generator=generator, temperature=temperature, progress=progress, device=latents.device,
                     clip_denoised=clip_denoised)
        return denormalize_mel(mel)[:, :, :length]
