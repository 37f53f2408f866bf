"""Which network each checkpoint file holds, named lazily so that nothing heavy imports early.

A :class:`ModelSpec` ties a file name (``autoregressive.pth``) to the module path, class and
config class that build its network, plus the two facts about the *file format* that the class
itself does not describe:

* ``wrapper_key``: the official ``vocoder.pth`` is ``{'model_g': state_dict}``;
* ``weight_norm``: the official vocoder / HiFi-GAN files store every conv weight as a
  weight-norm pair ``X.weight_g`` / ``X.weight_v`` (except the keys in ``plain_weights``).

Reading a file goes through the class's ``convert_state_dict(raw)`` (file content → module state
dict; identity when the class has none).  Writing a file in the official format (random weights,
see :func:`to_checkpoint`) uses the class's optional ``export_state_dict(state_dict)`` and
otherwise the two facts above.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch import nn

from tortoise_xpu.assets.catalogue import asset, official_parameters
from tortoise_xpu.errors import ModelFileError, UserError


@dataclass(frozen=True)
class Preparation:
    """How a loaded network is made ready for a run: the dtype its file's weights are cast to when
    loading (None: kept as stored, float32), what is done to it afterwards (``finish``), and a
    hashable ``key`` naming the result, so that a model store holds one copy per preparation."""

    load_dtype: torch.dtype | None
    key: tuple = ()
    finish: Callable[[nn.Module], nn.Module] | None = dataclasses.field(default=None, compare=False)

    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` after the finishing step (unchanged when there is none)."""
        return self.finish(model) if self.finish is not None else model


#: The row count the CPU's AR linears are packed for (``UnifiedVoice.use_packed_linears``).
PACKED_ROWS = 16


def _plain(dtype: torch.dtype, policy: Any, backend: Any) -> Preparation:
    """The default: every floating-point weight cast to the stage dtype."""
    return Preparation(load_dtype=dtype, key=(dtype,))


def _prepare_autoregressive(dtype: torch.dtype, policy: Any, backend: Any) -> Preparation:
    """The AR model in its stage dtype, its linears weight-first where the Policy says the device
    prefers it, or as int8 weights where the Policy chose them (CPUs where measured faster)."""
    if getattr(policy, "ar_int8", False):
        from tortoise_xpu.models.quant import quantize_ar_int8

        one_thread = bool(getattr(policy, "ar_int8_one_thread", False))

        def to_int8(m: nn.Module) -> nn.Module:
            quantize_ar_int8(m, one_thread=one_thread)  # in place
            return m

        return Preparation(load_dtype=dtype, key=(dtype, "int8", one_thread), finish=to_int8)
    if getattr(policy, "packed_weights", False):
        # One layout for every batch: packed for 16 rows, it measured as fast at 1 row as a 1-row
        # packing (docs/performance.md), so a store serves streams and batches from one copy.
        return Preparation(load_dtype=dtype, key=(dtype, "packed"),
                           finish=lambda m: m.use_packed_linears(dtype, rows=PACKED_ROWS))
    weight_first = bool(getattr(policy, "ar_weight_first", False))
    return Preparation(load_dtype=dtype, key=(dtype, "weight_first", weight_first),
                       finish=lambda m: m.use_weight_first_linears(weight_first))


def _prepare_diffusion(dtype: torch.dtype, policy: Any, backend: Any) -> Preparation:
    """The diffusion decoder at half precision the original's use_fp16 way: loaded in float32, then
    all but its first layer autocast (much closer to float32 than casting every weight), where the
    backend can autocast that dtype; a whole-model cast elsewhere."""
    packed = bool(getattr(policy, "packed_weights", False))
    if dtype != torch.float32 and backend.supports_autocast(dtype):
        if packed:
            # The CPU: every per-step layer in the half dtype (a float32 convolution is ~3x slower
            # there; the first layer and step integrator were a third of a step), then packed.
            return Preparation(load_dtype=None, key=("layer_autocast", dtype, "packed"),
                               finish=lambda m: m.use_layer_autocast(dtype, every_step_layer=True).use_packed_convs())
        return Preparation(load_dtype=None, key=("layer_autocast", dtype),
                           finish=lambda m: m.use_layer_autocast(dtype))
    if packed:
        return Preparation(load_dtype=dtype, key=(dtype, "packed"), finish=lambda m: m.use_packed_convs())
    return _plain(dtype, policy, backend)


