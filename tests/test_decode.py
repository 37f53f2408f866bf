"""The AR decode engine (pipeline/decode.py) and the backend graph/stream helpers (backends/graphs.py).

The static-shape path (device-tensor position, bucketed cache reads) and its graph mode must give
exactly the codes of the eager int-position path; graphs are exercised on the CPU through a
stand-in runner that replays by calling the captured step.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from tortoise_xpu.backends import resolve
from tortoise_xpu.backends.graphs import GraphRunner, SideStream
from tortoise_xpu.models.autoregressive import ARConfig, UnifiedVoice
from tortoise_xpu.pipeline.decode import DecodeEngine, bucket_length, choose_mode
from tortoise_xpu.pipeline.sampling import SamplingSettings

CPU = resolve("cpu")


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return UnifiedVoice(ARConfig.tiny()).eval()


def _inputs(b: int, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, 64, generator=g)
    text = torch.randint(1, 200, (1, 9), generator=g)
    u = torch.rand(b, steps, generator=g)
    return cond, text, u


class EagerGraphs:
    """A graph runner for the CPU: warms up like the real one, and 'replays' by calling the step."""

    def __init__(self):
        self.captures = 0

    def capture(self, fn, *, warmup: int = 2, restore=None):
        for _ in range(warmup):
            fn()
            if restore is not None:
                restore()
        self.captures += 1
        return SimpleNamespace(replay=fn)


def _decode(ar, mode, u, settings=SamplingSettings(), steps=40, force=True, runner=None, bucket=8, **kw):
    cond, text, _ = _inputs(1, 1)
    engine = DecodeEngine(CPU, mode=mode, bucket=bucket, graph_runner=runner, **kw)
    with torch.no_grad():
        return engine.decode(ar, cond, text, u, settings, steps, force), engine


@pytest.mark.parametrize("settings", [SamplingSettings(), SamplingSettings(temperature=1.3, top_p=1.0, top_k=0,
                                                                           repetition_penalty=1.0),
                                      SamplingSettings(typical_sampling=True, top_k=5)])
def test_static_path_gives_the_eager_codes(ar, settings):
    _, _, u = _inputs(3, 32, seed=1)
    eager, _ = _decode(ar, "eager", u, settings, steps=32)
    static, _ = _decode(ar, "static", u, settings, steps=32)
    assert eager.steps == static.steps == 32
    assert torch.equal(eager.codes, static.codes)
    assert eager.codes.shape == (3, 32) and (eager.codes != ar.config.stop_mel_token).all()


@pytest.mark.parametrize("mode", ["eager", "static", "graph"])
def test_iter_decode_keeps_the_hidden_state_behind_each_code(ar, mode):
    """keep_hidden (streaming): state.hidden[:, i] is the latent of code i, the teacher-forced pass's,
    in every mode (graph: written inside the captured step); iterating gives the same codes as decode()."""
    cond, text, _ = _inputs(1, 1)
    _, _, u = _inputs(2, 20, seed=3)
    engine = DecodeEngine(CPU, mode=mode, bucket=8, graph_runner=EagerGraphs())
    with torch.no_grad():
        seen = []
        for n, st in engine.iter_decode(ar, cond, text, u, SamplingSettings(), 20, True, keep_hidden=True):
            seen.append(n)
        codes, hidden = st.codes.clone(), st.hidden.clone()
        forced = ar(cond.expand(2, -1), text.expand(2, -1), torch.full((2,), text.shape[1]), codes,
                    torch.full((2,), 20 * ar.config.mel_length_compression), return_latent=True, clip_inputs=False)
        plain, _ = _decode(ar, mode, u, steps=20, runner=EagerGraphs())
    assert seen == list(range(1, 21))
    assert torch.equal(codes, plain.codes)
    torch.testing.assert_close(hidden, forced, atol=1e-4, rtol=1e-4)


def test_graph_mode_replays_one_capture_per_bucket_and_reuses_them(ar):
    _, _, u = _inputs(2, 30, seed=2)
    eager, _ = _decode(ar, "eager", u, steps=30)
    runner = EagerGraphs()
    cond, text, _ = _inputs(1, 1)
    engine = DecodeEngine(CPU, mode="graph", bucket=8, graph_runner=runner)
    with torch.no_grad():
        first = engine.decode(ar, cond, text, u, SamplingSettings(), 30, True)
        # prompt 13 positions + 29 fed-back codes = 42 slots -> cache of 48; live lengths 14..42 -> buckets 16..48
        assert runner.captures == engine.captures == 5
        second = engine.decode(ar, cond, text, u, SamplingSettings(), 30, True)
    assert runner.captures == 5  # same shape: the graphs are reused
    assert torch.equal(first.codes, eager.codes) and torch.equal(second.codes, eager.codes)


def test_eager_engine_reuses_its_kv_cache_for_a_repeated_shape_and_gives_the_same_codes(ar):
    """Eager mode keeps the last run's buffers (first touch of a fresh cache costs the CPU a tenth
    of the AR stage); the reused, dirty cache must not change the codes, a new shape gets new
    buffers, and a decode interleaved with a suspended one on the same engine gets its own."""
    cond, text, _ = _inputs(1, 1)
    _, _, u = _inputs(2, 24, seed=5)
    _, _, other_u = _inputs(2, 24, seed=6)
    engine = DecodeEngine(CPU, mode="eager")

    def run(uniforms):
        for _, st in engine.iter_decode(ar, cond, text, uniforms, SamplingSettings(), 24, True):
            pass
        return st.codes.clone(), st.cache.k

    with torch.no_grad():
        fresh = DecodeEngine(CPU, mode="eager").decode(ar, cond, text, u, SamplingSettings(), 24, True).codes
        _, cache = run(other_u)  # leaves the cache full of another run's keys
        again, cache_again = run(u)
        assert cache_again is cache and torch.equal(again, fresh)
        outer = engine.iter_decode(ar, cond, text, u, SamplingSettings(), 24, True)
        _, outer_state = next(outer)
        inner, inner_cache = run(other_u)
        for _, st in outer:
            pass
        assert outer_state.cache.k is cache and inner_cache is not cache
        assert torch.equal(st.codes, fresh) and not torch.equal(inner, fresh)
        _, smaller = run(u[:1])
        assert smaller is not cache and smaller.shape[1] == 1


def test_eager_engine_does_not_keep_a_cache_past_its_limit(ar, monkeypatch):
    from tortoise_xpu.pipeline import decode

    cond, text, _ = _inputs(1, 1)
    _, _, u = _inputs(2, 24, seed=5)
    engine = DecodeEngine(CPU, mode="eager")

    def cache_of_a_run():
        for _, st in engine.iter_decode(ar, cond, text, u, SamplingSettings(), 24, True):
            pass
        return st.cache.k

    with torch.no_grad():
        monkeypatch.setattr(decode, "EAGER_KEEP_BYTES", 0)
        assert cache_of_a_run() is not cache_of_a_run()
        monkeypatch.setattr(decode, "EAGER_KEEP_BYTES", 2**30)
        assert cache_of_a_run() is cache_of_a_run()


def test_candidates_do_not_depend_on_the_batch(ar):
    _, _, u = _inputs(4, 24, seed=3)
    whole, engine = _decode(ar, "static", u, steps=24)
    halves = [engine.decode(ar, *_inputs(1, 1)[:2], u[i:i + 2], SamplingSettings(), 24, True).codes
              for i in (0, 2)]
    assert torch.equal(whole.codes, torch.cat(halves))


@pytest.mark.parametrize("mode", ["eager", "static", "graph"])
def test_stop_is_checked_every_n_steps_and_pads_with_stop(mode):
    torch.manual_seed(1)
    model = UnifiedVoice(ARConfig.tiny()).eval()
    stop = model.config.stop_mel_token
    with torch.no_grad():
        model.mel_head.bias[stop] = 50.0  # every candidate stops at once
    _, _, u = _inputs(2, 24, seed=4)
    result, _ = _decode(model, mode, u, steps=24, force=False, runner=EagerGraphs(), stop_check_every=8)
    assert result.steps == 8
    assert (result.codes == stop).all()
    forced, _ = _decode(model, mode, u, steps=24, force=True, runner=EagerGraphs())
    assert forced.steps == 24 and not (forced.codes == stop).any()


def test_bf16_weights_keep_fp32_logits_close(ar):
    """The Policy's half dtype for the AR: decode logits stay near the float32 ones."""
    low = UnifiedVoice(ARConfig.tiny()).eval()
    low.load_state_dict(ar.state_dict())
    low = low.to(torch.bfloat16)
    cond, text, _ = _inputs(1, 1)
    tokens = torch.tensor([5, 77])
    with torch.no_grad():
        out = []
        for model, dt in ((ar, torch.float32), (low, torch.bfloat16)):
            cache = model.new_cache(2, 32, dtype=dt)
            model.prefill(cond, text, cache)
            position = torch.ones((), dtype=torch.long)
            logits, _ = model.decode_step(tokens, position, cache)
            out.append(logits.float())
    scale = out[0].abs().max()
    assert (out[0] - out[1]).abs().max() <= 0.05 * scale


