"""`kerakit serve` against clients that hold on or pile up, over real sockets and the official clients:
idle and half-sent HTTP connections are closed after the stated timeouts (408 where a request had
begun), a connection past --max-connections is answered 503 while the open ones keep being served,
an inference request past --max-queue is told to come back (HTTP 503 with Retry-After, gRPC
UNAVAILABLE), and a gRPC call past --max-concurrent-rpcs gets RESOURCE_EXHAUSTED. The model is a
tiny ONNX graph slow enough (a few ms a row) that requests overlap; no training."""

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from conftest import Server
from onnx import TensorProto, helper, numpy_helper, save_model

HEADER_S, BODY_S = 0.5, 0.5  # the server's --header-timeout-s and --body-timeout-s here
ROWS = 32  # rows per overload request: about 30 ms of model time here, so a burst of them overlaps
INFER = "/v2/models/m/infer"


def slow_onnx(path, width: int = 1024, layers: int = 10):
    """x: (batch, 4) -> y = x (through `layers` identity matmuls of width x width): a few ms a row."""
    weights = [numpy_helper.from_array(np.ones((4, width), np.float32) / 4, "a"),
               numpy_helper.from_array(np.eye(width, dtype=np.float32), "b"),
               numpy_helper.from_array(np.ones((width, 4), np.float32) / width, "c")]
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "b"], [f"h{i + 1}"]) for i in range(layers)]
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "c"], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], weights)
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return slow_onnx(tmp_path_factory.mktemp("m") / "m.onnx")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    s = Server(model, "--name", "m", "--no-log", "--header-timeout-s", HEADER_S, "--body-timeout-s", BODY_S,
               "--max-connections", 8, "--max-queue", 2, log_dir=tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()
    assert "Traceback" not in s.stderr_path.read_text()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def until_closed(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closed `sock` (10 s at most), and what it sent before."""
    start, received = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.monotonic() - start, received
        received += chunk


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer from `sock` (its headers, then Content-Length bytes of body)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def body_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def v2(rows: int = 1) -> dict:
    return {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": [1.0] * (rows * 4)}]}


# ----------------------------------------------------------------------------- idle and half-sent connections

def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server):
    with connect(server.port) as s:
        seconds, answer = until_closed(s)
    assert answer == b"" and HEADER_S * 0.8 <= seconds < HEADER_S + 2


@pytest.mark.parametrize("sent, status, option", [
    (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Le", 408, "--header-timeout-s"),
    (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{\"inputs\": [", 408, "--body-timeout-s"),
])
def test_a_half_sent_request_gets_408_and_is_closed(server, sent, status, option):
    with connect(server.port) as s:
        s.sendall(sent)
        seconds, answer = until_closed(s)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()) and option in body_of(answer)["error"], answer
    assert 0.4 <= seconds < 2.5


def test_a_kept_alive_connection_that_starts_a_request_must_finish_its_headers(server):
    with connect(server.port) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(s).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /v2/health/li")
        seconds, answer = until_closed(s)
    assert answer.startswith(b"HTTP/1.1 408") and seconds < HEADER_S + 2


def test_a_slow_body_that_keeps_coming_is_answered(server):
    """The body rule is the gap between two reads, not the whole upload: 6 pieces 0.25 s apart (1.5 s in all,
    three times --body-timeout-s) are one request answered 200."""
    body = json.dumps(v2()).encode()
    step = -(-len(body) // 6)
    pieces = [body[i:i + step] for i in range(0, len(body), step)]
    with connect(server.port) as s:
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for piece in pieces:
            time.sleep(BODY_S / 2)
            s.sendall(piece)
        answer = read_answer(s)
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_grpc_connection_that_never_handshakes_is_closed(server):
    with connect(server.grpc_port) as s:
        seconds, _ = until_closed(s)
    assert seconds < HEADER_S + 2


# ----------------------------------------------------------------------------- the connection cap

def test_past_max_connections_a_new_client_gets_503_and_the_open_ones_are_served(server):
    held = [connect(server.port) for _ in range(8)]
    try:
        for s in held:  # each a kept-alive connection that has been answered: open, not idle past a timeout
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(s).startswith(b"HTTP/1.1 200")
        r = requests.get(server.url + "/v2/health/live", timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "--max-connections 8" in r.json()["error"]
        held[0].sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(held[0]).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert requests.get(server.url + "/v2/health/live", timeout=5).status_code == 200


# ----------------------------------------------------------------------------- overload

def test_a_full_queue_answers_503_with_retry_after_over_http(server):
    """--max-queue 2: of 6 requests sent at once, those past the two admitted are told to come back."""
    start = threading.Barrier(6)

    def post(_):
        start.wait()
        return requests.post(server.url + INFER, json=v2(ROWS), headers={"connection": "close"}, timeout=30)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "(--max-queue 2)" in r.json()["error"]
    assert requests.post(server.url + INFER, json=v2()).status_code == 200  # and it keeps serving


def _grpc_burst(port: int, calls: int) -> list:
    """`calls` tritonclient.grpc.aio infer calls at once on one channel: None or (status, message) each."""
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aio
    from tritonclient.utils import InferenceServerException

    async def burst():
        client = aio.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.ones((ROWS, 4), np.float32)

        async def one():
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            try:
                await client.infer("m", [tensor])
            except InferenceServerException as e:
                return e.status(), e.message()
            return None

        try:
            return await asyncio.gather(*[one() for _ in range(calls)])
        finally:
            await client.close()

    return asyncio.run(burst())


def test_a_full_queue_answers_grpc_unavailable_naming_the_limit(server):
    results = _grpc_burst(server.grpc_port, 8)
    failures = [r for r in results if r is not None]
    assert failures and len(failures) <= 6, results
    assert all(status == "StatusCode.UNAVAILABLE" and "(--max-queue 2)" in message for status, message in failures)


@pytest.fixture(scope="module")
def rpc_limited(model, tmp_path_factory):
    s = Server(model, "--name", "m", "--no-log", "--max-concurrent-rpcs", 2, "--max-queue", 64,
               "--max-connections", 2, log_dir=tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()
    assert "Traceback" not in s.stderr_path.read_text()


def test_grpc_calls_past_max_concurrent_rpcs_get_resource_exhausted(rpc_limited):
    results = _grpc_burst(rpc_limited.grpc_port, 12)
    failures = [r for r in results if r is not None]
    assert failures and results.count(None) >= 2, results
    assert all(status == "StatusCode.RESOURCE_EXHAUSTED" and "limit exceeded" in message
               for status, message in failures)


def _held_open(port: int) -> socket.socket:
    """A connection the server keeps: one refused because an earlier client's was not yet let go is opened again."""
    for _ in range(50):
        s = connect(port)
        s.settimeout(0.1)
        try:
            if s.recv(1024) != b"":  # the server's HTTP/2 settings: kept
                return s
        except socket.timeout:
            return s
        s.close()  # closed at once: refused
        time.sleep(0.1)
    raise AssertionError(f"the server on port {port} kept closing new connections")


def test_grpc_connections_past_max_connections_are_refused_and_then_served(rpc_limited):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def client():  # a connection of its own: gRPC shares one between clients of the same address by default
        return grpcclient.InferenceServerClient(f"127.0.0.1:{rpc_limited.grpc_port}",
                                                channel_args=[("grpc.use_local_subchannel_pool", 1)])

    held = [_held_open(rpc_limited.grpc_port) for _ in range(2)]  # --max-connections 2
    try:
        with pytest.raises(InferenceServerException) as refused:
            client().is_server_live()
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    assert client().is_server_live()