def _prepare_hifigan(dtype: torch.dtype, policy: Any, backend: Any) -> Preparation:
    """The streaming decoder in its stage dtype; on channels-last features where the CPU's weights
    are prepared for oneDNN (``Policy.packed_weights``: 3x faster there, docs/performance.md), and
    warmed up on the streaming window lengths (oneDNN compiles per input length)."""
    if getattr(policy, "packed_weights", False):
        return Preparation(load_dtype=dtype, key=(dtype, "channels_last"),
                           finish=lambda m: m.use_channels_last().warm_up())
    return _plain(dtype, policy, backend)


@dataclass(frozen=True)
class ModelSpec:
    """How to build the network of one checkpoint file.

    ``official`` holds constructor overrides on top of the config class's defaults for the
    official file (only ``rlg_diffuser.pth`` needs one: 2048 channels).  :attr:`official_params`
    comes from the asset catalogue.
    """

    file: str
    module: str
    class_name: str
    config_name: str
    official: tuple[tuple[str, Any], ...] = ()
    wrapper_key: str | None = None
    weight_norm: bool = False
    plain_weights: tuple[str, ...] = ()
    #: The original loads this file with ``strict=False`` (autoregressive.pth, hifidecoder.pth): keys of
    #: the file that the network does not have are dropped with a warning, as the original ignores
    #: them.  Missing or mis-shaped keys are still errors (the original would run with random weights).
    extra_keys_ignored: bool = False
    #: Overrides on top of the config class's ``tiny()`` so that the tiny models of every file fit
    #: together in one pipeline (latent widths, 100-band mels, 256-sample hop).
    tiny: tuple[tuple[str, Any], ...] = ()
    #: The pipeline stage whose Policy dtype the network runs in (``ar``, ``clvp``, ``diffusion``,
    #: ``vocoder``); None: float32 whatever the Policy says (random-latent generators, classifier).
    stage: str | None = None
    #: How the network is made ready for a run, given (stage dtype, Policy, Backend): the hook of
    #: model-specific preparation (weight-first AR linears, the diffusion decoder's layer autocast).
    prepare: Callable[[torch.dtype, Any, Any], Preparation] = _plain

    def run_dtype(self, policy: Any) -> torch.dtype:
        """The dtype this network runs in under ``policy`` (float32 when it has no stage)."""
        return policy.dtype(self.stage) if self.stage is not None else torch.float32

    def preparation(self, policy: Any, backend: Any) -> Preparation:
        """How a store loads and finishes this network for runs under ``policy`` on ``backend``."""
        return self.prepare(self.run_dtype(policy), policy, backend)

    @property
    def official_params(self) -> int:
        """The parameter count of the ORIGINAL class with the official config, counted with
        weight-norm gains where the file has them (:func:`tortoise_xpu.assets.official_parameters`)."""
        return official_parameters(self.file)

    def model_class(self) -> type[nn.Module]:
        """Import and return the network class (ImportError when its module is not there yet)."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config_name)

    def config(self, preset: str = "official") -> Any:
        """The config for ``preset``: ``"official"`` (the file's constructor values) or ``"tiny"``."""
        cls = self.config_class()
        if preset == "official":
            return cls(**dict(self.official))
        if preset == "tiny":
            return dataclasses.replace(cls.tiny(), **dict(self.tiny)) if self.tiny else cls.tiny()
        raise UserError(f"unknown config preset {preset!r} (official, tiny)")

    def config_from_record(self, record: Mapping[str, Any]) -> Any:
        """The config a :func:`config_record` describes (JSON lists become tuples again).

        Raises:
            ModelFileError: the record names arguments the config class does not have.
        """
        cls = self.config_class()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - names)
        if unknown:
            raise ModelFileError(f"{self.file}: the recorded config has arguments {self.config_name} does not "
                                 f"take: {', '.join(unknown)}")
        return cls(**{k: _tuples(v) for k, v in record.items()})