def test_bucket_length_and_mode_choice(monkeypatch):
    assert [bucket_length(n, 64, 200) for n in (1, 64, 65, 190)] == [64, 64, 128, 192]
    assert bucket_length(199, 64, 200) == 200
    assert choose_mode(graphs=True, has_runner=True) == "graph"
    assert choose_mode(graphs=True, has_runner=False) == "static"
    assert choose_mode(graphs=False, has_runner=True) == "eager"
    assert choose_mode(graphs=True, has_runner=True, forced="static") == "static"
    # The environment is the Policy's to read (backends/policy.py), not the engine's.
    monkeypatch.setenv("TORTOISE_XPU_DECODE", "static")
    assert choose_mode(graphs=True, has_runner=True) == "graph"
    with pytest.raises(ValueError, match="decode mode"):
        choose_mode(False, False, "warp")


def test_engine_rejects_too_many_tokens(ar):
    with pytest.raises(ValueError, match="max_tokens"):
        _decode(ar, "eager", torch.rand(1, 700), steps=700)


# ------------------------------------------------------------------------------ backends/graphs.py
class FakeDeviceModule:
    """Just enough of a CUDA-style device module to watch what GraphRunner / SideStream call."""

    def __init__(self):
        self.log: list[str] = []
        module = self

        class Stream:
            def __init__(self, device=None):
                self.name = "side"

            def wait_stream(self, other):
                module.log.append(f"{self.name}.wait_stream")

            def wait_event(self, event):
                module.log.append(f"{self.name}.wait_event")

        class Event:
            def record(self, stream=None):
                module.log.append("event.record")

        class FakeGraph:
            def replay(self):
                module.log.append("replay")

        self.Stream, self.Event, self.FakeGraph = Stream, Event, FakeGraph
        self._current = Stream()
        self._current.name = "current"

    def current_stream(self, device=None):
        return self._current

    @contextlib.contextmanager
    def stream(self, s):
        self.log.append(f"enter {s.name}")
        yield
        self.log.append(f"exit {s.name}")

    @contextlib.contextmanager
    def graph(self, g, pool=None, stream=None):
        self.log.append("capture begin")
        yield
        self.log.append("capture end")

    def graph_pool_handle(self):
        return "pool"


