"""`kerakit serve` over HTTP beyond inference: its OpenAPI document checked against the live
server by schemathesis, compressed bodies, the protocol's smaller rules (Allow on 405, a
string `id`, parameter objects, max_batch_size), and the server's own faults: a request
log that cannot be written, start-up refusals, idle connections. Tiny ONNX models, no training."""

import asyncio
import gzip
import json
import re
import socket
import time
import zlib

import numpy as np
import pytest
import requests
import schemathesis
from conftest import Server, free_port, run_cli
from hypothesis import HealthCheck, settings
from onnx import TensorProto, helper, save_model
from starlette.routing import Route

from kerakit import request_log
from kerakit.serve import ModelEntry, ServeOptions, create_app
from kerakit.serve.app import protocols
from kerakit.serve.context import Protocol

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
INFER = "/v2/models/m/infer"


def onnx_file(path, input_type=TensorProto.FLOAT, output_type=TensorProto.FLOAT):
    """x: (batch, 4) -> y, an Identity (or a Cast when the types differ)."""
    node = (helper.make_node("Identity", ["x"], ["y"]) if input_type == output_type
            else helper.make_node("Cast", ["x"], ["y"], to=output_type))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", input_type, ["batch", 4])],
                              [helper.make_tensor_value_info("y", output_type, ["batch", 4])])
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return onnx_file(tmp_path_factory.mktemp("m") / "m.onnx")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("serve")
    s = Server(model, "--name", "m", "--log", "/dev/full", "--max-batch-rows", "16", "--keep-alive-s", "0.5",
               "--max-body-mb", "0.1", log_dir=log_dir)
    yield s
    s.stop()
    assert "Traceback" not in s.stderr_path.read_text()


# ----------------------------------------------------------------------------- OpenAPI, schemathesis

@pytest.mark.slow
def test_openapi_document_holds_for_generated_requests(server):
    """Every operation of /openapi.json, with requests schemathesis generates from it: no 5xx,
    and every answer's status, content type and body as documented. (Operations are driven
    one by one with `as_strategy`: schemathesis's pytest loader does not run under pytest 9.2.)"""
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        examples = 60 if operation.method.upper() == "POST" else 10
        # TF Serving's :classify and :regress answer a documented 501 (not implemented here; 404 for a version
        # not served), never another 5xx.
        unsupported = operation.path.endswith(":{verb}")

        @given(operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call_and_validate(checks=checks[1:] if unsupported else checks, timeout=10)
            assert response.status_code in (501, 404) if unsupported else response.status_code < 500

        check()
    assert server.alive()


def test_openapi_lists_every_route_with_the_served_model(server):
    document = requests.get(server.url + "/openapi.json").json()
    assert document["openapi"].startswith("3.") and "/v2/models/{name}/infer" in document["paths"]
    assert "/v1/models/{name}:predict" in document["paths"]
    param = document["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]
    assert param["schema"]["enum"] == ["m"]


def asgi_get_json(app, path: str):
    """GET `path` from the ASGI `app` in this process (no server, no lifespan)."""
    async def call():
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                   "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                   "headers": [], "server": ("test", 80), "client": ("127.0.0.1", 1)}, receive, send)
        return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    return json.loads(asyncio.run(call()))


def routes_and_documented(app) -> tuple[set, set]:
    """(path, method) of every route the app answers, and of every operation in its /openapi.json.
    HEAD is left out of the first: Starlette adds it to every GET route by itself, and OpenAPI
    documents the GET."""
    routed = {(route.path, method) for route in app.routes for method in route.methods - {"HEAD"}}
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    documented = {(path, method.upper()) for path, item in asgi_get_json(app, "/openapi.json")["paths"].items()
                  for method in item if method in methods}
    return routed, documented


def test_every_route_is_in_openapi_and_every_documented_operation_is_routed(model):
    """With every protocol of the table (gRPC too: it adds no route), no route is missing from
    /openapi.json and the document names no operation the app does not answer."""
    app = create_app([ModelEntry("m", str(model))], ServeOptions(grpc_address="127.0.0.1:0"))
    routed, documented = routes_and_documented(app)
    assert routed == documented
    assert ("/v2/models/{name}/infer", "POST") in routed and ("/v1/models/{name}:predict", "POST") in routed


class Undocumented(Protocol):
    """A protocol that forgets its OpenAPI fragment."""

    def routes(self, ctx):
        return [Route("/v3/models/{name}/infer", ctx.describe(lambda m: {}), methods=["POST"])]


def test_a_protocol_route_missing_from_openapi_is_caught(model):
    options = ServeOptions()
    app = create_app([ModelEntry("m", str(model))], options, table=[*protocols(options), Undocumented()])
    routed, documented = routes_and_documented(app)
    assert routed - documented == {("/v3/models/{name}/infer", "POST")} and documented <= routed


class Recorder(Protocol):
    """A protocol with a server of its own that records its start and stop (or fails to start)."""

    def __init__(self, name: str, events: list, fail: bool = False):
        self.name, self.events, self.fail = name, events, fail

    async def start(self, serving):
        if self.fail:
            raise OSError(f"cannot listen for {self.name}")
        self.events.append(("start", self.name, sorted(serving.models)))

    async def stop(self):
        self.events.append(("stop", self.name))


def test_lifespan_starts_the_protocols_then_stops_them_last_first(model):
    events = []
    app = create_app([ModelEntry("m", str(model))], table=[Recorder("a", events), Recorder("b", events)])

    async def run():
        async with app.router.lifespan_context(app):
            events.append("serving")

    asyncio.run(run())
    assert events == [("start", "a", ["m"]), ("start", "b", ["m"]), "serving", ("stop", "b"), ("stop", "a")]


def test_a_protocol_that_cannot_start_stops_those_already_started(model):
    events = []
    app = create_app([ModelEntry("m", str(model))], table=[Recorder("a", events), Recorder("b", events, fail=True)])

    async def run():
        async with app.router.lifespan_context(app):
            events.append("serving")

    with pytest.raises(OSError, match="cannot listen for b"):
        asyncio.run(run())
    assert events == [("start", "a", ["m"]), ("stop", "a")]


# ----------------------------------------------------------------------------- compression

@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress),
                                                ("deflate", lambda b: zlib.compress(b)[2:-4])])  # raw deflate too
