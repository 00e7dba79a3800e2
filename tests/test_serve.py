"""`kerakit serve` as clients see it: the official Triton client, a TF Serving-style
JSON client, every kind of bad request answered 4xx (fuzzed too), metrics, the
request log and dynamic batching. Each server is the real CLI in its own process."""

import concurrent.futures
import json
import os
import shutil
import socket

import numpy as np
import pytest
import requests
from conftest import Server, free_port

from kerakit import runtime

NAME = "digits"


@pytest.fixture(scope="module")
def onnx_path(digits_export):
    return digits_export[0] / "model.onnx"


@pytest.fixture(scope="module")
def server(onnx_path, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("serve")
    s = Server(onnx_path, "--name", NAME, "--log", log_dir / "requests.jsonl", "--max-body-mb", "1",
               "--max-elements", "100000", log_dir=log_dir)
    s.log_path = log_dir / "requests.jsonl"
    yield s
    assert s.alive(), "the server must outlive every test that used it"
    s.stop()
    assert "Traceback" not in s.stderr_path.read_text()


@pytest.fixture(scope="module")
def expected(onnx_path):
    x = np.random.default_rng(7).random((5, 8, 8, 1), dtype=np.float32) * 16
    with runtime.load(onnx_path) as p:
        return x, p.predict({"image": x})["probabilities"]


# ----------------------------------------------------------------------------- Triton client

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_like_the_runtime(server, expected, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_config(NAME)["input"][0]["dims"] == [8, 8, 1]

    x, want = expected
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(NAME, [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)],
                          request_id="req-1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)
    assert result.get_response()["id"] == "req-1"
    client.close()


def test_tritonclient_sees_server_errors(server, expected):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    x, _ = expected
    tensor = triton.InferInput("image", [5, 8, 8], "FP32")
    tensor.set_data_from_numpy(x[..., 0])
    with pytest.raises(InferenceServerException, match=r"rank 3.*expected rank 4"):
        client.infer(NAME, [tensor])
    with pytest.raises(InferenceServerException, match="Unknown model 'nope'"):
        client.get_model_metadata("nope")
    assert not client.is_model_ready("nope")
    client.close()


# ----------------------------------------------------------------------------- TF Serving REST

def test_tfserving_row_and_columnar_formats(server, expected):
    x, want = expected
    rows = requests.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(rows["predictions"], want, rtol=1e-6, atol=1e-7)
    keyed = requests.post(f"{server.url}/v1/models/{NAME}/versions/1:predict",
                          json={"instances": [{"image": r} for r in x.tolist()]}).json()
    np.testing.assert_allclose(keyed["predictions"], want, rtol=1e-6, atol=1e-7)
    columns = requests.post(f"{server.url}/v1/models/{NAME}:predict", json={"inputs": {"image": x.tolist()}}).json()
    np.testing.assert_allclose(columns["outputs"], want, rtol=1e-6, atol=1e-7)

    status = requests.get(f"{server.url}/v1/models/{NAME}").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    signature = requests.get(f"{server.url}/v1/models/{NAME}/metadata").json()["metadata"]["signature_def"]
    assert signature["signature_def"]["serving_default"]["inputs"]["image"]["dtype"] == "DT_FLOAT"


# ----------------------------------------------------------------------------- bad input

GOOD = {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.5] * 64}
V2 = f"/v2/models/{NAME}/infer"
TF = f"/v1/models/{NAME}:predict"


def _v2(**changes):
    return json.dumps({"inputs": [{**GOOD, **changes}]})


BAD = [
    # (path, body, headers, status, fragment of the error)
    (V2, "{not json", {}, 400, "Malformed JSON"),
    (V2, "[1, 2]", {}, 400, "JSON object"),
    (V2, "{}", {}, 400, "missing 'inputs'"),
    ("/v2/models/nope/infer", _v2(), {}, 404, "Unknown model 'nope'"),
    ("/v2/models/..%2F..%2Fetc%2Fpasswd/infer", _v2(), {}, 404, ""),
    (f"/v2/models/{NAME}/versions/7/infer", _v2(), {}, 404, "no version '7'"),
    (V2, _v2(name="pixels"), {}, 400, "Unknown input 'pixels'"),
    (V2, _v2(data=[0.5] * 63), {}, 400, "data has 63 elements but shape [1, 8, 8, 1] needs 64"),
    (V2, _v2(shape=[1, 8, 8]), {}, 400, "rank 3"),
    (V2, _v2(shape=[1, 64], data=[0.5] * 64), {}, 400, "rank 2"),
    (V2, _v2(shape=[1, 4, 16, 1]), {}, 400, "expected (batch, 8, 8, 1)"),
    (V2, _v2(shape=[0, 8, 8, 1], data=[]), {}, 400, "empty"),
    (V2, _v2(datatype="INT32"), {}, 400, "does not match the model's FP32"),
    (V2, _v2(datatype="STRING"), {}, 400, "does not match"),
    (V2, _v2(shape="1,8,8,1"), {}, 400, "'shape' must be list"),
    (V2, _v2(shape=[1, -8, 8, 1]), {}, 400, "non-negative integers"),
    (V2, _v2(data=["a"] * 64), {}, 400, "got strings"),
    (V2, _v2(data=[None] * 64), {}, 400, "expected float32 numbers"),
    (V2, _v2(data=[True] * 64), {}, 400, "got booleans"),
    (V2, _v2(data=[[0.5] * 8] * 7 + [[0.5] * 7]), {}, 400, "ragged"),
    (V2, _v2(data=[0.5] * 63 + [1e39]), {}, 400, "NaN or infinity"),
    (V2, _v2().replace("0.5]", "NaN]"), {}, 400, "NaN is not a JSON number"),
    (V2, _v2().replace("0.5]", "1e999]"), {}, 400, "NaN or infinity"),
    (V2, _v2(shape=[1000, 8, 8, 1000]), {}, 413, "limit is 100000"),
    (V2, _v2(parameters={"binary_data_size": 256}), {"Inference-Header-Content-Length": "x"}, 400, "not an integer"),
    (V2, _v2(parameters={"binary_data_size": 256}), {}, 400, "runs past"),
    (V2, json.dumps({"inputs": [GOOD, GOOD]}), {}, 400, "given twice"),
    (V2, json.dumps({"inputs": [GOOD], "outputs": [{"name": "logits"}]}), {}, 400, "Unknown output 'logits'"),
    (V2, json.dumps({"inputs": [GOOD], "parameters": [1]}), {}, 400, "request: 'parameters' must be an object"),
    (TF, json.dumps({"instances": [[[[0.5]] * 8] * 8], "inputs": []}), {}, 400, "exactly one of"),
    (TF, json.dumps({"instances": []}), {}, 400, "non-empty list"),
    (TF, json.dumps({"instances": [{"pixels": 1}]}), {}, 400, "model's inputs are ['image']"),
    (TF, json.dumps({"inputs": [[1, 2, 3]]}), {}, 400, "rank 2"),
    (TF, json.dumps({"instances": [[[["x"]] * 8] * 8]}), {}, 400, "got strings"),
    (TF, json.dumps({"signature_name": "train", "instances": [1]}), {}, 400, "Unknown signature_name 'train'"),
    ("/v1/models/nope:predict", json.dumps({"instances": [1]}), {}, 404, "Unknown model 'nope'"),
    ("/v2/models/x/../../../../etc/passwd", "", {}, 404, ""),
]


@pytest.mark.parametrize("path, body, headers, status, fragment", BAD,
                         ids=[f"{i}-{b[:30]}" for i, (_, b, *_r) in enumerate(BAD)])
def test_bad_request_gets_a_4xx_naming_the_problem(server, path, body, headers, status, fragment):
    if path.endswith("passwd"):  # a path-traversal GET: no route, no file read
        r = requests.get(server.url + path)
    else:
        r = requests.post(server.url + path, data=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert server.alive()


def test_body_over_the_limit_is_413_even_when_chunked(server):
    big = b'{"inputs": [' + b" " * (1024 * 1024) + b"]}"
    assert requests.post(server.url + V2, data=big).status_code == 413
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    r = requests.post(server.url + V2, data=chunks)
    assert r.status_code == 413 and "byte limit" in r.json()["error"]
    assert requests.get(server.url + "/v2/health/live").status_code == 200


def test_a_body_far_over_the_limit_gets_a_readable_413_not_a_broken_pipe(server):
    """10 MB against the 1 MB limit: the client sends it all before reading, and still reads the 413."""
    rows = json.dumps({"inputs": [{"name": "x", "shape": [256, 32, 32, 3], "datatype": "FP32",
                                   "data": [0.123456789] * (256 * 32 * 32 * 3)}]}).encode()
    assert len(rows) > 8 * 1024 * 1024
    r = requests.post(server.url + V2, data=rows, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the 1048576-byte limit" in r.json()["error"]
    r = requests.post(server.url + V2, data=(rows[i:i + 65536] for i in range(0, len(rows), 65536)))
    assert r.status_code == 413 and "over the 1048576-byte limit" in r.json()["error"]
    assert requests.get(server.url + "/v2/health/live").status_code == 200


def test_wrong_method_and_unknown_route_are_json_4xx(server):
    r = requests.get(server.url + V2)
    assert r.status_code == 405 and r.json()["error"]
    r = requests.get(server.url + "/etc/passwd")
    assert r.status_code == 404 and "No route" in r.json()["error"]


# ----------------------------------------------------------------------------- fuzz

def test_fuzzed_requests_never_get_a_5xx(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=6),
                                                            st.dictionaries(st.text(max_size=8), c, max_size=4)),
                               max_leaves=40)
    tensor = st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.just("image"), st.text(max_size=10), json_values),
        "shape": st.one_of(st.lists(st.integers(-2, 70), max_size=5), json_values),
        "datatype": st.one_of(st.sampled_from(["FP32", "FP64", "INT8", "BOOL", "BYTES", "fp32"]), json_values),
        "data": st.one_of(st.lists(st.floats(allow_nan=False, width=32), max_size=70), json_values),
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-5, 300)}), json_values),
    })
    v2_bodies = st.one_of(json_values, st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3)},
                                                             optional={"outputs": json_values, "id": json_values,
                                                                       "parameters": json_values}))
    tf_bodies = st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "instances": json_values, "inputs": json_values, "signature_name": json_values}))
    names = st.one_of(st.just(NAME), st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), max_size=12))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(st.tuples(st.just("v2"), names, v2_bodies, st.binary(max_size=64), st.one_of(st.none(), st.integers(-3, 400))),
                     st.tuples(st.just("tf"), names, tf_bodies, st.just(b""), st.none()),
                     st.tuples(st.sampled_from(["v2", "tf"]), names, st.binary(max_size=200), st.just(b""), st.none())))
    def check(case):
        protocol, name, body, tail, header_length = case
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        path = f"/v2/models/{name}/infer" if protocol == "v2" else f"/v1/models/{name}:predict"
        r = requests.post(server.url + path, data=raw + tail, headers=headers)
        assert r.status_code < 500, (path, raw[:300], r.text)
        if r.status_code != 200:
            assert r.json()["error"]

    check()
    assert server.alive()


