"""Device check of continuous batching (run by hand on a CUDA machine; not part of the tests).

Checks that ContinuousDecoder rows give the single-run DecodeEngine codes on CUDA, tiny and full-size
AR (random weights), and times 8 requests serial vs continuous; with ``--load`` it also makes full-size
random weights and runs benchmarks/serve_load.py on them at concurrency 1, 8 and 16::

    PYTHONPATH=$PWD python benchmarks/serve_gpu_check.py [--load]
"""
import sys, time, os, subprocess, tempfile, importlib
print("python", sys.version.split()[0])
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
for m in ("starlette", "uvicorn", "httpx", "soundfile", "tokenizers"):
    try: importlib.import_module(m); print(m, "ok")
    except Exception as e: print(m, "MISSING", e)
sys.path.insert(0, os.getcwd())
from tortoise_xpu.models.autoregressive import UnifiedVoice, ARConfig
from tortoise_xpu.pipeline.decode import DecodeEngine
from tortoise_xpu.pipeline.continuous import ContinuousDecoder, RowSpec
from tortoise_xpu.pipeline.sampling import SamplingSettings
from tortoise_xpu.backends import resolve
be = resolve("cuda")
for cfg_name, cfg in (("tiny", ARConfig.tiny()), ("full", ARConfig())):
    torch.manual_seed(0)
    ar = UnifiedVoice(cfg).eval().to("cuda")
    specs=[]
    for i in range(8):
        g = torch.Generator().manual_seed(i)
        specs.append(RowSpec(torch.randn(1, cfg.model_dim, generator=g).cuda(), torch.randint(1,100,(1,5+7*i),generator=g).cuda(), torch.rand(100, generator=g), SamplingSettings(), 100, force=True, tag=i))
    ref = {}
    t=time.time()
    for sp in specs:
        ref[sp.tag] = DecodeEngine(be, mode="eager").decode(ar, sp.cond, sp.text, sp.u[None], sp.settings, 100, force=True).codes[0].tolist()
    torch.cuda.synchronize(); t_alone=time.time()-t
    dec = ContinuousDecoder(ar, 8, backend=be)
    out={}; pending=list(specs); t=time.time(); step=0
    with torch.no_grad():
        while pending or dec.rows:
            while pending and dec.free and step % 2 == 0: dec.join(pending.pop(0))
            dec.step(); step+=1
            for r in [r for r in dec.rows if r.finished]: out[r.spec.tag]=r.codes; dec.leave(r)
    torch.cuda.synchronize(); t_b=time.time()-t
    same = sum(out[i]==ref[i] for i in range(8))
    print(cfg_name, "rows equal to single-run:", same, "/ 8", "serial eager s", round(t_alone,2), "continuous s", round(t_b,2))
# full-size serving load
if "--load" in sys.argv:
    d = tempfile.mkdtemp()
    t=time.time()
    r = subprocess.run([sys.executable, "-m", "tortoise_xpu", "models", "random-weights", "--out", d, "--no-sha"], capture_output=True, text=True)
    print("weights", r.returncode, round(time.time()-t,1), r.stderr[-300:])
    subprocess.run([sys.executable, "benchmarks/serve_load.py", "--models-dir", d, "--device", "cuda", "--levels", "1,8,16", "--tokens", "100", "--chunk", "20"], timeout=300)