def test_graph_runner_warms_up_on_a_side_stream_then_captures():
    mod = FakeDeviceModule()
    runner = GraphRunner.probe(mod, "FakeGraph", torch.device("cpu"))
    assert runner is not None and GraphRunner.probe(mod, "NoSuchGraph", torch.device("cpu")) is None
    calls = []
    graph = runner.capture(lambda: (calls.append("fn"), mod.log.append("fn")), warmup=2,
                           restore=lambda: mod.log.append("restore"))
    graph.replay()
    assert mod.log == ["side.wait_stream", "enter side", "fn", "restore", "fn", "restore", "exit side",
                       "current.wait_stream", "capture begin", "fn", "capture end", "replay"]
    assert runner.shared_pool() == "pool"


def test_graph_capture_lets_other_threads_work_where_the_module_allows():
    """A store serving several threads: capture in ``thread_local`` error mode where the module's
    ``graph`` takes that option (torch.cuda's does), and without it where it does not."""
    mod = FakeDeviceModule()
    modes = []

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None, capture_error_mode="global"):
        modes.append(capture_error_mode)
        yield

    plain = GraphRunner.probe(mod, "FakeGraph", torch.device("cpu"))
    plain.capture(lambda: None, warmup=0)  # FakeDeviceModule.graph has no such option: not passed
    mod.graph = graph
    GraphRunner.probe(mod, "FakeGraph", torch.device("cpu")).capture(lambda: None, warmup=0)
    assert modes == ["thread_local"]