# ----------------------------------------------------------------------------- metrics and request log

def test_metrics_count_requests_errors_and_latency(server):
    def series(name, **labels):
        text = requests.get(server.url + "/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} "):
                return float(line.split()[-1])
        return 0.0

    before_ok = series("kerakit_requests_total", code="200", model=NAME, protocol="v2")
    before_err = series("kerakit_request_errors_total", code="400", model=NAME, protocol="v2")
    before_n = series("kerakit_request_seconds_count", model=NAME, protocol="v2")
    for _ in range(3):
        assert requests.post(server.url + V2, data=_v2()).status_code == 200
    assert requests.post(server.url + V2, data=_v2(name="pixels")).status_code == 400
    assert series("kerakit_requests_total", code="200", model=NAME, protocol="v2") == before_ok + 3
    assert series("kerakit_request_errors_total", code="400", model=NAME, protocol="v2") == before_err + 1
    assert series("kerakit_request_seconds_count", model=NAME, protocol="v2") == before_n + 4


def test_request_log_has_summaries_not_raw_inputs(server):
    x = np.arange(128, dtype=np.float32).reshape(2, 8, 8, 1) / 8
    body = json.dumps({"inputs": [{"name": "image", "shape": [2, 8, 8, 1], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]})
    before = server.log_path.read_text().count("\n") if server.log_path.exists() else 0
    assert requests.post(server.url + V2, data=body).status_code == 200
    assert requests.post(server.url + V2, data=_v2(name="pixels")).status_code == 400  # errors are not logged
    lines = server.log_path.read_text().splitlines()
    assert len(lines) == before + 1
    record = json.loads(lines[-1])
    assert record["model"] == NAME and record["protocol"] == "v2" and record["rows"] == 2
    summary = record["inputs"]["image"]
    np.testing.assert_allclose(summary["mean"], x.reshape(2, -1).mean(1), rtol=1e-6)
    np.testing.assert_allclose(summary["max"], x.reshape(2, -1).max(1))
    assert "values" not in summary
    assert len(record["outputs"]["probabilities"]["class"]) == 2


# ----------------------------------------------------------------------------- batching, layouts, CLI errors

def test_dynamic_batching_merges_concurrent_requests_with_the_same_answers(onnx_path, expected, tmp_path):
    x, want = expected
    server = Server(onnx_path, "--name", NAME, "--max-batch", "32", "--batch-wait-ms", "20", "--no-log", log_dir=tmp_path)
    try:
        def one(i):
            body = json.dumps({"inputs": [{**GOOD, "data": x[i % 5].ravel().tolist()}]})
            return i, requests.post(server.url + V2, data=body).json()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(64)))
        for i, response in results:
            np.testing.assert_allclose(response["outputs"][0]["data"], want[i % 5], rtol=1e-5, atol=1e-6)
        metrics = requests.get(server.url + "/metrics").text
        count = float(next(line.split()[-1] for line in metrics.splitlines()
                           if line.startswith("kerakit_model_batch_rows_count")))
        rows = float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith("kerakit_model_batch_rows_sum")))
        assert rows == 64 and count < 64, f"{count} model calls for 64 concurrent requests: nothing was merged"
        assert server.alive()
    finally:
        server.stop()


