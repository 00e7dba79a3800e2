"""How `kerakit serve` reads requests, without a server: the KServe v2 decoder (JSON and
binary tensors) and the TF Serving decoder, each bad request refused with a message
naming the problem. The models are tiny ONNX graphs built here and loaded as serve loads them."""

import asyncio
import json
import subprocess
import threading
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, save_model

from kerakit.serve import BadRequest, ModelEntry, ServeOptions
from kerakit.serve import kserve_v2, models, tensors, tfserving
from kerakit.serve.models import Model

LIMIT = 1000  # max_elements for every decode here


def onnx_model(path, inputs: dict, outputs: dict):
    """An ONNX file whose outputs are Identity copies of its inputs: {out_name: in_name}."""
    def tensor(name, elem, shape):
        return helper.make_tensor_value_info(name, elem, ["batch", *shape])

    specs = dict(inputs)
    nodes = [helper.make_node("Identity", [source], [name]) for name, source in outputs.items()]
    graph = helper.make_graph(nodes, "g", [tensor(n, *specs[n]) for n in inputs],
                              [tensor(n, *specs[s]) for n, s in outputs.items()])
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def one_input(tmp_path_factory):
    """x: float32 (batch, 4) -> y."""
    path = onnx_model(tmp_path_factory.mktemp("m") / "model.onnx", {"x": (TensorProto.FLOAT, [4])}, {"y": "x"})
    model = Model(ModelEntry("one", str(path)), ServeOptions())
    yield model
    model.close()


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """a: float32 (batch, 2) and ids: int64 (batch, 3) -> a_out, ids_out."""
    path = onnx_model(tmp_path_factory.mktemp("m") / "model.onnx",
                      {"a": (TensorProto.FLOAT, [2]), "ids": (TensorProto.INT64, [3])},
                      {"a_out": "a", "ids_out": "ids"})
    model = Model(ModelEntry("two", str(path)), ServeOptions())
    yield model
    model.close()


def test_importing_the_server_does_not_import_tensorflow():
    code = "import sys, kerakit.serve; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_model_describes_itself_without_a_protocol(two_inputs):
    assert two_inputs.platform == "onnxruntime_onnx" and two_inputs.version == "1"
    assert {n: (s.shape, s.dtype) for n, s in two_inputs.inputs.items()} == {"a": ((None, 2), "float32"),
                                                                            "ids": ((None, 3), "int64")}
    assert kserve_v2.model_metadata(two_inputs)["inputs"][1] == {"name": "ids", "datatype": "INT64", "shape": [-1, 3]}
    assert kserve_v2.model_config(two_inputs)["input"][0] == {"name": "a", "data_type": "TYPE_FP32", "dims": [2]}
    signature = tfserving.model_metadata(two_inputs)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["a"]["dtype"] == "DT_FLOAT" and signature["inputs"]["ids"]["dtype"] == "DT_INT64"


# ----------------------------------------------------------------------------- KServe v2

def v2(*tensors, **request) -> bytes:
    return json.dumps({"inputs": list(tensors), **request}).encode()


def x_tensor(values=(1, 2, 3, 4), **changes) -> dict:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": list(values), **changes}


def binary_body(header: dict, *arrays: np.ndarray) -> tuple[bytes, str]:
    """A v2 body with the binary tensor data extension, and its Inference-Header-Content-Length."""
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for a in arrays), str(len(head))


def test_v2_json_tensors_become_arrays_of_the_models_dtype(two_inputs):
    body = v2({"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
              {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}, id="r1")
    inputs, request = kserve_v2.decode(two_inputs, body, None, LIMIT)
    np.testing.assert_array_equal(inputs["a"], [[1, 2], [3, 4]])
    assert inputs["a"].dtype == np.float32 and inputs["ids"].dtype == np.int64
    assert inputs["ids"].shape == (2, 3) and request["id"] == "r1"


def test_v2_binary_tensors_are_read_in_order_after_the_json_header(two_inputs):
    a = np.array([[0.5, 1.5], [2.5, 3.5]], np.float32)
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    header = {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
                         {"name": "ids", "shape": [2, 3], "datatype": "INT64", "parameters": {"binary_data_size": ids.nbytes}}]}
    body, length = binary_body(header, a, ids)
    inputs, _ = kserve_v2.decode(two_inputs, body, length, LIMIT)
    np.testing.assert_array_equal(inputs["a"], a)
    np.testing.assert_array_equal(inputs["ids"], ids)


