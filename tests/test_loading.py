"""Checkpoint reading, strict loading with a readable report, safetensors, random weights."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from tortoise_xpu import assets
from tortoise_xpu.errors import ModelFileError
from tortoise_xpu.models import loading, registry

GOLDEN_KEYS = Path(__file__).parent / "reference" / "goldens" / "assets" / "official_keys.json"


# --------------------------------------------------------------------------------------------
# A stand-in network, registered in place of a real one
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StandInConfig:
    width: int = 8
    depth: int = 2

    @classmethod
    def tiny(cls) -> "StandInConfig":
        return cls(width=4, depth=1)


class StandIn(nn.Module):
    def __init__(self, config: StandInConfig | None = None):
        super().__init__()
        cfg = config or StandInConfig()
        self.layers = nn.ModuleList(nn.Linear(cfg.width, cfg.width) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class StandInWithScratch(StandIn):
    """Keeps a non-persistent buffer: must not be left on the meta device."""

    def __init__(self, config: StandInConfig | None = None):
        super().__init__(config)
        self.register_buffer("scratch", torch.arange(3.0), persistent=False)


class StandInWithCachedRef(StandIn):
    """Keeps a plain reference to a weight taken in __init__: assigning tensors would leave it stale."""

    def __init__(self, config: StandInConfig | None = None):
        super().__init__(config)
        self.table = torch.ones(2)


class WrappedStandIn(StandIn):
    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        return {k.removeprefix("module."): v for k, v in raw["weights"].items()}


def _standin_spec(cls_name: str = "StandIn", file: str = "rlg_auto.pth") -> registry.ModelSpec:
    return registry.ModelSpec(file, __name__, cls_name, "StandInConfig")


@pytest.fixture
def standin(monkeypatch):
    """Register StandIn as the network of rlg_auto.pth for one test."""
    monkeypatch.setitem(registry.SPECS, "rlg_auto.pth", _standin_spec())


def _filled(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def _real(file: str):
    """The spec of ``file``, its class and config imported (an import error fails the test)."""
    s = registry.SPECS[file]
    s.model_class()
    s.config_class()
    return s


# --------------------------------------------------------------------------------------------
# load_state: files that must be refused
# --------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("container", ["zip", "legacy-pickle"])
def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "autoregressive.pth"
    payload = {"w": torch.ones(2), "evil": _Evil(str(marker))}
    if container == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ModelFileError, match="autoregressive.pth was refused"):
        loading.load_state(path)
    assert not marker.exists()


def test_truncated_empty_and_garbage_files_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    data = good.read_bytes()
    (tmp_path / "clvp2.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"clvp2\.pth is truncated or corrupt"):
        loading.load_state(tmp_path / "clvp2.pth")
    (tmp_path / "cvvp.pth").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"cvvp\.pth is empty"):
        loading.load_state(tmp_path / "cvvp.pth")
    (tmp_path / "vocoder.pth").write_bytes(os.urandom(2048))
    with pytest.raises(ModelFileError, match=r"vocoder\.pth"):
        loading.load_state(tmp_path / "vocoder.pth")
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFileError, match=r"x\.safetensors is truncated or corrupt"):
        loading.load_state(tmp_path / "x.safetensors")
    with pytest.raises(ModelFileError, match="no such file"):
        loading.load_state(tmp_path / "absent.pth")


def test_loads_legacy_format_without_mmap(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(loading.load_state(path)["w"], torch.arange(4.0))


# --------------------------------------------------------------------------------------------
# load_model with the stand-in
# --------------------------------------------------------------------------------------------

def test_round_trip_and_dtype(standin, tmp_path):
    ref = _filled(StandIn(), seed=1)
    torch.save(ref.state_dict(), tmp_path / "rlg_auto.pth")
    model = loading.load_model("rlg_auto", tmp_path)
    assert isinstance(model, StandIn) and not model.training
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not any(t.is_meta for t in model.state_dict().values())
    half = loading.load_model("rlg_auto.pth", tmp_path, dtype=torch.float16)
    assert half.layers[0].weight.dtype == torch.float16 and half.steps.dtype == torch.long
    x = torch.randn(3, 8)
    assert torch.allclose(model(x), ref(x))


def test_non_persistent_buffers_are_materialised(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.SPECS, "rlg_auto.pth", _standin_spec("StandInWithScratch"))
    torch.save(_filled(StandIn()).state_dict(), tmp_path / "rlg_auto.pth")
    model = loading.load_model("rlg_auto.pth", tmp_path)
    assert torch.equal(model.scratch, torch.arange(3.0))


def test_plain_tensor_attributes_are_not_left_on_meta(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.SPECS, "rlg_auto.pth", _standin_spec("StandInWithCachedRef"))
    torch.save(_filled(StandIn()).state_dict(), tmp_path / "rlg_auto.pth")
    model = loading.load_model("rlg_auto.pth", tmp_path)
    assert not model.table.is_meta and torch.equal(model.table, torch.ones(2))


def test_convert_state_dict_is_applied(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.SPECS, "rlg_auto.pth", _standin_spec("WrappedStandIn"))
    sd = _filled(StandIn(), seed=2).state_dict()
    torch.save({"weights": {"module." + k: v for k, v in sd.items()}}, tmp_path / "rlg_auto.pth")
    model = loading.load_model("rlg_auto.pth", tmp_path)
    assert torch.equal(model.norm.weight, sd["norm.weight"])


def test_mismatch_report_names_keys_and_counts(standin, tmp_path):
    sd = _filled(StandIn()).state_dict()
    del sd["layers.1.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["layers.0.weight"] = torch.zeros(8, 9)
    torch.save(sd, tmp_path / "rlg_auto.pth")
    with pytest.raises(ModelFileError) as err:
        loading.load_model("rlg_auto.pth", tmp_path)
    msg = str(err.value)
    assert "rlg_auto.pth does not fit StandIn" in msg
    assert "1 missing key (layers.1.bias)" in msg
    assert "1 unexpected key (extra.weight)" in msg
    assert "1 shape mismatch (layers.0.weight: file (8, 9) vs model (8, 8))" in msg


def test_report_truncates_long_key_lists():
    report = loading.LoadReport(missing=[f"k{i}" for i in range(10)])
    assert report.summary() == "10 missing keys (k0, k1, k2, … 7 more)"


def test_same_keys_other_shapes_says_other_configuration(standin, tmp_path):
    torch.save(StandIn(StandInConfig(width=4)).state_dict(), tmp_path / "rlg_auto.pth")
    with pytest.raises(ModelFileError, match="made with another configuration"):
        loading.load_model("rlg_auto.pth", tmp_path)
    # ... which is what a tiny file is: given its config, it loads.
    assert loading.load_model("rlg_auto.pth", tmp_path, config=StandInConfig(width=4)).norm.weight.shape == (4,)


def test_the_loader_builds_the_config_a_file_records(standin, tmp_path):
    """A file made with another config says so in the folder's manifest (a config record, as
    ``random-weights --tiny`` writes); a preset name there is no record and means nothing."""
    torch.save(StandIn(StandInConfig(width=4, depth=3)).state_dict(), tmp_path / "rlg_auto.pth")
    assets.record(tmp_path, "rlg_auto.pth", config="tiny")
    with pytest.raises(ModelFileError, match="does not fit StandIn.* 2 unexpected keys"):
        loading.load_model("rlg_auto.pth", tmp_path)
    assets.record(tmp_path, "rlg_auto.pth", config=registry.config_record(StandInConfig(width=4, depth=3)))
    assert len(loading.load_model("rlg_auto.pth", tmp_path).layers) == 3
    assets.record(tmp_path, "rlg_auto.pth", config={"width": 4, "colour": "red"})
    with pytest.raises(ModelFileError, match="StandInConfig does not take: colour"):
        loading.load_model("rlg_auto.pth", tmp_path)


def test_missing_file_error_says_the_command(standin, tmp_path):
    with pytest.raises(ModelFileError, match="tortoise-xpu models download rlg_auto.pth --models-dir"):
        loading.load_model("rlg_auto.pth", tmp_path)


def test_safetensors_conversion_round_trip(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.SPECS, "rlg_auto.pth", _standin_spec("WrappedStandIn"))
    sd = _filled(StandIn(), seed=3).state_dict()
    src = tmp_path / "rlg_auto.pth"
    torch.save({"weights": dict(sd)}, src)
    dst = loading.convert_to_safetensors(src)
    assert dst == tmp_path / "rlg_auto.safetensors"
    meta = loading.safetensors_metadata(dst)
    assert meta["model"] == "rlg_auto.pth" and json.loads(meta["config"]) == {"width": 8, "depth": 2}
    assert assets.find("rlg_auto.pth", tmp_path) == dst  # used first from now on
    model = loading.load_model("rlg_auto.pth", tmp_path)  # no convert_state_dict on a converted file
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v)
    half = loading.convert_to_safetensors(src, tmp_path / "half.safetensors", dtype=torch.float16)
    assert loading.load_state(half)["norm.weight"].dtype == torch.float16


def test_convert_refuses_a_file_that_does_not_fit(standin, tmp_path):
    torch.save({"nope": torch.zeros(1)}, tmp_path / "rlg_auto.pth")
    with pytest.raises(ModelFileError, match="does not fit"):
        loading.convert_to_safetensors(tmp_path / "rlg_auto.pth")
    assert not (tmp_path / "rlg_auto.safetensors").exists()


def test_unfold_weight_norm_is_the_inverse_of_folding():
    from tortoise_xpu.models.blocks import fold_weight_norm

    sd = {"conv.weight": torch.randn(6, 3, 5), "conv.bias": torch.randn(6), "norm.weight": torch.randn(6),
          "cond.weight": torch.randn(6, 4, 1)}
    raw = registry.unfold_weight_norm(sd, exclude=("cond.weight",))
    assert set(raw) == {"conv.weight_g", "conv.weight_v", "conv.bias", "norm.weight", "cond.weight"}
    assert raw["conv.weight_g"].shape == (6, 1, 1)
    back = fold_weight_norm(raw)
    assert set(back) == set(sd) and torch.allclose(back["conv.weight"], sd["conv.weight"], atol=1e-6)


# --------------------------------------------------------------------------------------------
# The real networks
# --------------------------------------------------------------------------------------------

ALL = list(registry.SPECS)


@pytest.mark.parametrize("file", ALL)
def test_official_config_matches_the_published_parameter_count(file):
    s = _real(file)
    model = registry.build(file)  # meta device
    assert registry.checkpoint_parameter_count(file, model) == s.official_params


@pytest.mark.skipif(not GOLDEN_KEYS.is_file(), reason="golden missing: run tests/reference/gen_assets.py")
@pytest.mark.parametrize("file", ALL)
def test_official_file_format_equals_the_originals(file):
    """What random-weights writes has the keys, shapes and wrapping of the original's file, and
    converts back to exactly the module's keys (on the meta device: no memory)."""
    _real(file)
    golden = json.loads(GOLDEN_KEYS.read_text())["files"][file]
    model = registry.build(file)
    ckpt = registry.to_checkpoint(file, model.state_dict())
    if golden["wrapper"]:
        assert list(ckpt) == [golden["wrapper"]]
        flat = ckpt[golden["wrapper"]]
    else:
        flat = ckpt
    assert {k: list(v.shape) for k, v in flat.items()} == {k: shape for k, shape, _ in golden["keys"]}
    assert {str(v.dtype).replace("torch.", "") for v in flat.values()} <= {d for _, _, d in golden["keys"]}
    back = registry.convert(file, ckpt)
    assert loading.check_state_dict(model, back).ok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Tiny random weights for every network that imports (one write for the module)."""
    out = tmp_path_factory.mktemp("tiny")
    loading.write_random_weights(out, list(registry.SPECS), seed=7, tiny=True)
    return out


@pytest.mark.parametrize("file", ALL)
def test_tiny_random_weights_round_trip(tiny_dir, file):
    _real(file)
    raw = loading.load_state(tiny_dir / file)
    expected = registry.convert(file, raw)
    model = loading.load_model(file, tiny_dir)  # the manifest says tiny
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    assert registry.checkpoint_parameter_count(file, model) == sum(
        v.numel() for v in (raw[registry.SPECS[file].wrapper_key] if registry.SPECS[file].wrapper_key else raw).values()
        if v.is_floating_point()) - _float_buffer_numel(model)


def _float_buffer_numel(model: nn.Module) -> int:
    sd = model.state_dict()
    return sum(b.numel() for k, b in model.named_buffers() if k in sd and b.is_floating_point())


def test_tiny_vocoder_file_has_the_official_layout(tiny_dir):
    _real("vocoder.pth")
    raw = torch.load(tiny_dir / "vocoder.pth", weights_only=True)
    assert list(raw) == ["model_g"]
    keys = raw["model_g"]
    assert "conv_pre.weight_g" in keys and "conv_pre.weight_v" in keys and "conv_pre.weight" not in keys


def test_random_weights_are_reproducible(tmp_path):
    _real("rlg_auto.pth")
    a = loading.write_random_weights(tmp_path / "a", ["rlg_auto"], seed=3, tiny=True)
    b = loading.write_random_weights(tmp_path / "b", ["rlg_auto"], seed=3, tiny=True)
    assert a[0].sha256 == b[0].sha256
    c = loading.write_random_weights(tmp_path / "c", ["rlg_auto"], seed=4, tiny=True)
    assert c[0].sha256 != a[0].sha256


def test_full_size_random_weights_round_trip_small_models(tmp_path):
    """Official size for the two smallest files (~85 MB written): the format at full size."""
    for file in ("rlg_auto.pth", "vocoder.pth"):
        _real(file)
    rows = loading.write_random_weights(tmp_path, ["rlg_auto", "vocoder"], seed=1, sha=False)
    assert {r.file: r.parameters for r in rows} == {"rlg_auto.pth": 6_297_600, "vocoder.pth": 14_865_506}
    for file in ("rlg_auto.pth", "vocoder.pth"):
        model = loading.load_model(file, tmp_path)
        assert registry.checkpoint_parameter_count(file, model) == registry.SPECS[file].official_params


def test_wrong_file_is_named_for_what_it_looks_like(tiny_dir, tmp_path):
    _real("clvp2.pth")
    _real("autoregressive.pth")
    (tmp_path / "autoregressive.pth").write_bytes((tiny_dir / "clvp2.pth").read_bytes())
    with pytest.raises(ModelFileError) as err:
        loading.load_model("autoregressive.pth", tmp_path, config="tiny")
    msg = str(err.value)
    assert "this looks like clvp2.pth, not autoregressive.pth" in msg
    assert "missing keys" in msg and "unexpected keys" in msg


def test_vocoder_file_given_as_rlg_is_recognised(tiny_dir, tmp_path):
    _real("vocoder.pth")
    _real("rlg_auto.pth")
    (tmp_path / "rlg_auto.pth").write_bytes((tiny_dir / "vocoder.pth").read_bytes())
    with pytest.raises(ModelFileError, match="this looks like vocoder.pth, not rlg_auto.pth"):
        loading.load_model("rlg_auto.pth", tmp_path, config="tiny")


def test_ar_checkpoint_with_gpt2_mask_buffers_loads(tiny_dir, tmp_path):
    """The real autoregressive.pth carries ``gpt.h.N.attn.bias`` / ``masked_bias`` (old transformers
    buffers); the original loads with strict=False to skip them, our class drops them by name."""
    _real("autoregressive.pth")
    raw = loading.load_state(tiny_dir / "autoregressive.pth")
    raw = dict(raw)
    layers = {k.split(".")[2] for k in raw if k.startswith("gpt.h.")}
    for i in layers:
        raw[f"gpt.h.{i}.attn.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool)
        raw[f"gpt.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(raw, tmp_path / "autoregressive.pth")
    loading.load_model("autoregressive.pth", tmp_path, config="tiny")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TORTOISE_XPU_REF_WEIGHTS"),
                    reason="set TORTOISE_XPU_REF_WEIGHTS to the folder make_random_weights.py wrote (4 GB, slow)")
@pytest.mark.parametrize("file", ALL)
def test_full_size_files_written_by_the_original_load_strictly(file):
    """Slow (loads up to 1.7 GB per file): every full-size checkpoint written by the ORIGINAL
    classes (../shared/reference/make_random_weights.py) loads strictly, and the loaded weights
    equal the file's (after the documented conversion)."""
    _real(file)
    folder = Path(os.environ["TORTOISE_XPU_REF_WEIGHTS"])
    if not (folder / file).is_file():
        pytest.skip(f"{file} not in {folder} (the reference script does not write it)")
    model = loading.load_model(file, folder, path=folder / file)
    expected = registry.convert(file, loading.load_state(folder / file))
    got = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    assert registry.checkpoint_parameter_count(file, model) == registry.SPECS[file].official_params