def test_model_dir_serves_onnx_tflite_int8_and_savedmodel(digits_export, expected, tmp_path):
    out, _ = digits_export
    repo = tmp_path / "repo"
    (repo / "edge" / "1").mkdir(parents=True)
    os.link(out / "model_int8.tflite", repo / "edge" / "1" / "model.tflite")
    (repo / "digits_cnn" / "1").mkdir(parents=True)
    os.link(out / "triton" / "digits_cnn" / "1" / "model.onnx", repo / "digits_cnn" / "1" / "model.onnx")
    shutil.copytree(out / "tfserving" / "digits_cnn", repo / "savedmodel")  # TF Serving layout: 1/saved_model.pb
    server = Server("--model-dir", repo, log_dir=tmp_path)
    try:
        x, _ = expected
        assert requests.get(server.url + "/v2/health/ready").json()["models"] == ["digits_cnn", "edge", "savedmodel"]
        meta = requests.get(server.url + "/v2/models/edge").json()
        assert meta["platform"] == "tensorflow_tflite" and meta["inputs"][0]["datatype"] == "FP32"
        with runtime.load(out / "model_int8.tflite") as p:
            want = p.predict({"image": x})["probabilities"]
        got = requests.post(server.url + "/v1/models/edge:predict", json={"instances": x.tolist()}).json()
        np.testing.assert_allclose(got["predictions"], want, rtol=1e-6, atol=1e-7)
        assert requests.get(server.url + "/v2/models/digits_cnn/ready").status_code == 200
        with runtime.load(out / "savedmodel") as p:
            want = p.predict({"image": x})["probabilities"]
        got = requests.post(server.url + "/v2/models/savedmodel/infer", json={"inputs": [
            {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).json()
        np.testing.assert_allclose(np.reshape(got["outputs"][0]["data"], (5, 10)), want, rtol=1e-6, atol=1e-7)
    finally:
        server.stop()


def test_model_dir_refuses_a_symlink_out_of_the_repository(digits_export, tmp_path):
    from kerakit.errors import KerakitError
    from kerakit.serve import discover

    (tmp_path / "repo" / "leak").mkdir(parents=True)
    (tmp_path / "repo" / "leak" / "1").symlink_to(digits_export[0] / "triton" / "digits_cnn" / "1")
    with pytest.raises(KerakitError, match="outside"):
        discover(tmp_path / "repo")


@pytest.mark.parametrize("args, fragment", [
    (["/no/such/model.onnx"], "does not exist"),
    (["README.md"], "Unsupported model file"),
    ([], "Nothing to serve"),
    (["{onnx}", "--name", "../x"], "Invalid model name '../x'"),
    (["{run}"], "has no exported float model to serve (none of model.onnx, model_fp32.tflite"),
    # A thread count is refused, not dropped, for a model whose runtime takes none (TensorFlow's own pools).
    (["{keras}", "--threads", "1"], "Cannot serve model 'digits_cnn' with --threads 1: Invalid threads=1: keras "
                                    "models take no thread count"),
])
def test_serve_cli_errors_are_one_line(args, fragment, onnx_path, digits_run, tmp_path):
    from conftest import run_cli

    unexported = tmp_path / "run"  # the shared run may have been exported by other tests
    shutil.copytree(digits_run.path, unexported, ignore=shutil.ignore_patterns("export"))
    args = [a.format(onnx=onnx_path, run=unexported, keras=digits_run.model_path) for a in args]
    r = run_cli("serve", *args, "--port", str(free_port()), timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_is_named(onnx_path):
    from conftest import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_cli("serve", onnx_path, "--port", str(s.getsockname()[1]), timeout=60)
    assert r.returncode == 1 and "Cannot listen on 127.0.0.1" in r.stderr and "--port" in r.stderr


def test_workers_share_the_port_and_answer_alike(onnx_path, expected, tmp_path):
    x, want = expected
    server = Server(onnx_path, "--name", NAME, "--workers", "2", "--no-log", log_dir=tmp_path)
    try:
        def one(i):
            return requests.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": x.tolist()}).json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for response in pool.map(one, range(40)):
                np.testing.assert_allclose(response["predictions"], want, rtol=1e-6, atol=1e-7)
        # Two server processes under the launcher, each with the model loaded.
        import psutil

        children = psutil.Process(server.proc.pid).children(recursive=True)
        assert len([c for c in children if "spawn_main" in " ".join(c.cmdline())]) == 2
    finally:
        server.stop()


def test_an_exported_file_given_by_path_is_served_only_while_its_export_report_still_verifies_it(digits_export,
                                                                                                 tmp_path):
    """`serve RUN/export/model_int8.tflite` checks the file's SHA-256 as `serve RUN` checks the run's choice."""
    from conftest import cli_in_process
    from kerakit.serve import resolve

    export_dir = tmp_path / "export"
    shutil.copytree(digits_export[0], export_dir)
    assert resolve(export_dir / "model_int8.tflite")[0].path == str(export_dir / "model_int8.tflite")
    data = bytearray((export_dir / "model_int8.tflite").read_bytes())
    data[-1] ^= 1  # one bit of the file as verified
    (export_dir / "model_int8.tflite").write_bytes(bytes(data))
    result = cli_in_process("serve", export_dir / "model_int8.tflite", "--port", free_port())
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert (f"error: Refusing to serve {export_dir / 'model_int8.tflite'}: model_int8.tflite changed since it was "
            f"verified ({export_dir / 'export_report.json'}). Export it again") in result.stderr
    elsewhere = tmp_path / "mine.tflite"  # out of the export directory: the user vouches for it
    shutil.copyfile(export_dir / "model_int8.tflite", elsewhere)
    assert resolve(elsewhere)[0].path == str(elsewhere)