def test_v2_binary_and_json_tensors_mix(two_inputs):
    a = np.array([[1, 2]], np.float32)
    header = {"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [7, 8, 9]},
                         {"name": "a", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    inputs, _ = kserve_v2.decode(two_inputs, *binary_body(header, a), LIMIT)
    np.testing.assert_array_equal(inputs["ids"], [[7, 8, 9]])
    np.testing.assert_array_equal(inputs["a"], a)


def test_v2_encode_answers_binary_outputs_where_asked(two_inputs):
    result = {"a_out": np.array([[1, 2]], np.float32), "ids_out": np.array([[1, 2, 3]], np.int64)}
    wanted = [kserve_v2.Wanted("a_out", binary=True), kserve_v2.Wanted("ids_out")]
    content, headers = kserve_v2.encode(two_inputs, {"id": "r2", "outputs": wanted}, result)
    n = int(headers["inference-header-content-length"])
    response = json.loads(content[:n])
    assert headers["content-type"] == "application/octet-stream" and response["id"] == "r2"
    assert response["outputs"][0] == {"name": "a_out", "datatype": "FP32", "shape": [1, 2],
                                      "parameters": {"binary_data_size": 8}}
    assert response["outputs"][1]["data"] == [1, 2, 3]
    np.testing.assert_array_equal(np.frombuffer(content[n:], np.float32), [1, 2])

    _, context = kserve_v2.decode(two_inputs, v2({"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
                                                  {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}),
                                  None, LIMIT)
    content, headers = kserve_v2.encode(two_inputs, context, result)
    assert headers == {"content-type": "application/json"}
    assert [o["name"] for o in json.loads(content)["outputs"]] == ["a_out", "ids_out"]


BINARY_X = np.zeros((1, 4), np.float32)  # 16 bytes
V2_BAD = [
    # (body, Inference-Header-Content-Length, status, fragment of the error)
    (b"{not json", None, 400, "Malformed JSON"),
    (b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}', None, 400,
     "NaN is not a JSON number"),
    (b"[1, 2]", None, 400, "must be a JSON object with 'inputs'"),
    (b"{}", None, 400, "request: missing 'inputs'"),
    (json.dumps({"inputs": {"x": 1}}).encode(), None, 400, "'inputs' must be list, got dict"),
    (v2(x_tensor(), parameters=[1]), None, 400, "request: 'parameters' must be an object"),
    (v2(x_tensor(name="pixels")), None, 400, "Unknown input 'pixels'; model 'one' takes ['x']"),
    (v2({"shape": [1, 4]}), None, 400, "inputs[0]: missing 'name'"),
    (v2(x_tensor(), x_tensor()), None, 400, "Input 'x' is given twice"),
    (v2(x_tensor(datatype="INT32")), None, 400, "datatype 'INT32' does not match the model's FP32"),
    (v2(x_tensor(datatype="BYTES")), None, 400, "does not match the model's FP32"),
    (v2(x_tensor(values=[1, 2, 3])), None, 400, "data has 3 elements but shape [1, 4] needs 4"),
    (v2(x_tensor(shape=[1, -4])), None, 400, "shape must be a list of non-negative integers"),
    (v2(x_tensor(shape=[1, True])), None, 400, "shape must be a list of non-negative integers"),
    (v2(x_tensor(shape="1,4")), None, 400, "'shape' must be list, got str"),
    (v2(x_tensor(shape=[100, 100])), None, 413, "10000 elements; the limit is 1000"),
    (v2(x_tensor(values=["a"] * 4)), None, 400, "expected float32 numbers, got strings"),
    (v2(x_tensor(values=[[1, 2], [3]], shape=[1, 4])), None, 400, "ragged"),
    (v2({"name": "x", "shape": [1, 4], "datatype": "FP32"}), None, 400, "missing 'data'"),
    (v2(x_tensor(parameters=[1])), None, 400, "input 'x': 'parameters' must be an object"),
    (v2(x_tensor(shape=[1, 2, 2])), None, 400, "rank 3"),
    (v2(x_tensor(values=[], shape=[0, 4])), None, 400, "The batch is empty"),
    (v2(x_tensor(values=[1, 2, 3, 1e39])), None, 400, "NaN or infinity"),
    (v2(x_tensor(), outputs=[{"name": "logits"}]), None, 400, "Unknown output 'logits'; model 'one' has ['y']"),
    (v2(x_tensor(), outputs={"name": "y"}), None, 400, "'outputs' must be a list"),
    # the binary tensor data extension
    (v2(x_tensor(parameters={"binary_data_size": 16})), "x", 400, "Inference-Header-Content-Length 'x' is not an integer"),
    (v2(x_tensor()), "100000", 400, "is outside the body's"),
    (v2(x_tensor()), "-1", 400, "is outside the body's"),
    (v2(x_tensor(parameters={"binary_data_size": 16})), None, 400, "binary_data_size 16 runs past the 0 bytes"),
    (v2(x_tensor(parameters={"binary_data_size": -1})), None, 400, "binary_data_size must be a non-negative integer"),
    (v2(x_tensor(parameters={"binary_data_size": True})), None, 400, "binary_data_size must be a non-negative integer"),
    (binary_body({"inputs": [x_tensor(parameters={"binary_data_size": 8})]}, BINARY_X), None, 400,
     "8 bytes of binary data, but shape [1, 4] of FP32 needs 16"),
    (binary_body({"inputs": [x_tensor(parameters={"binary_data_size": 16})]}, BINARY_X, BINARY_X), None, 400,
     "16 bytes of binary data are not claimed"),
]


@pytest.mark.parametrize("body, length, status, fragment", V2_BAD, ids=[str(i) for i in range(len(V2_BAD))])
def test_v2_bad_request_is_refused_naming_the_problem(one_input, body, length, status, fragment):
    if isinstance(body, tuple):  # (body, its header length) from binary_body
        body, length = body
    with pytest.raises(BadRequest) as caught:
        kserve_v2.decode(one_input, body, length, LIMIT)
    assert caught.value.status == status
    assert fragment in str(caught.value)


def test_v2_inputs_with_different_batch_sizes_are_refused(two_inputs):
    body = v2({"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
              {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]})
    with pytest.raises(BadRequest, match=r"different batch sizes \[1, 2\]"):
        kserve_v2.decode(two_inputs, body, None, LIMIT)


def test_v2_integer_inputs_refuse_fractions_and_out_of_range_values(two_inputs):
    a = {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
    for data, fragment in (([1.5, 2, 3], "got fractional numbers"), ([2**63] * 3, "outside the int64 range"),
                           # beyond 64 bits, which the JSON parser reads as floats: still out of range, not fractions
                           ([2**64, 1, 2], r"outside the int64 range \[-9223372036854775808, "),
                           ([1, -(2**63) - 1, 2], "outside the int64 range"), ([2**70] * 3, "outside the int64 range")):
        with pytest.raises(BadRequest, match=fragment):
            kserve_v2.decode(two_inputs, v2(a, {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": data}),
                             None, LIMIT)


def test_v2_float_inputs_take_integers_of_any_length(two_inputs):
    """A 25-digit integer is a number like any other to a float input (float32 rounds it)."""
    ids = {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}
    inputs, *_ = kserve_v2.decode(two_inputs, v2({"name": "a", "shape": [1, 2], "datatype": "FP32",
                                                  "data": [10**24, -(10**24)]}, ids), None, LIMIT)
    np.testing.assert_array_equal(inputs["a"], np.array([[1e24, -1e24]], np.float32))


# ----------------------------------------------------------------------------- TF Serving

def tf(**request) -> bytes:
    return json.dumps(request).encode()


def test_tfserving_row_and_columnar_formats_of_a_one_input_model(one_input):
    rows = [[1, 2, 3, 4], [5, 6, 7, 8]]
    for body, kind in ((tf(instances=rows), "row"), (tf(instances=[{"x": r} for r in rows]), "row"),
                       (tf(inputs=rows), "columnar"), (tf(inputs={"x": rows}), "columnar"),
                       (tf(instances=rows, signature_name="serving_default"), "row")):
        inputs, got_kind = tfserving.decode(one_input, body, LIMIT)
        np.testing.assert_array_equal(inputs["x"], rows)
        assert inputs["x"].dtype == np.float32 and got_kind == kind


def test_tfserving_keyed_rows_and_columns_of_a_two_input_model(two_inputs):
    keyed = [{"a": [1, 2], "ids": [1, 2, 3]}, {"a": [3, 4], "ids": [4, 5, 6]}]
    inputs, kind = tfserving.decode(two_inputs, tf(instances=keyed), LIMIT)
    assert kind == "row" and inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(inputs["a"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(inputs["ids"], [[1, 2, 3], [4, 5, 6]])
    inputs, kind = tfserving.decode(two_inputs, tf(inputs={"a": [[1, 2]], "ids": [[1, 2, 3]]}), LIMIT)
    assert kind == "columnar" and inputs["ids"].shape == (1, 3)


def test_tfserving_answers_in_the_format_it_was_asked_in():
    one = {"y": np.array([[1.0, 2.0], [3.0, 4.0]])}
    two = {"a_out": np.array([[1.0], [2.0]]), "ids_out": np.array([[7], [8]])}

    def answer(result, kind):  # what the client reads
        return json.loads(tensors.dumps(tfserving.encode(result, kind)))

    assert answer(one, "row") == {"predictions": [[1.0, 2.0], [3.0, 4.0]]}
    assert answer(two, "row") == {"predictions": [{"a_out": [1.0], "ids_out": [7]},
                                                  {"a_out": [2.0], "ids_out": [8]}]}
    assert answer(one, "columnar") == {"outputs": [[1.0, 2.0], [3.0, 4.0]]}
    assert answer(two, "columnar") == {"outputs": {"a_out": [[1.0], [2.0]], "ids_out": [[7], [8]]}}


TF_BAD = [
    # (model fixture, body, status, fragment of the error)
    ("one_input", b"{not json", 400, "Malformed JSON"),
    ("one_input", b"[[1, 2, 3, 4]]", 400, "must be a JSON object with 'instances' or 'inputs'"),
    ("one_input", tf(instances=[[1, 2, 3, 4]], signature_name="train"), 400, "Unknown signature_name 'train'"),
    ("one_input", tf(), 400, "Send exactly one of 'instances'"),
    ("one_input", tf(instances=[[1, 2, 3, 4]], inputs=[[1, 2, 3, 4]]), 400, "Send exactly one of 'instances'"),
    ("one_input", tf(instances=[]), 400, "'instances' must be a non-empty list"),
    ("one_input", tf(instances={"x": [1, 2, 3, 4]}), 400, "'instances' must be a non-empty list"),
    ("one_input", tf(instances=[{"pixels": [1, 2, 3, 4]}]), 400, "instances[0] has keys ['pixels']; the model's inputs are ['x']"),
    ("one_input", tf(instances=[[1, 2, 3, 4], {"x": [1, 2, 3, 4]}]), 400, "Each instance must be an object keyed by input name"),
    ("one_input", tf(inputs={"pixels": [[1, 2, 3, 4]]}), 400, "'inputs' has keys ['pixels']; the model's inputs are ['x']"),
    ("one_input", tf(inputs=[1, 2, 3]), 400, "rank 1"),
    ("one_input", tf(instances=[["a", "b", "c", "d"]]), 400, "got strings"),
    ("one_input", tf(inputs=[[1] * 4] * 300), 413, "1200 numbers; the limit is 1000"),
    ("two_inputs", tf(instances=[[1, 2]]), 400, "Each instance must be an object keyed by input name ['a', 'ids']"),
    ("two_inputs", tf(inputs=[[1, 2]]), 400, "'inputs' must be an object keyed by input name ['a', 'ids']"),
    ("two_inputs", tf(inputs={"a": [[1, 2]]}), 400, "'inputs' has keys ['a']; the model's inputs are ['a', 'ids']"),
]


@pytest.mark.parametrize("model, body, status, fragment", TF_BAD, ids=[str(i) for i in range(len(TF_BAD))])
def test_tfserving_bad_request_is_refused_naming_the_problem(request, model, body, status, fragment):
    with pytest.raises(BadRequest) as caught:
        tfserving.decode(request.getfixturevalue(model), body, LIMIT)
    assert caught.value.status == status
    assert fragment in str(caught.value)


def test_served_onnx_sessions_do_not_spin(one_input):
    # A spinning ORT pool thread holds a core the event loop and other requests need.
    options = one_input.predictor.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_quick_onnx_model_is_opened_once_and_a_slow_one_again_with_spinning_threads(tmp_path, monkeypatch):
    """Serve times a model opened without spinning threads: a quick one keeps that session (its calls run on the
    event loop); one slower than INLINE_BELOW_S a call is opened once more, spinning, as ORT runs fastest alone."""
    from kerakit.formats.onnx import OnnxPredictor

    path = onnx_model(tmp_path / "model.onnx", {"x": (TensorProto.FLOAT, [4])}, {"y": "x"})
    opened, init = [], OnnxPredictor.__init__

    def recording(self, path, **options):
        opened.append(options.get("spinning", True))
        init(self, path, **options)

    monkeypatch.setattr(OnnxPredictor, "__init__", recording)
    Model(ModelEntry("quick", str(path)), ServeOptions()).close()
    assert opened == [False]
    opened.clear()
    monkeypatch.setattr(models, "INLINE_BELOW_S", 0.0)  # as if every call were slow
    slow = Model(ModelEntry("slow", str(path)), ServeOptions())
    slow.close()
    assert opened == [False, True] and slow.row_s > 0


def test_quick_calls_run_on_the_event_loop_and_slow_ones_on_the_inference_thread(one_input):
    threads = []
    run = one_input.predictor.run

    def recording(batch):
        threads.append(threading.get_ident())
        return run(batch)

    batch = one_input.check({"x": np.ones((2, 4), np.float32)}, LIMIT)
    one_input.predictor.run = recording
    measured = one_input.row_s
    try:
        assert measured < models.INLINE_BELOW_S  # an identity model: microseconds
        out = asyncio.run(one_input.infer(batch))
        one_input.row_s = 1.0  # as if each row took a second
        asyncio.run(one_input.infer(batch))
    finally:
        one_input.predictor.run, one_input.row_s = run, measured
    np.testing.assert_array_equal(out["y"], batch["x"])
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()
