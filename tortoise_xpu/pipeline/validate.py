"""Input validation for the Python API and the CLI: every knob's valid range, seeds, text, voices.

One table (:data:`RANGES`) says what each generation setting accepts.  The API checks a call
with :func:`check_tts_inputs` (text, voice clips, latents, ``k``, seed) and
:func:`check_settings` (the knobs, from ``presets.resolve_settings``); the CLI builds its
argparse ``type=`` functions from the same table with :func:`arg_type`, so ``--temperature nan``
exits 2 before anything loads.  Every refusal is a one-line :class:`~tortoise_xpu.errors.UserError`.

Numbers must be finite; integers must be integers (``1.5`` is refused, ``16.0`` is taken as 16;
``True`` is not a number); booleans must be booleans.
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from tortoise_xpu.errors import UserError

__all__ = ["Range", "RANGES", "SEED_LIMIT", "check_setting", "check_settings", "check_seed", "check_text",
           "check_k", "check_diffusion_settings", "check_voice_samples", "check_latents", "check_tts_inputs", "arg_type", "seed_arg",
           "positive_int_arg", "SAMPLER_NAMES"]

#: Seeds are integers 0 <= seed < 2**63 (what the per-chunk seed derivation and torch accept).
SEED_LIMIT = 2 ** 63


@dataclass(frozen=True)
class Range:
    """What one setting accepts.

    Attributes:
        name: the setting's keyword (``temperature``); its flag is ``--`` + name with dashes.
        kind: ``"int"``, ``"float"``, ``"bool"`` or ``"choice"``.
        lo, hi: inclusive bounds (None: unbounded on that side).
        lo_open: ``lo`` itself is excluded (``temperature > 0``).
        choices: the allowed values of a ``"choice"``.
        why: a few words on what the setting means, for the message.
    """

    name: str
    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    why: str = ""

    def describe(self) -> str:
        """The valid range in words: ``a number > 0 and <= 100``."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        noun = "an integer" if self.kind == "int" else "a finite number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"<= {_num(self.hi)}")
        return noun + (" " + " and ".join(parts) if parts else "")

    def check(self, value: Any) -> Any:
        """``value`` as the setting's type (int / float / bool / str); UserError when out of range."""
        what = f"{self.name} must be {self.describe()}" + (f" ({self.why})" if self.why else "")
        if self.kind == "bool":
            if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):  # numpy's too
                return bool(value)
            if isinstance(value, numbers.Integral) and int(value) in (0, 1):
                return bool(value)
            raise UserError(f"{what}; got {value!r}")
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            raise UserError(f"unknown {self.name} {value!r}; choose one of: {', '.join(self.choices)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(f"{what}; got {type(value).__name__} {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{what}; got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"{what}; got {value!r}")
        if self.kind == "int":
            if isinstance(value, numbers.Integral):
                number = int(value)
            elif number.is_integer():
                number = int(number)
            else:
                raise UserError(f"{what}; got {value!r}")
        if self.lo is not None and (number < self.lo or (self.lo_open and number == self.lo)):
            raise UserError(f"{what}; got {value!r}")
        if self.hi is not None and number > self.hi:
            raise UserError(f"{what}; got {value!r}")
        return number


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


#: The diffusion samplers (diffusion/samplers.py SAMPLERS; a test keeps the two equal).  Named here so
#: that building the CLI parser does not import torch.
SAMPLER_NAMES = ("p", "ddim", "dpm++2m")


def _ranges() -> dict[str, Range]:
    items = [
        Range("num_autoregressive_samples", "int", 1, 4096, why="AR candidates to sample"),
        Range("temperature", "float", 0, 100, lo_open=True, why="AR sampling temperature"),
        Range("top_p", "float", 0, 1, lo_open=True, why="nucleus sampling mass"),
        Range("top_k", "int", 0, 1_000_000, why="0 disables it"),
        Range("repetition_penalty", "float", 0, 100, lo_open=True),
        Range("length_penalty", "float", -1e6, 1e6),
        Range("typical_sampling", "bool"),
        Range("typical_mass", "float", 0, 1, lo_open=True),
        Range("max_mel_tokens", "int", 1, 600, why="the AR model's longest output"),
        Range("cvvp_amount", "float", 0, 1, why="the share of CVVP in the ranking"),
        Range("diffusion_iterations", "int", 1, 4000, why="steps of the 4000-step schedule"),
        Range("cond_free", "bool"),
        Range("cond_free_k", "float", 0, 100, why="conditioning-free guidance strength"),
        Range("diffusion_temperature", "float", 0, 100),
        Range("sampler", "choice", choices=SAMPLER_NAMES),
        Range("force_tokens", "int", 1, 600, why="codes to generate, ignoring the stop token"),
    ]
    return {r.name: r for r in items}


#: Every generation setting's valid values, keyed by its keyword.
RANGES: Mapping[str, Range] = _ranges()


def check_setting(name: str, value: Any) -> Any:
    """One setting checked against :data:`RANGES` (None passes: "keep the default")."""
    if value is None:
        return None
    rng = RANGES.get(name)
    if rng is None:
        raise UserError(f"unknown setting {name!r}; valid: {', '.join(RANGES)}")
    return rng.check(value)


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of ``settings`` checked and normalised (ints as int, floats as float)."""
    return {k: check_setting(k, v) for k, v in settings.items()}


def check_diffusion_settings(settings: Mapping[str, Any]) -> None:
    """The rule between knobs that the per-knob ranges cannot say, for runs that diffuse: the dpm++2m
    sampler needs conditioning-free guidance (a stream, which never diffuses, is not held to it)."""
    if settings.get("sampler") == "dpm++2m" and not settings.get("cond_free"):
        raise UserError("the dpm++2m sampler needs conditioning-free guidance (cond_free=True)")


def check_seed(seed: Any) -> int | None:
    """A seed: None (time-based) or an integer 0 <= seed < 2**63; 1.5, True, "5" and -1 are refused."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise UserError(f"seed must be an integer 0 <= seed < 2**63; got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"seed must be an integer 0 <= seed < 2**63; got {seed}")
    return seed


