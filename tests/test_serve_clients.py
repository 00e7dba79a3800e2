"""One suite, every client: `tritonclient.http`, `tritonclient.grpc` (sync and aio) and the
kserve SDK's `InferenceRESTClient` run the same tests against one `kerakit serve`.
The datatype table (every KServe v2 datatype, JSON and binary, in and out) and the
non-finite table (NaN, +Inf, -Inf outputs) are tests here; the models are tiny ONNX
graphs built in this module, so no training is needed.

The kserve SDK 0.21 cannot be installed into the pinned environment (it declares
protobuf<7 and psutil<6; TensorFlow 2.21 and grpcio-tools 1.85 here use protobuf
7.36, and psutil is 7.2), though it runs with them: `make` installs it with
`--no-deps` into `.venv/kserve-sdk` (kserve-sdk.txt pins it and the pure-Python
dependencies the venv lacks), and its calls run in a worker process that appends
that directory to sys.path, after the venv's own packages (tests/kserve_client.py).
"""

import asyncio
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import kserve_client
import requests
from conftest import Server
from onnx import TensorProto, helper, save_model

from kerakit.dtypes import V2_TYPES

ONNX_TYPES = {"BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
              "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
              "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
              "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
              "BYTES": TensorProto.STRING}
LABELS = ["cat", "dog", "fish", "bird"]


def typed(datatype: str) -> str:
    return f"t-{datatype.lower()}"


