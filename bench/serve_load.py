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

`limits` measures kerakit against the limits of its design, each a ratio within one run
(3 alternating rounds, median), client on the same cores:

- rest_vs_bare_endpoint: kerakit REST requests/s at concurrency 16 over a bare Starlette
  endpoint on the same uvicorn (uvloop, httptools) that reads the body and returns a
  fixed JSON body of the size kerakit answers: the HTTP stack's ceiling. Goal >= 0.7.
  With each, the CPU time per request of the server process and of the client.
- grpc_vs_rest: KServe v2 gRPC (raw_input_contents, grpc.aio client) over REST with
  binary tensors and over REST with JSON tensors, requests/s at concurrency 16, with CPU
  time per request. Goal >= 1.5 for digits_mobilenet.
- json_guard: server CPU per REST request with JSON tensors, today's server over the same server with
  the 19-digit regex issue 28 found over every body put back in front of the parse. Goal <= 0.5 (MobileNetV3).
- memory: server RSS before and after 200 requests of ~3.8 MB (binary tensors).
  Goal: after <= 1.5x before.
- overload: 2,000 and 8,000 unary gRPC calls sent at once, at the default limits and with
  --max-queue 16: each answered, or refused RESOURCE_EXHAUSTED / UNAVAILABLE with a message
  (goal: none CANCELLED, the bare status clients do not retry).
- where_time_goes: what one REST request costs the server, in microseconds of CPU: the
  whole (process CPU / requests under the load above), the bare endpoint's whole (the
  HTTP stack), and kerakit's own steps timed in this process on the same bodies (decode
  and checks, the model call, encode, metrics); what is left is Starlette and the glue.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KERAKIT = str(Path(sys.executable).parent / "kerakit")
BINARY_ABOVE = 4096  # input elements above which requests use binary tensor data
WARM_UP = 50  # requests each load sends before it starts timing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, model: Path, *args: str, command: list[str] | None = None):
        import requests

        self.port, self.grpc_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = command or [KERAKIT, "serve", str(model), "--name", "m", "--no-log", "--grpc-port", str(self.grpc_port)]
        self.proc = subprocess.Popen([*command, "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(600):
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).ok:
                    return
            except requests.RequestException:  # not listening yet, or busy starting
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode())
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def metrics(self) -> str:
        import requests

        return requests.get(self.url + "/metrics").text

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.send_signal(2)  # SIGINT: uvicorn shuts down cleanly (and a profiled server writes its profile)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def request_body(x: np.ndarray) -> tuple[bytes, dict]:
    """A KServe v2 request as a client sends it: JSON tensors, binary tensor data for large inputs."""
    return _json_body(x) if x.size <= BINARY_ABOVE else _binary_body(x)


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

        for _ in range(min(WARM_UP, n)):  # warm-up: connections, first requests
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


# --------------------------------------------------------------------------- limits

BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = open(sys.argv[1], "rb").read()
async def endpoint(request):
    await request.body()
    return Response(body, media_type="application/json")
async def ready(request):
    return Response(b'{"ready":true}', media_type="application/json")