def check_text(text: Any) -> str:
    """The text to speak must be a ``str`` (None and bytes are refused, not turned into "None")."""
    if not isinstance(text, str):
        raise UserError(f"text must be a string; got {type(text).__name__}")
    return text


def check_k(k: Any) -> int:
    """``k``, the candidates returned: an integer >= 1 (its upper bound, the candidate count, is the caller's)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
        raise UserError(f"k (candidates returned) must be an integer >= 1; got {k!r}")
    return int(k)


def _tensor_problem(t: Any, what: str, float_only: bool = True) -> str | None:
    import torch

    if not isinstance(t, torch.Tensor):
        return f"{what} must be a torch.Tensor; got {type(t).__name__}"
    if float_only and not t.is_floating_point():
        return f"{what} must be floating point; got {str(t.dtype).replace('torch.', '')}"
    if t.numel() == 0:
        return f"{what} is empty"
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = t.numel() - int(finite.sum())
        return f"{what} holds {bad} NaN or infinite values of {t.numel()}"
    return None


def check_voice_samples(samples: Any) -> None:
    """Voice clips for the API: a tensor or a non-empty sequence of float tensors, each finite and
    non-empty, shaped (T), (1, T) or (1, 1, T)."""
    import torch

    if samples is None:
        return
    clips = [samples] if isinstance(samples, torch.Tensor) else samples
    if not isinstance(clips, (list, tuple)) or not clips:
        raise UserError(f"voice_samples must be a tensor or a non-empty list of tensors; got "
                        f"{type(samples).__name__}")
    for i, clip in enumerate(clips):
        problem = _tensor_problem(clip, f"voice_samples[{i}]")
        if problem:
            raise UserError(problem)
        if clip.dim() > 3 or any(d != 1 for d in clip.shape[:-1]):
            raise UserError(f"voice_samples[{i}] must be mono audio shaped (T), (1, T) or (1, 1, T); "
                            f"got {tuple(clip.shape)}")


def check_latents(latents: Any) -> None:
    """Conditioning latents for the API: a pair (ar, diffusion) of finite float tensors."""
    if latents is None:
        return
    if not isinstance(latents, (list, tuple)) or len(latents) != 2:
        raise UserError(f"conditioning_latents must be a pair (ar_latent, diffusion_latent); got "
                        f"{type(latents).__name__}")
    for name, t in zip(("ar", "diffusion"), latents):
        problem = _tensor_problem(t, f"conditioning_latents ({name})")
        if problem:
            raise UserError(problem)


def check_tts_inputs(text: Any, voice_samples: Any = None, conditioning_latents: Any = None, k: Any = 1,
                     seed: Any = None, force_tokens: Any = None) -> None:
    """Everything a ``tts()`` call is given besides its knobs (which ``resolve_settings`` checks),
    refused up front with one line: a non-str text, NaN clips or latents, a bad ``k`` or seed."""
    check_text(text)
    check_k(k)
    check_seed(seed)
    check_setting("force_tokens", force_tokens)
    check_voice_samples(voice_samples)
    check_latents(conditioning_latents)


# ------------------------------------------------------------------------------------ argparse

def arg_type(name: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for setting ``name``: parses the flag's text and checks its range, so a bad
    value exits 2 with argparse's one-line message before any work."""
    rng = RANGES[name]

    def parse(text: str) -> Any:
        try:
            value: Any = int(text) if rng.kind == "int" and _looks_int(text) else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {name} must be {rng.describe()}") \
                from None
        try:
            return rng.check(value)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _looks_int(text: str) -> bool:
    t = text.strip().replace("_", "")
    return t.lstrip("+-").isdigit()


def seed_arg(text: str) -> int:
    """argparse ``type=`` for ``--seed``: an integer 0 <= seed < 2**63."""
    if not _looks_int(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; the seed must be 0 <= seed < 2**63")
    try:
        return check_seed(int(text))  # type: ignore[return-value]
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int_arg(text: str) -> int:
    """argparse ``type=`` for counts (``--candidates``, ``--batch-size``): an integer >= 1."""
    if not _looks_int(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return int(text)