def _save(path, nodes, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def _tensor(name, datatype, width=3):
    return helper.make_tensor_value_info(name, ONNX_TYPES[datatype], ["batch", width])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server: a model per datatype (`t-fp32`, ...: x -> Identity -> y), `nonfinite`
    (x -> log(x), 1/x) and `scores` (Identity, with class names beside it)."""
    repo = tmp_path_factory.mktemp("repo")
    for name in [typed(t) for t in V2_TYPES] + ["nonfinite", "scores"]:
        (repo / name / "1").mkdir(parents=True)
    for t in V2_TYPES:
        _save(repo / typed(t) / "1" / "model.onnx", [helper.make_node("Identity", ["x"], ["y"])],
              [_tensor("x", t)], [_tensor("y", t)])
    _save(repo / "nonfinite" / "1" / "model.onnx",
          [helper.make_node("Log", ["x"], ["log"]), helper.make_node("Reciprocal", ["x"], ["inverse"])],
          [_tensor("x", "FP32")], [_tensor("log", "FP32"), _tensor("inverse", "FP32")])
    _save(repo / "scores" / "1" / "model.onnx", [helper.make_node("Identity", ["x"], ["y"])],
          [_tensor("x", "FP32", 4)], [_tensor("y", "FP32", 4)])
    (repo / "scores" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    s = Server("--model-dir", repo, "--no-log", "--max-batch-rows", "8", log_dir=repo)
    yield s
    s.stop()
    assert "Traceback" not in s.stderr_path.read_text()


# ----------------------------------------------------------------------------- the clients

class ClientError(Exception):
    """What any client raised for a server error, with the server's message."""


class Triton:
    """tritonclient.http or tritonclient.grpc, sync."""

    def __init__(self, module, url):
        self.module, self.client = module, module.InferenceServerClient(url)
        self.grpc = module.__name__.endswith("grpc")

    def call(self, method, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except InferenceServerException as e:
            raise ClientError(e.message()) from None

    def health(self, model):
        return self.call("is_server_live"), self.call("is_server_ready"), self.call("is_model_ready", model)

    def metadata(self, model):
        meta = self.call("get_model_metadata", model, as_json=True) if self.grpc else self.call("get_model_metadata", model)
        return [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta["inputs"]]

    def _request(self, inputs, outputs, binary):
        tensors = []
        for name, (array, datatype) in inputs.items():
            t = self.module.InferInput(name, list(array.shape), datatype)
            t.set_data_from_numpy(array) if self.grpc else t.set_data_from_numpy(array, binary_data=binary)
            tensors.append(t)
        wanted = [self.module.InferRequestedOutput(n, class_count=k) if self.grpc else
                  self.module.InferRequestedOutput(n, binary_data=binary, class_count=k) for n, k in outputs]
        return tensors, wanted

    def infer(self, model, inputs, outputs, binary=True, request_id="", compression=None):
        tensors, wanted = self._request(inputs, outputs, binary)
        extra = ({"compression_algorithm": compression} if self.grpc else
                 {"request_compression_algorithm": compression, "response_compression_algorithm": compression})
        result = self.call("infer", model, tensors, outputs=wanted, request_id=request_id, **(extra if compression else {}))
        response = result.get_response(as_json=True) if self.grpc else result.get_response()
        return {n: result.as_numpy(n) for n, _ in outputs}, response.get("id", "")

    def close(self):
        self.client.close()


class TritonAio(Triton):
    """tritonclient.grpc.aio: each call in its own event loop, on a client made in it."""

    def __init__(self, module, url):
        self.module, self.url, self.grpc = module, url, True

    def call(self, method, *args, **kwargs):
        import tritonclient.grpc.aio as aio
        from tritonclient.utils import InferenceServerException

        async def run():
            client = aio.InferenceServerClient(self.url)
            try:
                return await getattr(client, method)(*args, **kwargs)
            finally:
                await client.close()

        try:
            return asyncio.run(run())
        except InferenceServerException as e:
            raise ClientError(e.message()) from None

    def close(self):
        pass


class KServe:
    """The kserve SDK's InferenceRESTClient (KServe v2 over REST), in its own process
    (tests/kserve_client.py says why); it has no metadata call."""

    def __init__(self, url, worker):
        self.url, self.worker = url, worker

    def run(self, function, *args):
        try:
            return self.worker.submit(function, self.url, *args).result(timeout=120)
        except kserve_client.ServerError as e:
            raise ClientError(str(e)) from None

    def health(self, model):
        return self.run(kserve_client.health, model)

    def infer(self, model, inputs, outputs, binary=True, request_id="", compression=None):
        assert not compression, "the kserve SDK sends no compressed bodies (CAN says so)"
        return self.run(kserve_client.infer, model, inputs, outputs, binary, request_id)

    def close(self):
        pass


KSERVE_SDK = Path(sys.prefix) / "kserve-sdk"


@pytest.fixture(scope="module")
def kserve_worker():
    """One process with the kserve SDK that `make` installed apart (see the module docstring)."""
    assert KSERVE_SDK.is_dir(), f"{KSERVE_SDK} is missing: run `make venv` (it installs kserve-sdk.txt there)"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=kserve_client.use_sdk, initargs=(str(KSERVE_SDK),)) as worker:
        yield worker


# What each client can send. A case a client cannot express is not generated for it
# (rather than skipped): the gRPC clients always send raw contents, so their typed
# (JSON-like) contents are tested by test_grpc_typed_contents_and_status_codes; the
# kserve SDK has no metadata call, sends no compressed bodies and refuses FP16 as JSON
# (which test_fp16_json_and_strict_json_parsers sends by hand).
ALL = {"metadata", "json", "fp16-json", "compression"}
CAN = {"tritonclient.http": ALL, "tritonclient.grpc": {"metadata", "compression"},
       "tritonclient.grpc.aio": {"metadata", "compression"}, "kserve": {"json"}}
CLIENTS = list(CAN)


def clients(*needs, **params):
    """pytest params over the clients that can do `needs`, crossed with `params` (name -> values);
    a combination that needs "json" (form="json") or "fp16-json" is kept only for clients that can."""
    combos = [{}]
    for name, values in params.items():
        combos = [{**c, name: v} for c in combos for v in values]
    out = []
    for name in CLIENTS:
        for combo in combos:
            wants = set(needs) | ({"json"} if combo.get("form") == "json" else set())
            wants |= {"fp16-json"} if combo.get("form") == "json" and combo.get("datatype") == "FP16" else set()
            if wants <= CAN[name]:
                out.append(pytest.param(name, *combo.values(), id="-".join([name, *map(str, combo.values())])))
    return out


@pytest.fixture
def client(request, server):
    name = request.param
    if name == "kserve":
        c = KServe(server.url, request.getfixturevalue("kserve_worker"))
    elif name == "tritonclient.grpc.aio":
        import tritonclient.grpc

        c = TritonAio(tritonclient.grpc, f"127.0.0.1:{server.grpc_port}")
    elif name == "tritonclient.grpc":
        import tritonclient.grpc

        c = Triton(tritonclient.grpc, f"127.0.0.1:{server.grpc_port}")
    else:
        import tritonclient.http

        c = Triton(tritonclient.http, f"127.0.0.1:{server.port}")
    yield c
    c.close()


# ----------------------------------------------------------------------------- the suite

def sample(datatype: str, rows: int = 2) -> np.ndarray:
    """Values that test each datatype's range: extremes, zero, and (for BYTES) non-ASCII text."""
    if datatype == "BYTES":
        return np.array([["a", "", "zwölf ✓"], ["x" * 40, "0", "\t"]][:rows], dtype=object)
    dtype = np.dtype(V2_TYPES[datatype])
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, True, False]][:rows])
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    values = [[info.min, 0, info.max], [1, info.max // 2 if dtype.kind in "iu" else 0.5, info.min + 1]]
    return np.array(values[:rows], dtype=dtype)


def same(got: np.ndarray, want: np.ndarray) -> None:
    if want.dtype == object:  # BYTES: clients give bytes (binary) or str (JSON)
        got = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(got)
    else:
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("client", clients(), indirect=True)
def test_health(client):
    assert client.health("t-fp32") == (True, True, True)
    assert client.health("nope")[2] is False


@pytest.mark.parametrize("client", clients("metadata"), indirect=True)
def test_metadata(client):
    for datatype in V2_TYPES:
        assert client.metadata(typed(datatype)) == [{"name": "x", "datatype": datatype, "shape": [-1, 3]}]


@pytest.mark.parametrize("client, datatype, form", clients(datatype=list(V2_TYPES), form=["binary", "json"]),
                         indirect=["client"])
def test_every_datatype_round_trips(client, datatype, form):
    x = sample(datatype)
    out, _ = client.infer(typed(datatype), {"x": (x, datatype)}, [("y", 0)], binary=form == "binary")
    same(out["y"], x)


@pytest.mark.parametrize("client, form", clients(form=["binary", "json"]), indirect=["client"])
def test_non_finite_outputs_reach_the_client_as_floats(client, form):
    x = np.array([[1.0, 0.0, -1.0]], np.float32)  # log: 0, -inf, nan; 1/x: 1, +inf, -1
    out, _ = client.infer("nonfinite", {"x": (x, "FP32")}, [("log", 0), ("inverse", 0)], binary=form == "binary")
    np.testing.assert_array_equal(out["log"], np.array([[0, -np.inf, np.nan]], np.float32))
    np.testing.assert_array_equal(out["inverse"], np.array([[1, np.inf, -1]], np.float32))


@pytest.mark.parametrize("client, form", clients(form=["binary", "json"]), indirect=["client"])
def test_classification_answers_the_top_classes_with_labels(client, form):
    x = np.array([[0.1, 0.7, 0.05, 0.15], [0.5, 0.2, 0.25, 0.05]], np.float32)
    out, _ = client.infer("scores", {"x": (x, "FP32")}, [("y", 2)], binary=form == "binary")
    got = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in out["y"]]
    assert got == [["0.700000:1:dog", "0.150000:3:bird"], ["0.500000:0:cat", "0.250000:2:fish"]]


@pytest.mark.parametrize("client", clients(), indirect=True)
def test_request_id_is_echoed(client):
    x = sample("INT32")
    _, request_id = client.infer("t-int32", {"x": (x, "INT32")}, [("y", 0)], request_id="req-42")
    assert request_id == "req-42"


@pytest.mark.parametrize("client, algorithm", clients("compression", algorithm=["gzip", "deflate"]),
                         indirect=["client"])
def test_compressed_requests_and_answers(client, algorithm):
    x = np.tile(sample("FP64"), (4, 1))
    out, _ = client.infer("t-fp64", {"x": (x, "FP64")}, [("y", 0)], compression=algorithm)
    same(out["y"], x)


@pytest.mark.parametrize("client", clients(), indirect=True)
@pytest.mark.parametrize("case, fragment", [
    ("unknown model", "Unknown model 'nope'"),
    ("wrong datatype", "does not match the model's FP32"),
    ("too many rows", "at most 8 per request"),
    ("non-finite input", "NaN or infinity"),
])
def test_bad_requests_name_the_problem(client, case, fragment):
    x = np.zeros((2, 4), np.float32)
    model, inputs = "scores", {"x": (x, "FP32")}
    if case == "unknown model":
        model = "nope"
    elif case == "wrong datatype":
        inputs = {"x": (x.astype(np.float64), "FP64")}
    elif case == "too many rows":
        inputs = {"x": (np.zeros((9, 4), np.float32), "FP32")}
    else:
        inputs = {"x": (np.full((1, 4), np.inf, np.float32), "FP32")}
    with pytest.raises(ClientError, match=fragment.replace("(", r"\(")):
        client.infer(model, inputs, [("y", 0)])


# ----------------------------------------------------------------------------- beyond the clients

def test_grpc_typed_contents_and_status_codes(server):
    """Typed `contents` (what tritonclient never sends) for every datatype with a field, and the
    gRPC status of each kind of bad request, through kerakit's own generated stub."""
    import grpc

    from kerakit.serve.grpc_v2 import CONTENTS
    from kerakit.serve.proto import oip_messages_pb2 as pb
    from kerakit.serve.proto import oip_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for datatype, field in CONTENTS.items():
            x = sample(datatype)
            request = pb.ModelInferRequest(model_name=typed(datatype))
            tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
            values = [v.encode() for v in x.flat] if datatype == "BYTES" else x.ravel().tolist()
            getattr(tensor.contents, field).extend(values)
            response = stub.ModelInfer(request)
            assert response.outputs[0].datatype == datatype and list(response.outputs[0].shape) == [2, 3]
            if datatype != "BYTES":
                np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], x.dtype).reshape(2, 3), x)
        for request, code in [
            (pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND),
            (pb.ModelInferRequest(model_name="scores", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="x", datatype="FP32", shape=[1, 4])]), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.ModelInferRequest(model_name="scores", inputs=[pb.ModelInferRequest.InferInputTensor(
                name="x", datatype="FP32", shape=[9, 4])], raw_input_contents=[bytes(144)]),
             grpc.StatusCode.RESOURCE_EXHAUSTED),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request)
            assert caught.value.code() == code, caught.value.details()