def test_side_stream_orders_copies_before_use():
    mod = FakeDeviceModule()
    side = SideStream.probe(mod, torch.device("cpu"))
    with side.active() as event:
        mod.log.append("copy")
    side.wait(event, [torch.zeros(1)])
    assert mod.log == ["side.wait_stream", "enter side", "copy", "event.record", "exit side", "current.wait_event"]
    assert SideStream.probe(None, torch.device("cpu")) is None


def test_cpu_backend_has_no_graphs_or_streams():
    assert CPU.graph_runner() is None and CPU.graph() is None and CPU.side_stream() is None


# ------------------------------------------------------------------------------ through TextToSpeech
def test_pipeline_codes_do_not_depend_on_the_decode_mode(tiny_models_dir, monkeypatch):
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.pipeline import ar_sampling

    cond = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    codes = {}
    for mode in ("eager", "static"):
        monkeypatch.setenv("TORTOISE_XPU_DECODE", mode)
        tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", batch_size=2)  # the Policy reads the mode
        ctx = tts.new_context(4, torch.Generator().manual_seed(5))
        codes[mode] = ar_sampling.sample_codes(tts.store, ctx, cond, tts.text_tokens("decode modes"), 4,
                                               SamplingSettings(), 20)
        assert ctx.report.decode_mode == mode
    assert torch.equal(codes["eager"], codes["static"])