app = Starlette(routes=[Route("/v2/models/m/infer", endpoint, methods=["POST"]), Route("/v2/health/ready", ready)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False,
            loop="uvloop", http="httptools")
"""

def _grpc_request(x: np.ndarray):
    from kerakit.serve.proto import oip_messages_pb2 as pb

    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    return request


async def _grpc_load(target: str, messages: list, n: int, concurrency: int) -> dict:
    import grpc

    from kerakit.serve.proto import oip_service_pb2_grpc as pb_grpc

    latencies: list[int] = []
    todo = iter(range(n))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def worker():
            for i in todo:
                start = time.perf_counter_ns()
                await stub.ModelInfer(messages[i % len(messages)])
                latencies.append(time.perf_counter_ns() - start)

        for _ in range(min(WARM_UP, n)):
            await stub.ModelInfer(messages[0])
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) / 1e6
    return {"requests": n, "concurrency": concurrency, "requests_per_s": round(n / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _binary_body(x: np.ndarray) -> tuple[bytes, dict]:
    raw = x.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"}


def _median(rounds: list[dict]) -> dict:
    return sorted(rounds, key=lambda d: d["requests_per_s"])[len(rounds) // 2]


def _alternate(runs: dict, rounds: int) -> dict:
    """Each named run `rounds` times, the order alternating; the median round of each."""
    results = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            results[name].append(runs[name]())
    return {name: _median(v) | {"rounds": [d["requests_per_s"] for d in v]} for name, v in results.items()}


def _cpu_per_request(server: _Server, fn, n: int) -> dict:
    """`fn()` (a load of `n` requests after its warm-up ones) with the CPU microseconds per request of
    the server and the client."""
    import psutil

    process = psutil.Process(server.proc.pid)
    server_before, client_before = sum(process.cpu_times()[:2]), os.times()
    result = fn()
    client_after = os.times()
    server_s = sum(process.cpu_times()[:2]) - server_before
    client_s = client_after.user + client_after.system - client_before.user - client_before.system
    sent = n + min(WARM_UP, n)
    return {**result, "server_cpu_us_per_request": round(server_s / sent * 1e6, 1),
            "client_cpu_us_per_request": round(client_s / sent * 1e6, 1)}


def rest_vs_bare(model: Path, bodies, n: int, concurrency: int, rounds: int) -> dict:
    import tempfile

    import requests

    kerakit = _Server(model)
    try:
        answer = requests.post(kerakit.url + "/v2/models/m/infer", data=bodies[0][0], headers=bodies[0][1]).content
        with tempfile.NamedTemporaryFile(suffix=".json") as fixed:
            fixed.write(answer)
            fixed.flush()
            bare = _Server(model, command=[sys.executable, "-c", BARE_APP, fixed.name])
            try:
                url = "/v2/models/m/infer"
                result = _alternate({
                    name: lambda s=server: _cpu_per_request(s, lambda: load(s.url + url, bodies, n, concurrency), n)
                    for name, server in (("kerakit", kerakit), ("bare", bare))}, rounds)
            finally:
                bare.stop()
    finally:
        kerakit.stop()
    ratio = result["kerakit"]["requests_per_s"] / result["bare"]["requests_per_s"]
    return {"kerakit_rest": result["kerakit"], "bare_starlette_endpoint": result["bare"],
            "answer_bytes": len(answer), "ratio": round(ratio, 3), "goal": ">= 0.7", "meets_goal": ratio >= 0.7}


def grpc_vs_rest(model: Path, x_test: np.ndarray, n: int, concurrency: int, rounds: int) -> dict:
    rows = [x_test[i:i + 1] for i in range(min(64, len(x_test)))]
    binary, messages = [_binary_body(x) for x in rows], [_grpc_request(x) for x in rows]
    plain = [_json_body(x) for x in rows]
    server = _Server(model)
    try:
        target, url = f"127.0.0.1:{server.grpc_port}", server.url + "/v2/models/m/infer"
        result = _alternate({
            "grpc": lambda: _cpu_per_request(server, lambda: asyncio.run(_grpc_load(target, messages, n, concurrency)), n),
            "rest_binary": lambda: _cpu_per_request(server, lambda: load(url, binary, n, concurrency), n),
            "rest_json": lambda: _cpu_per_request(server, lambda: load(url, plain, n, concurrency), n)}, rounds)
    finally:
        server.stop()
    grpc = result["grpc"]["requests_per_s"]
    return {**result, "ratio": round(grpc / result["rest_binary"]["requests_per_s"], 3),
            "ratio_vs_json": round(grpc / result["rest_json"]["requests_per_s"], 3), "goal": ">= 1.5"}


# `kerakit serve` with the JSON guard issue 28 found on every body put back in front of today's parse: a regex
# for 19-digit runs (an integer beyond 64 bits) over the whole body before orjson. A float body has no such run,
# so the old code went on to orjson, as this one does.
GUARD_BEFORE_ISSUE_28 = """
import re, sys
import kerakit.serve.decoding, kerakit.serve.kserve_v2, kerakit.serve.tfserving
LONG_DIGITS, parse = re.compile(rb"\\d{19}"), kerakit.serve.decoding.parse_json
def parse_json(body):
    LONG_DIGITS.search(body)
    return parse(body)
for module in (kerakit.serve.decoding, kerakit.serve.kserve_v2, kerakit.serve.tfserving):
    module.parse_json = parse_json
from kerakit.cli import main
sys.argv[0] = "kerakit"
sys.exit(main())
"""


def json_guard(model: Path, x_test: np.ndarray, n: int, concurrency: int, rounds: int) -> dict:
    """Server CPU per REST request with JSON tensors, today's server against the same server with the old
    guard put back (GUARD_BEFORE_ISSUE_28), in alternating rounds. Goal (issue 28, MobileNetV3): <= 0.5."""
    rows = [x_test[i:i + 1] for i in range(min(64, len(x_test)))]
    plain = [_json_body(x) for x in rows]
    servers = {"today": _Server(model)}
    try:
        servers["guard_before"] = _Server(model, command=[sys.executable, "-c", GUARD_BEFORE_ISSUE_28, "serve",
                                                          str(model), "--name", "m", "--no-log"])
        url = "/v2/models/m/infer"
        result = _alternate({name: lambda s=server: _cpu_per_request(s, lambda: load(s.url + url, plain, n, concurrency), n)
                             for name, server in servers.items()}, rounds)
    finally:
        for server in servers.values():
            server.stop()
    ratio = result["today"]["server_cpu_us_per_request"] / result["guard_before"]["server_cpu_us_per_request"]
    return {**result, "body_bytes": len(plain[0][0]), "server_cpu_ratio": round(ratio, 3), "goal": "<= 0.5",
            "meets_goal": ratio <= 0.5}


def _json_body(x: np.ndarray) -> tuple[bytes, dict]:
    tensor = {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), {"content-type": "application/json"}


def where_time_goes(model: Path, bodies, whole: dict, calls: int = 2000) -> dict:
    """kerakit's own steps of a REST request, timed in this process (CPU microseconds per request),
    beside the server's whole CPU per request under load and the bare endpoint's."""
    from kerakit.serve import ModelEntry, ServeOptions, kserve_v2
    from kerakit.serve.context import Metrics
    from kerakit.serve.models import Model

    served = Model(ModelEntry("m", str(model)), ServeOptions())
    metrics = Metrics()

    def decode(i):
        body, headers = bodies[i]
        return kserve_v2.decode(served, body, headers.get(kserve_v2.HEADER_LENGTH), 10**6)

    try:
        decoded = [decode(i) for i in range(len(bodies))]
        outputs = [served.run(inputs) for inputs, _ in decoded]
        steps = {"decode and checks": decode, "model call": lambda i: served.run(decoded[i][0]),
                 "encode": lambda i: kserve_v2.encode(served, decoded[i][1], outputs[i]),
                 "metrics": lambda i: metrics.count("m", "v2", 200, 0.001, 1)}
        cost = {}
        for name, step in steps.items():
            start = time.process_time()
            for i in range(calls):
                step(i % len(bodies))
            cost[name] = round((time.process_time() - start) / calls * 1e6, 1)
    finally:
        served.close()
    server = whole["kerakit_rest"]["server_cpu_us_per_request"]
    http = whole["bare_starlette_endpoint"]["server_cpu_us_per_request"]
    return {"server_cpu_us_per_request": server, "bare_endpoint_cpu_us_per_request (HTTP stack)": http,
            "kerakit_steps_cpu_us": cost,
            "left: Starlette routing, request objects, glue": round(server - http - sum(cost.values()), 1)}


def memory(model: Path, x_test: np.ndarray, requests_: int = 200, megabytes: float = 3.8) -> dict:
    import requests

    per_row = x_test[:1].astype(np.float32).nbytes
    rows = int(megabytes * 1e6 // per_row)
    x = np.resize(x_test.astype(np.float32), (rows, *x_test.shape[1:]))
    body, headers = _binary_body(x)
    server = _Server(model, "--max-batch-rows", str(rows), "--max-body-mb", "8", "--max-elements", str(x.size))
    try:
        for _ in range(20):  # steady state of small requests first
            requests.post(server.url + "/v2/models/m/infer", data=_binary_body(x[:1])[0], headers=headers)
        before = server.rss_mb()
        session = requests.Session()
        for _ in range(requests_):
            assert session.post(server.url + "/v2/models/m/infer", data=body, headers=headers).status_code == 200
        time.sleep(1.0)
        after = server.rss_mb()
    finally:
        server.stop()
    return {"requests": requests_, "request_mb": round(len(body) / 1e6, 2), "rows_per_request": rows,
            "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "ratio": round(after / before, 3),
            "goal": "<= 1.5", "meets_goal": after / before <= 1.5}


async def _grpc_burst(target: str, message, n: int) -> dict:
    """`n` unary ModelInfer calls sent at once on one channel: how long until all were answered, and how."""
    import grpc

    from kerakit.serve.proto import oip_service_pb2_grpc as pb_grpc

    codes: dict[str, int] = {}
    messages: dict[str, str] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call():
            try:
                await stub.ModelInfer(message, timeout=120)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                messages.setdefault(code, e.details()[:160])
            codes[code] = codes.get(code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(call() for _ in range(n)))
    return {"calls": n, "seconds": round(time.perf_counter() - start, 2), "codes": codes, "messages": messages}


def overload(model: Path, x_test: np.ndarray, bursts: tuple = (2000, 8000), queue: int = 16) -> dict:
    """Bursts of concurrent unary gRPC calls, at the default limits and with a short --max-queue: every call
    answered, or refused saying so (RESOURCE_EXHAUSTED or UNAVAILABLE with a message), none CANCELLED.
    Before kerakit moved grpc core's pending-call guard aside, 193 of 2,000 came back a bare CANCELLED.
    A model answered on the event loop (digits_cnn) never has two requests waiting, so its queue never fills."""
    message = _grpc_request(x_test[:1])
    out = {}
    for name, args in (("defaults", ()), (f"max_queue_{queue}", ("--max-queue", str(queue)))):
        server = _Server(model, *args)
        try:
            out[name] = [asyncio.run(_grpc_burst(f"127.0.0.1:{server.grpc_port}", message, n)) for n in bursts]
        finally:
            server.stop()
    refusals = [(code, text) for runs in out.values() for run in runs for code, text in run["messages"].items()]
    ok = all(code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE") and text for code, text in refusals)
    return {**out, "goal": "no CANCELLED; refusals RESOURCE_EXHAUSTED or UNAVAILABLE with a message", "meets_goal": ok}


def limits(model: Path, x_test: np.ndarray, requests_: int = 3000, concurrency: int = 16, rounds: int = 3,
           with_memory: bool = True) -> dict:
    bodies = [request_body(x_test[i:i + 1]) for i in range(min(64, len(x_test)))]
    rest = rest_vs_bare(model, bodies, requests_, concurrency, rounds)
    out = {"rest_vs_bare_endpoint": rest, "where_time_goes": where_time_goes(model, bodies, rest),
           "grpc_vs_rest": grpc_vs_rest(model, x_test, requests_, concurrency, rounds),
           "overload": overload(model, x_test),
           "json_guard": json_guard(model, x_test, min(requests_, 1000), concurrency, rounds)}
    if with_memory:
        out["memory"] = memory(model, x_test)
    return out
