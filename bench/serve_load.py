"""Load test of `kerakit serve` on loopback (part of `make bench`, written to serve.json).

For one exported model, with the real CLI server in its own process and an
aiohttp client in this one (both share this machine's cores):

- overhead: p50 of sequential KServe v2 requests at batch 1 through HTTP
  minus p50 of the bare runtime call (`Predictor.run` with the same session
  settings the server uses). Target < 1 ms.
- load: N requests at concurrency C against a server without and with dynamic
  batching, in alternating rounds: requests/s, p50/p99 latency, errors
  (target 0). Target: batching on >= 2x the requests/s of batching off.

Requests carry JSON tensors for small inputs and the binary tensor data
extension (what tritonclient sends) for large ones.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KERAKIT = str(Path(sys.executable).parent / "kerakit")
BINARY_ABOVE = 4096  # input elements above which requests use binary tensor data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, model: Path, *args: str):
        import requests

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([KERAKIT, "serve", str(model), "--name", "m", "--no-log", "--port",
                                      str(self.port), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(600):
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).ok:
                    return
            except requests.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode())
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def metrics(self) -> str:
        import requests

        return requests.get(self.url + "/metrics").text

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def request_body(x: np.ndarray) -> tuple[bytes, dict]:
    tensor = {"name": "image", "shape": list(x.shape), "datatype": "FP32"}
    if x.size <= BINARY_ABOVE:
        return json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode(), {"content-type": "application/json"}
    raw = x.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}


async def _load(url: str, bodies: list[tuple[bytes, dict]], n: int, concurrency: int) -> dict:
    import aiohttp

    latencies: list[int] = []
    errors = 0
    todo = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker():
            nonlocal errors
            for i in todo:
                body, headers = bodies[i % len(bodies)]
                start = time.perf_counter_ns()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter_ns() - start)

        for _ in range(min(50, n)):  # warm-up: connections, first requests
            body, headers = bodies[0]
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) / 1e6
    return {"requests": n, "concurrency": concurrency, "requests_per_s": round(n / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "errors": errors}


def load(url: str, bodies, n: int, concurrency: int) -> dict:
    return asyncio.run(_load(url, bodies, n, concurrency))


def bare_runtime_p50_ms(model: Path, x: np.ndarray, calls: int = 3000) -> float:
    from kerakit import runtime

    with runtime.load(model) as p:
        feed = p.validate({p.inputs[0].name: x})
        for _ in range(100):
            p.run(feed)
        samples = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            p.run(feed)
            samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e6


def _mean_rows(calls: dict) -> float | None:
    total = sum(v for k, v in calls.items() if k.startswith("kerakit_model_batch_rows_sum"))
    count = sum(v for k, v in calls.items() if k.startswith("kerakit_model_batch_rows_count"))
    return round(total / count, 2) if count else None


def serve_load(model: Path, x_test: np.ndarray, recipe: str, requests_: int = 5000, concurrency: int = 16,
               rounds: int = 3, max_batch: int = 16, batch_wait_ms: float = 5.0) -> dict:
    bodies = [request_body(x_test[i:i + 1]) for i in range(min(64, len(x_test)))]
    plain = _Server(model)
    batched = _Server(model, "--max-batch", str(max_batch), "--batch-wait-ms", str(batch_wait_ms))
    try:
        path = "/v2/models/m/infer"
        # Overhead: sequential requests, alternating with bare runtime calls, 3 rounds.
        http_p50, bare_p50 = [], []
        for _ in range(rounds):
            http_p50.append(load(plain.url + path, bodies, 2000, 1)["p50_ms"])
            bare_p50.append(bare_runtime_p50_ms(model, x_test[:1]))
        runs = {"batching_off": [], "batching_on": []}
        for r in range(rounds):
            order = [("batching_off", plain), ("batching_on", batched)]
            for name, server in (order if r % 2 == 0 else order[::-1]):
                runs[name].append(load(server.url + path, bodies, requests_, concurrency))
        calls = {line.split()[0]: float(line.split()[-1]) for line in batched.metrics().splitlines()
                 if line.startswith(("kerakit_model_batch_rows_sum", "kerakit_model_batch_rows_count"))}
    finally:
        plain.stop()
        batched.stop()

    def median_run(results: list[dict]) -> dict:
        return sorted(results, key=lambda d: d["requests_per_s"])[len(results) // 2]

    off, on = median_run(runs["batching_off"]), median_run(runs["batching_on"])
    http, bare = statistics.median(http_p50), statistics.median(bare_p50)
    overhead = http - bare
    ratio = on["requests_per_s"] / off["requests_per_s"]
    errors = sum(d["errors"] for v in runs.values() for d in v)
    # Amdahl: batching can at most remove the batch-1 model calls, which keep one
    # inference thread busy for this share of the wall time when batching is off.
    share = bare * off["requests_per_s"] / 1000
    return {
        "recipe": recipe, "model": model.name, "input_shape": list(x_test.shape[1:]),
        "encoding": "json" if x_test[:1].size <= BINARY_ABOVE else "binary tensor data",
        "overhead": {"http_p50_ms": round(http, 3), "bare_runtime_p50_ms": round(bare, 4),
                     "server_overhead_ms": round(overhead, 3), "rounds": {"http": http_p50, "bare": bare_p50}},
        "load": {"batching_off": off, "batching_on": on, "all_rounds": runs,
                 "dynamic_batching": {"max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
                                      "mean_rows_per_model_call": _mean_rows(calls)}},
        "batching_throughput_ratio": round(ratio, 2),
        "model_call_share_when_batching_off": round(share, 3),
        "batching_ratio_ceiling_if_batched_calls_were_free": round(1 / (1 - share), 2) if share < 1 else None,
        "targets": {"overhead < 1 ms": overhead < 1.0, "0 errors": errors == 0,
                    "batching on >= 2x requests/s at concurrency 16": ratio >= 2.0},
    }