def config_record(config: Any) -> dict[str, Any]:
    """A config as a JSON-able dict of its constructor arguments (the manifest's ``config`` record)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


_M = "tortoise_xpu.models."

#: Every checkpoint file the package can load, keyed by file name.
SPECS: dict[str, ModelSpec] = {s.file: s for s in (
    ModelSpec("autoregressive.pth", _M + "autoregressive", "UnifiedVoice", "ARConfig",
              extra_keys_ignored=True, stage="ar", prepare=_prepare_autoregressive),
    ModelSpec("diffusion_decoder.pth", _M + "diffusion_decoder", "DiffusionTts", "DiffusionConfig",
              stage="diffusion", prepare=_prepare_diffusion),
    ModelSpec("clvp2.pth", _M + "clvp", "CLVP", "CLVPConfig", stage="clvp"),
    ModelSpec("cvvp.pth", _M + "cvvp", "CVVP", "CVVPConfig", stage="clvp"),
    ModelSpec("vocoder.pth", _M + "vocoder", "UnivNetGenerator", "UnivNetConfig",
              wrapper_key="model_g", weight_norm=True, stage="vocoder",
              tiny=(("n_mel_channels", 100), ("strides", (8, 8, 4)), ("hop_length", 256))),
    # The RLGs make the AR (model_dim) and diffusion (2 x model_channels) voice latents: 64 and 128 when tiny.
    ModelSpec("rlg_auto.pth", _M + "random_latent", "RandomLatentConverter", "RLGConfig",
              tiny=(("channels", 64),)),
    ModelSpec("rlg_diffuser.pth", _M + "random_latent", "RandomLatentConverter", "RLGConfig",
              official=(("channels", 2048),), tiny=(("channels", 128),)),
    ModelSpec("classifier.pth", _M + "classifier", "AudioMiniEncoderWithClassifierHead", "ClassifierConfig"),
    ModelSpec("hifidecoder.pth", _M + "hifigan", "HifiganGenerator", "HifiGanConfig",
              weight_norm=True, plain_weights=("cond_layer.weight",), extra_keys_ignored=True, stage="vocoder",
              prepare=_prepare_hifigan,
              tiny=(("in_channels", 64), ("cond_channels", 64), ("upsample_factors", (8, 8, 4)),
                    ("upsample_kernel_sizes", (16, 16, 8)))),
)}


def spec(name: str) -> ModelSpec:
    """The spec of a checkpoint file (name, stem or alias as :func:`tortoise_xpu.assets.asset` takes)."""
    if name in SPECS:
        return SPECS[name]
    file = asset(name).name
    if file not in SPECS:
        raise UserError(f"{file} is a data file, not a model checkpoint")
    return SPECS[file]


def build(name: str, config: Any = None, device: str | torch.device | None = "meta") -> nn.Module:
    """Construct the network of ``name`` with ``config`` (an instance, a preset name, or None for
    the official one) on ``device``.  The default ``meta`` device allocates nothing: shapes and
    parameter counts only.  The module is returned in eval mode."""
    s = spec(name)
    if config is None or isinstance(config, str):
        config = s.config(config or "official")
    cls = s.model_class()
    with torch.device(device) if device is not None else _null():
        with _SkipRandomInitOnMeta() if device is not None and torch.device(device).type == "meta" else _null():
            model = cls(config)
    return model.eval()


class _SkipRandomInitOnMeta(TorchFunctionMode):
    """Leaves meta tensors' random initialisation out while a network is built on the meta device.

    There is nothing to fill on meta, and ``normal_`` or ``randn`` there go through decompositions that
    import ``torch._dynamo`` on first use: ~2 s before the first checkpoint of every CLI run could load.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        random_fill = func in (torch.Tensor.normal_, torch.Tensor.uniform_) or \
            getattr(func, "__module__", None) == "torch.nn.init"  # init.normal_, kaiming_uniform_, ...
        kwargs = kwargs or {}
        if func is torch.randn and torch.device(kwargs.get("device") or "meta").type == "meta":
            # a fresh random tensor on meta (e.g. a learned embedding's start): an empty one will do
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
        if random_fill:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def convert(name: str, raw: Any) -> dict[str, torch.Tensor]:
    """File content → the module's state dict, via the class's ``convert_state_dict``.

    Without that method the file must be the plain state dict (unwrapped from ``wrapper_key``
    when the spec has one)."""
    s = spec(name)
    fn = getattr(s.model_class(), "convert_state_dict", None)
    if fn is not None:
        return fn(raw)
    if s.wrapper_key and isinstance(raw, dict) and isinstance(raw.get(s.wrapper_key), dict):
        return raw[s.wrapper_key]
    return raw