def test_extra_keys_of_leniently_loaded_files_are_dropped_with_a_warning(tmp_path):
    """autoregressive.pth / hifidecoder.pth: the original loads them with strict=False."""
    import warnings

    from tortoise_xpu.errors import ModelFileError
    from tortoise_xpu.models import loading, registry

    loading.write_random_weights(tmp_path, names=["autoregressive", "clvp2"], tiny=True, sha=False)
    for name in ("autoregressive.pth", "clvp2.pth"):
        raw = torch.load(tmp_path / name, weights_only=True)
        raw["some_training_wrapper.extra"] = torch.zeros(3)
        torch.save(raw, tmp_path / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = loading.load_model("autoregressive", tmp_path)
    assert any("some_training_wrapper.extra" in str(w.message) for w in caught)
    assert "some_training_wrapper.extra" not in model.state_dict()
    # files the original loads strictly stay strict
    assert not registry.spec("clvp2").extra_keys_ignored
    with pytest.raises(ModelFileError, match="unexpected"):
        loading.load_model("clvp2", tmp_path)
    # a missing key is an error even where extra ones are tolerated
    raw = torch.load(tmp_path / "autoregressive.pth", weights_only=True)
    del raw["final_norm.weight"]
    torch.save(raw, tmp_path / "autoregressive.pth")
    with pytest.raises(ModelFileError, match="missing"):
        loading.load_model("autoregressive", tmp_path)


def test_building_every_network_on_meta_imports_no_compiler_and_cpu_builds_stay_random():
    """load_model builds on the meta device: random fills there are skipped (they imported torch._dynamo,
    ~2 s per process), while a real-device build still gets its random initialisation."""
    import subprocess
    import sys

    code = ("import sys\nfrom tortoise_xpu.models import registry\n"
            "for f in registry.SPECS:\n    registry.build(f, device='meta')\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False", out.stderr
    from tortoise_xpu.models import registry

    model = registry.build("rlg_auto.pth", "tiny", device="cpu")
    assert model.layers[1].weight.std() > 1  # an EqualLinear: N(0, 1/lr_mul) with lr_mul 0.1, not left empty
