"""Noise schedules of the diffusion decoder: the trained linear 4000-step betas and their respacing.

Every table is computed in float64 **on the CPU** and handed to the samplers as float32 Python
scalars (or float32 tensors), so no float64 tensor ever reaches an accelerator: Intel Arc GPUs and
DirectML have no float64.  The float32 rounding is the original's too (it extracts its float64
numpy tables with ``astype(np.float32)``), which keeps the samplers in step with it.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable

import torch

from tortoise_xpu.backends.markers import cpu_route

# For the portability audit (backends/audit.py): the float64 tables are deliberate host work.
_HOST_TABLES = "diffusion schedule: float64 tables built on the host, used as float32"

TRAINED_STEPS = 4000
"""Diffusion steps the official decoder was trained with."""


@cpu_route(_HOST_TABLES)
def linear_betas(num_steps: int = TRAINED_STEPS) -> torch.Tensor:
    """Ho et al.'s linear betas stretched to ``num_steps`` (1e-4..2e-2 at 1000 steps): float64, CPU.

    Built as ``start + i * step`` with the last value set to ``end``, which is how ``np.linspace``
    rounds, so the table is bit-identical to the original's.
    """
    scale = 1000.0 / num_steps
    start, end = scale * 0.0001, scale * 0.02
    step = (end - start) / (num_steps - 1)
    betas = torch.arange(num_steps, dtype=torch.float64) * step + start
    betas[-1] = end
    return betas


def space_timesteps(num_timesteps: int, section_counts: int | str | Iterable[int]) -> set[int]:
    """The trained steps kept when sampling with fewer steps.

    ``section_counts``: a step count, a list of counts (the trained range is cut into that many
    equal sections and each is strided evenly to its count, ends included), a comma-separated string
    of counts, or ``"ddimN"`` (the DDIM paper's fixed integer stride giving exactly N steps).
    Example: ``space_timesteps(4000, [30])`` -> {0, 138, 276, ..., 3999}.
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {want} of {num_timesteps} steps with an integer stride")
        section_counts = [int(part) for part in section_counts.split(",")]
    counts = list(section_counts)
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    first = 0
    for idx, count in enumerate(counts):
        size = base + (1 if idx < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the fractional position as a running sum (not k * stride): the rounding of the
        # running sum decides ties, and this keeps the original's choice of steps.
        pos = 0.0
        for _ in range(count):
            kept.append(first + round(pos))
            pos += stride
        first += size
    return set(kept)


class DiffusionSchedule:
    """A discrete Gaussian diffusion schedule: float64 CPU tables plus float32 views of them.

    ``timestep_map[i]`` is the trained step that step ``i`` of this (possibly respaced) schedule
    stands for; it is the timestep the model is given.
    """

    TABLES = ("betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
              "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
              "posterior_mean_coef1", "posterior_mean_coef2")

    @cpu_route(_HOST_TABLES)
    def __init__(self, betas: torch.Tensor, timestep_map: list[int] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64, device="cpu")
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D table of values in (0, 1]")
        self.num_steps = betas.numel()
        self.timestep_map = list(range(self.num_steps)) if timestep_map is None else list(timestep_map)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.betas = betas
        self.log_betas = torch.log(betas)
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = ac_prev
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / ac - 1.0)
        self.posterior_variance = post_var
        # The posterior variance is 0 at the first step; its log borrows the next step's value.
        # (A one-step schedule has no next step and never adds noise: any finite value will do.)
        self.posterior_log_variance_clipped = (torch.log(torch.cat([post_var[1:2], post_var[1:]]))
                                               if self.num_steps > 1 else torch.log(betas))
        self.posterior_mean_coef1 = betas * torch.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * torch.sqrt(alphas) / (1.0 - ac)
        self._scalars = {name: getattr(self, name).to(torch.float32).tolist() for name in self.TABLES}
        self._log_alpha = (0.5 * torch.log(ac)).tolist()  # float64, for the continuous view

    @classmethod
    def trained(cls, trained_steps: int = TRAINED_STEPS) -> "DiffusionSchedule":
        """The full schedule the decoder was trained with (cached: treat it as read-only)."""
        return _trained(cls, trained_steps)

    @classmethod
    def respaced(cls, steps: int, trained_steps: int = TRAINED_STEPS) -> "DiffusionSchedule":
        """The trained schedule reduced to ``steps`` evenly spaced steps (``space_timesteps``).

        The kept steps get the betas that make their cumulative alphas equal the trained ones.
        Cached: treat the result as read-only.
        """
        return _respaced(cls, steps, trained_steps)

    @classmethod
    @cpu_route(_HOST_TABLES)
    def _build_respaced(cls, steps: int, trained_steps: int) -> "DiffusionSchedule":
        if not 1 <= steps <= trained_steps:
            raise ValueError(f"diffusion steps must be between 1 and {trained_steps}, got {steps}")
        keep = space_timesteps(trained_steps, [steps])
        full = cls.trained(trained_steps)
        new_betas, kept_map, last = [], [], 1.0
        for i, ac in enumerate(full.alphas_cumprod.tolist()):
            if i in keep:
                new_betas.append(1.0 - ac / last)
                last = ac
                kept_map.append(i)
        return cls(torch.tensor(new_betas, dtype=torch.float64), kept_map)

    def scalar(self, name: str, i: int) -> float:
        """Entry ``i`` of table ``name``, rounded to float32, as a Python float."""
        return self._scalars[name][i]

    @cpu_route(_HOST_TABLES)
    def table(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """Table ``name`` as float32 on ``device`` (rounded on the CPU first)."""
        return getattr(self, name).to(torch.float32).to(device or "cpu")

    # -- continuous view, for ODE solvers that step between trained timesteps --------------
    def log_alpha(self, t: float) -> float:
        """log of sqrt(alphas_cumprod) at a fractional step ``t`` in [0, num_steps - 1] (float64).

        Linear interpolation of log sqrt(alpha_bar) between neighbouring steps: the discrete-time
        noise schedule of DPM-Solver (Lu et al., 2022), with t measured in model timesteps.
        """
        if not 0.0 <= t <= self.num_steps - 1:
            raise ValueError(f"t={t} is outside the schedule [0, {self.num_steps - 1}]")
        lo = min(int(math.floor(t)), self.num_steps - 2) if self.num_steps > 1 else 0
        frac = t - lo
        if frac == 0.0:
            return self._log_alpha[lo]
        return self._log_alpha[lo] + frac * (self._log_alpha[lo + 1] - self._log_alpha[lo])


@functools.lru_cache(maxsize=4)
def _trained(cls: type, trained_steps: int) -> DiffusionSchedule:
    return cls(linear_betas(trained_steps))


@functools.lru_cache(maxsize=16)
def _respaced(cls: type, steps: int, trained_steps: int) -> DiffusionSchedule:
    return cls._build_respaced(steps, trained_steps)