def to_checkpoint(name: str, state_dict: dict[str, torch.Tensor]) -> Any:
    """The module's state dict → the object the official file holds (inverse of :func:`convert`).

    Uses the class's ``export_state_dict`` when it has one; otherwise, for weight-norm files,
    splits every conv weight (≥ 2-D ``X.weight`` not in ``plain_weights``) into ``X.weight_g``
    (the norm over all dims but 0) and ``X.weight_v`` (the weight itself, whose norm then equals
    g so folding gives the weight back), and wraps the result under ``wrapper_key``.
    """
    s = spec(name)
    fn = getattr(s.model_class(), "export_state_dict", None)
    if fn is not None:
        return fn(state_dict)
    sd = dict(state_dict)
    if s.weight_norm:
        sd = unfold_weight_norm(sd, exclude=s.plain_weights)
    return {s.wrapper_key: sd} if s.wrapper_key else sd


def unfold_weight_norm(state_dict: dict[str, torch.Tensor], exclude: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Split plain conv weights into weight-norm ``weight_g`` / ``weight_v`` pairs (key order kept).

    Only ``X.weight`` tensors with ≥ 2 dims whose pair is not already present are split; 1-D
    weights (norm scales) and ``exclude`` keys pass through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        if stem is not None and value.dim() >= 2 and key not in exclude and stem + ".weight_g" not in state_dict:
            dims = tuple(range(1, value.dim()))
            g = torch.linalg.vector_norm(value.float(), dim=dims, keepdim=True).to(value.dtype)
            out[stem + ".weight_g"] = g
            out[stem + ".weight_v"] = value
        else:
            out[key] = value
    return out


def checkpoint_parameter_count(name: str, model: nn.Module) -> int:
    """Parameters the official file holds for ``model`` (weight-norm gains counted), comparable
    with ``official_params``; works on the meta device."""
    params = {k: p for k, p in model.named_parameters()}
    exported = to_checkpoint(name, params)
    s = spec(name)
    if s.wrapper_key:
        exported = exported[s.wrapper_key]
    return sum(t.numel() for t in exported.values())


_INDEX = re.compile(r"\.\d+(?=\.|$)")


def key_pattern(key: str) -> str:
    """``gpt.h.12.attn.c_attn.weight`` → ``gpt.h.#.attn.c_attn.weight`` (layer counts ignored)."""
    return _INDEX.sub(".#", key)


def _official_shapes(name: str) -> dict[str, tuple[int, ...]] | None:
    return _shapes_of(SPECS[name])


@functools.lru_cache(maxsize=None)
def _shapes_of(s: ModelSpec) -> dict[str, tuple[int, ...]] | None:
    try:
        model = build(s.file, device="meta") if SPECS.get(s.file) == s else None
    except Exception:  # a class not written yet, or broken: it just can't be recognised
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()} if model is not None else None


def identify(raw: Any) -> list[tuple[str, float, float]]:
    """Rank the known checkpoints by how much ``raw`` (file content) looks like each.

    Each candidate converts the content with its own ``convert_state_dict`` and compares it
    with its official network: ``keys`` is the Jaccard index of the key patterns (indices
    stripped, so tiny and official configs compare alike), ``shapes`` the fraction of the
    network's keys present with the official shape.  Returns ``[(file, keys, shapes), ...]``,
    best first; candidates whose class does not import are left out.
    """
    ranked = []
    for file in SPECS:
        want = _official_shapes(file)
        if not want:
            continue
        try:
            sd = convert(file, raw)
        except Exception:
            continue
        if not isinstance(sd, dict):
            continue
        have = frozenset(key_pattern(k) for k in sd if isinstance(k, str))
        want_patterns = frozenset(key_pattern(k) for k in want)
        keys = len(have & want_patterns) / max(1, len(have | want_patterns))
        same = sum(1 for k, shp in want.items()
                   if isinstance(sd.get(k), torch.Tensor) and tuple(sd[k].shape) == shp)
        ranked.append((file, keys, same / max(1, len(want))))
    ranked.sort(key=lambda r: (r[1], r[2]), reverse=True)
    return ranked