def test_load_models_reports_seconds_per_model(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    times = tts.load_models(candidates=4)
    assert set(times) == {"autoregressive", "clvp", "diffusion", "vocoder"} and all(t >= 0 for t in times.values())
    from tortoise_xpu.models.registry import spec

    assert set(tts.store.loaded()) >= {spec(name).file for name in times}


# ------------------------------------------------------------------------------ backends/offload.py
class MetaBackend:
    """A backend whose 'device' is torch's meta device: moves are visible without an accelerator."""

    device = torch.device("meta")
    quirks = SimpleNamespace(non_blocking_copies=True)

    def __init__(self, side=None):
        self._side = side

    def side_stream(self):
        return self._side


def test_shuttle_moves_weights_and_back_without_copying_back():
    from tortoise_xpu.backends.offload import ModelShuttle

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shuttle = ModelShuttle(MetaBackend(), pin=False)
    shuttle.to_device(model)
    assert all(t.is_meta for t in model.state_dict().values())
    shuttle.offload(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shuttle_prefetches_on_the_side_stream():
    from tortoise_xpu.backends.offload import ModelShuttle

    mod = FakeDeviceModule()
    side = SideStream(mod, torch.device("meta"))
    shuttle = ModelShuttle(MetaBackend(side), pin=False)
    model = torch.nn.Linear(2, 2)
    shuttle.prefetch(model)
    assert mod.log[:2] == ["side.wait_stream", "enter side"] and "event.record" in mod.log
    assert not model.weight.is_meta  # not swapped in until the stage asks for it
    shuttle.to_device(model)
    assert model.weight.is_meta and mod.log[-1] == "current.wait_event"


def test_compiled_static_step_traces_and_gives_the_eager_codes(ar):
    """The torch.compile switch (traced by dynamo with the 'eager' backend: no C++ compiler needed)."""
    from tortoise_xpu.pipeline.decode import compile_backend

    assert compile_backend("1") == "inductor" and compile_backend("0") is None and compile_backend(None) is None
    assert compile_backend("aot_eager") == "aot_eager"
    _, _, u = _inputs(2, 12, seed=6)
    eager, _ = _decode(ar, "eager", u, steps=12)
    compiled, engine = _decode(ar, "static", u, steps=12, bucket=16, compile="eager")
    assert engine.compile == "eager"
    assert torch.equal(eager.codes, compiled.codes)


def test_a_failing_compile_falls_back_to_the_plain_step(ar, monkeypatch):
    """A compiler that fails on the first call (as Inductor did on an H200) leaves the codes unchanged."""
    def broken_compile(fn, **kwargs):
        def compiled():
            raise TypeError("list indices must be integers or slices, not NoneType")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    _, _, u = _inputs(2, 12, seed=6)
    eager, _ = _decode(ar, "eager", u, steps=12)
    with pytest.warns(RuntimeWarning, match="torch.compile of the decode step failed"):
        compiled, engine = _decode(ar, "static", u, steps=12, bucket=16, compile="inductor")
    assert torch.equal(eager.codes, compiled.codes)


def test_graph_mode_on_a_real_device(backend, ar):
    """Where the backend captures graphs (CUDA, ROCm, XPU with graphs): replays give the static path's
    codes bit for bit, and a second batch of the same shape reuses the captures."""
    runner = backend.graph_runner()
    if runner is None:
        pytest.skip(f"{backend.name} has no device graphs here")
    model = UnifiedVoice(ARConfig.tiny()).eval()
    model.load_state_dict(ar.state_dict())
    model = backend.to_device(model)
    cond, text, u = _inputs(2, 30, seed=7)
    cond, text = backend.to_device(cond), backend.to_device(text)
    out = {}
    with torch.no_grad():
        for mode in ("static", "graph"):
            engine = DecodeEngine(backend, mode=mode, bucket=8)
            out[mode] = engine.decode(model, cond, text, u, SamplingSettings(), 30, True).codes.cpu()
            if mode == "graph":
                assert engine.mode == "graph" and engine.captures == 5
                again = engine.decode(model, cond, text, u, SamplingSettings(), 30, True).codes.cpu()
                assert engine.captures == 5 and torch.equal(again, out["graph"])
    assert torch.equal(out["static"], out["graph"])


def test_shuttle_on_a_real_device(backend):
    """Per-stage residency where the backend has a side stream: prefetch, use, offload, use again."""
    from tortoise_xpu.backends.offload import ModelShuttle

    if backend.side_stream() is None:
        pytest.skip(f"{backend.name} has no side stream here")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16)).eval()
    x = torch.randn(4, 8)
    want = model(x)
    shuttle = ModelShuttle(backend)
    for _ in range(2):
        shuttle.prefetch(model)
        shuttle.to_device(model)
        with torch.no_grad():
            got = model(backend.to_device(x)).cpu()
        assert torch.allclose(got, want, atol=1e-5)
        shuttle.offload(model)
        assert next(model.parameters()).device.type == "cpu"


class FailingGraphs(EagerGraphs):
    """A graph runner whose capture fails with ``error``."""

    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error

    def capture(self, fn, *, warmup: int = 2, restore=None):
        raise self.error


def test_capture_failure_falls_back_but_out_of_memory_goes_to_the_backoff(ar):
    _, _, u = _inputs(2, 12, seed=5)
    eager, _ = _decode(ar, "eager", u, steps=12)
    with pytest.warns(RuntimeWarning, match="graph capture failed"):
        fallback, engine = _decode(ar, "graph", u, steps=12, runner=FailingGraphs(RuntimeError("op not capturable")))
    assert engine.mode == "static" and torch.equal(fallback.codes, eager.codes)
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="out of memory"):
        _decode(ar, "graph", u, steps=12, runner=FailingGraphs(oom))