@pytest.mark.parametrize("fill, fragment", [
    (lambda t, r: (t.contents.fp32_contents.extend([1.0] * 3), r.raw_input_contents.append(bytes(12))),
     "input 'x': has both contents (fp32_contents) and a raw_input_contents entry"),
    (lambda t, r: (t.contents.fp32_contents.extend([1.0] * 3), t.contents.int_contents.extend([1] * 3)),
     "input 'x': contents has int_contents and fp32_contents; send its values in one field, fp32_contents for FP32"),
    (lambda t, r: t.contents.int_contents.extend([1] * 3),
     "input 'x': datatype FP32 takes its values in fp32_contents, not int_contents"),
])
def test_grpc_refuses_an_input_whose_values_are_in_two_places(server, fill, fragment):
    """As Triton answers: INVALID_ARGUMENT naming the input, rather than computing from one place and
    ignoring the other. Sent with Triton's own stub (tritonclient's service_pb2), as any client could."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        request = service_pb2.ModelInferRequest(model_name=typed("FP32"))
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        fill(tensor, request)
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in caught.value.details()


def test_fp16_json_and_strict_json_parsers(server):
    """FP16 as JSON numbers; NaN and infinities as strings a strict parser accepts, in both REST protocols."""
    def strict(text):
        def refuse(token):
            raise ValueError(f"{token} is not JSON")
        return json.loads(text, parse_constant=refuse)

    x = [[1.5, -65504.0, 0.0]]
    r = requests.post(f"{server.url}/v2/models/t-fp16/infer", json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP16", "data": x}]})
    assert strict(r.text)["outputs"][0] == {"name": "y", "datatype": "FP16", "shape": [1, 3], "data": x[0]}

    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, -1]}]}
    outputs = strict(requests.post(f"{server.url}/v2/models/nonfinite/infer", json=body).text)["outputs"]
    assert [o["data"] for o in outputs] == [[0.0, "-Infinity", "NaN"], [1.0, "Infinity", -1.0]]
    answer = strict(requests.post(f"{server.url}/v1/models/nonfinite:predict", json={"instances": [[1, 0, -1]]}).text)
    assert answer == {"predictions": [{"log": [0.0, "-Infinity", "NaN"], "inverse": [1.0, "Infinity", -1.0]}]}
