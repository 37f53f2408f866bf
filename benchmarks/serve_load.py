"""Load on the speech server: requests/s, latency and time to first audio at several concurrencies.

Starts the server in this process on 127.0.0.1 (a free port), sends single-candidate streaming
requests (``tts-1``, ``pcm``, a fixed code count via ``force_tokens`` so every run does the same
work) from N client threads, and reports per concurrency: requests/s, p50/p95 latency, p50/p95
time to first audio, and aggregate audio-seconds per second.  The target's metric is that
aggregate at concurrency 8 over concurrency 1 (``speedup_8_vs_1`` in the JSON).

    python benchmarks/serve_load.py                       # tiny random models (made in a temp dir)
    python benchmarks/serve_load.py --models-dir DIR      # e.g. full-size random weights:
        python -m tortoise_xpu models random-weights --out DIR --no-sha

Numbers depend on the machine and on what else runs on it; say both beside them.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models_dir: str, device: str, max_batch: int, max_queue: int, voices_dir: str):
    import uvicorn

    from tortoise_xpu.serve.main import build

    engine, app = build(models_dir, device, voices_dir=voices_dir, max_batch=max_batch, max_queue=max_queue,
                        background_load=False, deadline_s=None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}", engine


def one_request(url: str, body: dict) -> dict:
    import httpx

    start = time.perf_counter()
    first = None
    size = 0
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=3600) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.read()[:200]!r}")
        for piece in resp.iter_bytes():
            if piece and first is None:
                first = time.perf_counter() - start
            size += len(piece)
    return {"latency": time.perf_counter() - start, "ttfa": first or 0.0, "audio_s": size / 2 / 24000}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
    return values[k]


def run_level(url: str, concurrency: int, requests: int, tokens: int, chunk: int) -> dict:
    bodies = [{"model": "tts-1", "input": f"This is load test request number {i}.", "voice": "random",
               "response_format": "pcm", "seed": 1000 + i, "force_tokens": tokens, "stream_chunk_size": chunk,
               "first_buffer": chunk} for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda b: one_request(url, b), bodies))
    wall = time.perf_counter() - start
    lat = [r["latency"] for r in results]
    ttfa = [r["ttfa"] for r in results]
    audio = sum(r["audio_s"] for r in results)
    return {"concurrency": concurrency, "requests": requests, "wall_s": round(wall, 3),
            "requests_per_s": round(requests / wall, 3), "p50_latency_s": round(pct(lat, 0.5), 3),
            "p95_latency_s": round(pct(lat, 0.95), 3), "p50_ttfa_s": round(pct(ttfa, 0.5), 3),
            "p95_ttfa_s": round(pct(ttfa, 0.95), 3), "audio_s_per_s": round(audio / wall, 3),
            "mean_ttfa_s": round(statistics.mean(ttfa), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", default=None, help="model files (default: tiny random models in a temp dir)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--levels", default="1,4,8,16", help="concurrencies to run (default: 1,4,8,16)")
    p.add_argument("--requests", type=int, default=None, help="requests per level (default: 2 x concurrency, >= 4)")
    p.add_argument("--tokens", type=int, default=None, help="codes per request (default: 60 tiny, 40 full-size)")
    p.add_argument("--chunk", type=int, default=20, help="stream_chunk_size and first_buffer (default: 20)")
    p.add_argument("--max-batch", type=int, default=16, help="AR rows per running batch (default: 16)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print only the JSON")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [int(x) for x in args.levels.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir
        if models_dir is None:
            from tortoise_xpu.models.loading import write_random_weights, write_standin_data

            models_dir = str(Path(tmp) / "tiny")
            Path(models_dir).mkdir()
            write_random_weights(models_dir, tiny=True, seed=1234, sha=False)
            write_standin_data(models_dir)
        tokens = args.tokens or (60 if args.models_dir is None else 40)
        server, thread, url, engine = start_server(models_dir, args.device, args.max_batch, 4 * max(levels),
                                                   str(Path(tmp) / "voices"))
        try:
            one_request(url, {"model": "tts-1", "input": "Warm up.", "voice": "random", "response_format": "pcm",
                              "seed": 1, "force_tokens": 8, "stream_chunk_size": 8, "first_buffer": 8})
            rows = [run_level(url, c, args.requests or max(4, 2 * c), tokens, args.chunk) for c in levels]
        finally:
            server.should_exit = True
            thread.join(30)
            engine.close()
    by_c = {r["concurrency"]: r for r in rows}
    out = {"models": "tiny random" if args.models_dir is None else args.models_dir, "device": args.device,
           "tokens_per_request": tokens, "chunk": args.chunk, "max_batch": args.max_batch,
           "torch_threads": torch.get_num_threads(), "levels": rows}
    if 1 in by_c and 8 in by_c:
        out["speedup_8_vs_1"] = round(by_c[8]["audio_s_per_s"] / by_c[1]["audio_s_per_s"], 2)
    if not args.json:
        head = ("conc", "reqs", "req/s", "p50 lat", "p95 lat", "p50 TTFA", "p95 TTFA", "audio s/s")
        print(" | ".join(f"{h:>9}" for h in head))
        for r in rows:
            print(" | ".join(f"{v:>9}" for v in (r["concurrency"], r["requests"], r["requests_per_s"],
                                                  r["p50_latency_s"], r["p95_latency_s"], r["p50_ttfa_s"],
                                                  r["p95_ttfa_s"], r["audio_s_per_s"])))
        if "speedup_8_vs_1" in out:
            print(f"aggregate audio-seconds/s at concurrency 8 vs 1: {out['speedup_8_vs_1']}x")
    print(json.dumps(out, indent=None if not args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