def test_compressed_request_bodies(server, encoding, compress):
    body = compress(json.dumps({"inputs": [X]}).encode())
    r = requests.post(server.url + INFER, data=body, headers={"content-encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4]


@pytest.mark.parametrize("accept, expected", [("gzip", "gzip"), ("deflate", "deflate"),
                                              ("gzip;q=0.5, deflate", "deflate"), ("br", None), ("gzip;q=0", None)])
def test_answers_compressed_as_accept_encoding_asks(server, accept, expected):
    values = [i / 7 for i in range(64)]
    big = {**X, "shape": [16, 4], "data": values}
    padded = {"id": "r" * 1024, "inputs": [big]}  # the answer repeats the id: over the 1 KiB below which it is sent plain
    r = requests.post(server.url + INFER, json=padded, headers={"accept-encoding": accept}, stream=True)
    assert r.headers.get("content-encoding") == expected
    raw = r.raw.read()
    data = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: bytes}[expected](raw)
    np.testing.assert_allclose(json.loads(data)["outputs"][0]["data"], values, rtol=1e-6)


@pytest.mark.parametrize("body, headers, status, fragment", [
    (gzip.compress(b"{" + b" " * 200_000 + b"}", mtime=0), {"content-encoding": "gzip"}, 413, "Decompressed request body"),
    (b"not gzip", {"content-encoding": "gzip"}, 400, "not valid gzip"),
    (gzip.compress(b"{}", mtime=0)[:-6], {"content-encoding": "gzip"}, 400, "truncated"),
    (b"{}", {"content-encoding": "br"}, 415, "Content-Encoding 'br' is not supported"),
])
def test_bad_compressed_bodies_are_4xx(server, body, headers, status, fragment):
    r = requests.post(server.url + INFER, data=body, headers=headers)
    assert r.status_code == status and fragment in r.json()["error"], r.text


# ----------------------------------------------------------------------------- the protocol's smaller rules

@pytest.mark.parametrize("request_json, fragment", [
    ({"inputs": [X], "id": 7}, "'id' must be a string, got int"),
    ({"inputs": [X], "parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
    ({"inputs": [X], "parameters": {"nested": {"a": 1}}}, "parameter 'nested' must be a string, number or boolean"),
    ({"inputs": [{**X, "parameters": {"x": [1]}}]}, "input 'x': parameter 'x' must be a string"),
    ({"inputs": [X], "outputs": [{"name": "y", "parameters": "oops"}]}, "outputs[0]: 'parameters' must be an object"),
    ({"inputs": [X], "outputs": [{"name": "y", "parameters": None}]}, "outputs[0]: 'parameters' must be an object, got null"),
    ({"inputs": [{**X, "parameters": None}]}, "input 'x': 'parameters' must be an object, got null"),
    ({"inputs": [X], "parameters": None}, "request: 'parameters' must be an object, got null"),
    ({"inputs": [X], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "binary_data must be true or false"),
    ({"inputs": [X], "outputs": [{"name": "y", "parameters": {"classification": -1}}]},
     "classification must be a non-negative integer"),
])
def test_ids_and_parameters_are_validated_at_every_level(server, request_json, fragment):
    r = requests.post(server.url + INFER, json=request_json)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_max_batch_size_is_what_the_server_accepts(server):
    assert requests.get(server.url + "/v2/models/m/config").json()["max_batch_size"] == 16
    ok = requests.post(server.url + INFER, json={"inputs": [{**X, "shape": [16, 4], "data": [0] * 64}]})
    assert ok.status_code == 200
    r = requests.post(server.url + INFER, json={"inputs": [{**X, "shape": [17, 4], "data": [0] * 68}]})
    assert r.status_code == 413 and "at most 16 per request (--max-batch-rows" in r.json()["error"]


def test_405_names_the_allowed_methods(server):
    r = requests.get(server.url + INFER)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "allowed: POST" in r.json()["error"]
    for method in ("PUT", "GET", "DELETE"):  # a verb route, not the status of a model called 'm:predict'
        r = requests.request(method, f"{server.url}/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 405 and r.headers["allow"] == "POST", (method, r.text)
    r = requests.put(f"{server.url}/v1/models/m/versions/1:classify", json={"examples": []})
    assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize("path, status, fragment", [
    ("/v1/models/m:classify", 501, "TF Serving's :classify is not implemented by this server; it answers :predict"),
    ("/v1/models/m/versions/1:regress", 501, "TF Serving's :regress is not implemented"),
    ("/v1/models/m:frobnicate", 400, "Unknown verb :frobnicate; TF Serving's REST API has :predict"),
    ("/v1/models/m:predicts", 400, "Unknown verb :predicts"),
    ("/v1/models/nope:classify", 404, "Unknown model 'nope'. Served models: m."),
    ("/v1/models/m/versions/7:classify", 404, "Model 'm' has no version '7'"),
    ("/v1/models/nope:predict", 404, "Unknown model 'nope'"),
])
def test_tf_serving_verbs_answer_what_is_wrong(server, path, status, fragment):
    """Only a real TF Serving verb that kerakit does not implement is 501; a client's mistake is a 4xx."""
    r = requests.post(server.url + path, json={"examples": [{"x": [1, 2, 3, 4]}]})
    assert r.status_code == status and fragment in r.json()["error"], r.text


def test_idle_connections_are_closed_after_keep_alive(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"live":true}'):
            answer += s.recv(4096)
        start = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server, not by the timeout above
        assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- the request log's faults

def test_an_unwritable_request_log_never_fails_a_request(server):
    """--log /dev/full: every write fails with ENOSPC, as on a full disk."""
    for _ in range(5):
        assert requests.post(server.url + INFER, json={"inputs": [X]}).status_code == 200
    time.sleep(0.2)
    metrics = requests.get(server.url + "/metrics").text
    dropped = float(re.search(r"^kerakit_request_log_errors_total (\S+)$", metrics, re.M).group(1))
    assert dropped >= 5
    warnings = [line for line in server.stderr_path.read_text().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "at most once a minute" in warnings[0]


def test_drift_reader_skips_a_torn_last_line(tmp_path):
    log = request_log.RequestLog(str(tmp_path / "requests.jsonl"))
    for _ in range(3):
        log.write("m", "1", "v2", {"x": np.ones((2, 4), np.float32)}, {"y": np.ones((2, 4), np.float32)}, 0.001)
    log.close()
    with open(tmp_path / "requests.jsonl", "a") as f:
        f.write('{"time": "2025-01-01T00:00:00", "model": "m", "inpu')  # a write cut short
    series, predictions, described = request_log.read(tmp_path / "requests.jsonl")
    assert len(series["x.mean"]) == 6 and described == "6 rows from 3 logged requests (skipped 1 torn line)"


# ----------------------------------------------------------------------------- start-up refusals, one line each

@pytest.mark.parametrize("args, fragment", [
    (["--log", "/sys/kerakit-test/requests.jsonl"], "Cannot write the request log '/sys/kerakit-test/requests.jsonl'"),
    (["--threads", "999"], "--threads 999 is more than the"),
    (["--max-batch", "64", "--max-batch-rows", "32"], "--max-batch 64 is above --max-batch-rows 32"),
    (["--max-connections", "100000000"], "--max-connections 100000000 needs about 200000128 file descriptors"),
    (["{bf16}"], "output 'y' has datatype tensor(bfloat16)"),
])
def test_start_up_refusals_are_one_line(model, tmp_path, args, fragment):
    bf16 = onnx_file(tmp_path / "bf16.onnx", output_type=TensorProto.BFLOAT16)
    source = [] if args[0] == "{bf16}" else [model]
    args = [a.format(bf16=bf16) for a in args]
    r = run_cli("serve", *source, *args, "--port", str(free_port()), "--grpc-port", str(free_port()), timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_checked_in_grpc_code_is_what_the_proto_generates(tmp_path):
    """The generated modules under kerakit/serve/proto/ are exactly what the command in
    oip_messages.proto makes from the .proto files beside them."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(request_log.__file__).resolve().parent.parent
    proto = root / "kerakit" / "serve" / "proto"
    for source, flag in (("oip_messages.proto", "--python_out"), ("oip_service.proto", "--grpc_python_out")):
        # In its own process: protoc's C++ protobuf and the test process's (TensorFlow's) do not share one.
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"{flag}={tmp_path}", str(proto / source)],
                       check=True, timeout=60)
    for generated in ("oip_messages_pb2.py", "oip_service_pb2_grpc.py"):
        assert (tmp_path / "kerakit" / "serve" / "proto" / generated).read_text() == (proto / generated).read_text()
