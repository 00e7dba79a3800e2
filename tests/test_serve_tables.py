"""`kerakit serve` takes a table model's raw rows (issue 27): TF Serving's rows and columns, KServe v2 with one
tensor per column (BYTES for a category, FP32 for a number) in JSON, binary and gRPC. A missing value is null
(or NaN for a number) and reaches the model as training gave it a missing cell: NaN for a number, "" for a
category. Every answer equals the Keras model's (what `kerakit evaluate` runs) on the same raw rows; a missing
column, an unknown one, a string where a number goes or a number where a category goes is a 400 naming it.

One server on one run: the messy CSV of test_baselines (`;`, latin-1, decimal commas, ".", "NA", "" and a stray
'unknown' in the number column, 'biscoe ' beside 'Biscoe', an identifier and a leaky column), the recipe
`kerakit new` writes for it, 3 epochs, and its SavedModel export (which carries any TensorFlow string op), served as `kerakit serve RUN` serves it.
"""

import json

import numpy as np
import pytest
import requests
from conftest import Server
from test_baselines import _skewed_csv

COLUMNS = {"bill_mm": "FP32", "island": "BYTES", "observer": "BYTES"}
# Rows as a client has them: a missing number (null, "NaN"), a missing category (null, ""), a category training
# never saw, the same island spelled with a trailing space, an integer for a float column.
ROW = {"island": "Biscoe", "bill_mm": 39.1, "observer": "Zoé"}
HANDMADE = [{"island": "Biscoe", "bill_mm": 39.1, "observer": "Zoé"},
            {"island": "Dream", "bill_mm": None, "observer": "Mateo"},
            {"island": None, "bill_mm": 50.2, "observer": "Renée"},
            {"island": "Atlantis", "bill_mm": "NaN", "observer": ""},
            {"island": "biscoe ", "bill_mm": 41, "observer": None},
            {"island": "", "bill_mm": 47.5, "observer": "Zoé"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, rows, the Keras model's answers on them): the test split's rows (what `kerakit evaluate` runs,
    NaN where the CSV said "NA", "." or "unknown") sent with null for NaN, and the handmade rows."""
    import kerakit
    from kerakit import runtime
    from kerakit.data import load_data
    from kerakit.export import export
    from kerakit.sources import new_recipe

    tmp = tmp_path_factory.mktemp("table_serve")
    csv = _skewed_csv(tmp / "penguins.csv")
    _, text = new_recipe("penguins", csv, label="species")
    (tmp / "penguins.py").write_text(text)
    run = kerakit.train(tmp / "penguins.py", tmp / "run", epochs=3, verbose=0, log=lambda m: None)
    export(run.path, targets=[], formats=["savedmodel"], log=lambda m: None)
    x, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    x["bill_mm"][:3] = np.nan  # missing numbers, whichever rows the split put in test
    rows = [{name: _json(x[name][i, 0]) for name in COLUMNS} for i in range(len(x["bill_mm"]))] + HANDMADE
    with runtime.load(run.path / "model.keras") as model:
        want = runtime.first_output(model, _as_training_feeds(rows))
    server = Server(run.path, "--no-log", log_dir=tmp)
    yield server, rows, want
    server.stop()
    assert "Traceback" not in server.stderr_path.read_text()


def _json(value):
    """A dataset value as JSON: NaN as null."""
    return value if isinstance(value, str) else None if np.isnan(value) else float(value)


def _as_training_feeds(rows):
    """Raw rows as the training pipeline feeds the model a missing cell (kerakit.sources.prepare): NaN for a
    number, "" for a category; other values as they are."""
    def number(v):
        return np.nan if v is None or v == "NaN" else v

    return {"bill_mm": np.array([[number(r["bill_mm"])] for r in rows], np.float32),
            "island": np.array([["" if r["island"] is None else r["island"]] for r in rows], object),
            "observer": np.array([["" if r["observer"] is None else r["observer"]] for r in rows], object)}


def _post(server, path, body):
    return requests.post(server.url + path, data=json.dumps(body).encode(), timeout=30)


def test_a_missing_value_reaches_the_model_as_training_gave_it_a_missing_cell(served):
    """null, "" and a category training never saw share the out-of-vocabulary slot; null and "NaN" are the
    NaN of a missing number, which the model fills in (a finite answer)."""
    server, rows, _ = served
    assert sum(r["bill_mm"] is None for r in rows) >= 4  # the module's rows do hold missing numbers
    variants = [{**ROW, "island": None}, {**ROW, "island": ""}, {**ROW, "island": "Atlantis"},
                {**ROW, "bill_mm": None}, {**ROW, "bill_mm": "NaN"}, ROW]
    response = _post(server, "/v1/models/penguins:predict", {"instances": variants})
    assert response.status_code == 200, response.text
    got = np.array(response.json()["predictions"])
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[0], got[2])
    np.testing.assert_array_equal(got[3], got[4])
    assert np.isfinite(got).all() and not np.allclose(got[3], got[5])


@pytest.mark.parametrize("form", ["rows", "columns"])
def test_tf_serving_rows_and_columns_answer_as_the_keras_model(served, form):
    server, rows, want = served
    if form == "rows":
        body = {"instances": rows}
    else:
        body = {"inputs": {name: [r[name] for r in rows] for name in COLUMNS}}
    response = _post(server, "/v1/models/penguins:predict", body)
    assert response.status_code == 200, response.text
    got = np.array(response.json()["predictions" if form == "rows" else "outputs"], np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("shape", ["[n, 1]", "[n]"])
def test_kserve_v2_json_takes_one_tensor_per_column_with_null_for_missing(served, shape):
    server, rows, want = served
    dims = [len(rows), 1] if shape == "[n, 1]" else [len(rows)]
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": dims, "data": [r[name] for r in rows]}
                       for name, datatype in COLUMNS.items()]}
    response = _post(server, "/v2/models/penguins/infer", body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [len(rows), 3]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(-1, 3), want, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_sends_columns_as_binary_bytes_and_fp32_with_nan(served, protocol):
    """tritonclient's own forms: BYTES as length-prefixed bytes, FP32 raw (a NaN is a NaN), over HTTP and gRPC."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server, rows, want = served
    module, url = ((httpclient, server.url[len("http://"):]) if protocol == "http"
                   else (grpcclient, f"127.0.0.1:{server.grpc_port}"))
    client = module.InferenceServerClient(url)
    metadata = client.get_model_metadata("penguins", **({"as_json": True} if protocol == "grpc" else {}))
    assert {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]} == {
        name: (datatype, [-1, 1]) for name, datatype in COLUMNS.items()}
    tensors = []
    for name, array in _as_training_feeds(rows).items():
        tensor = module.InferInput(name, list(array.shape), COLUMNS[name])
        tensor.set_data_from_numpy(array, **({"binary_data": True} if protocol == "http" else {}))
        tensors.append(tensor)
    got = client.infer("penguins", tensors).as_numpy("probabilities")
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(Exception, match=r"missing: observer"):
        client.infer("penguins", tensors[:2])
    client.close()


def test_grpc_typed_contents_take_columns_with_empty_text_and_nan_for_missing(served):
    """bytes_contents and fp32_contents, the typed fields tritonclient never fills, through kerakit's own stub."""
    import grpc

    from kerakit.serve.proto import oip_messages_pb2 as pb
    from kerakit.serve.proto import oip_service_pb2_grpc as pb_grpc

    server, rows, want = served
    message = pb.ModelInferRequest(model_name="penguins")
    for name, array in _as_training_feeds(rows).items():
        contents = message.inputs.add(name=name, datatype=COLUMNS[name], shape=[len(rows), 1]).contents
        if array.dtype == object:
            contents.bytes_contents.extend(v.encode() for v in array.ravel())
        else:
            contents.fp32_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(len(rows), 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_tf_serving_metadata_lists_each_columns_real_dtype(served):
    server, _, _ = served
    signature = requests.get(server.url + "/v1/models/penguins/metadata", timeout=30).json()[
        "metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert {name: spec["dtype"] for name, spec in signature["inputs"].items()} == {
        "bill_mm": "DT_FLOAT", "island": "DT_STRING", "observer": "DT_STRING"}


REFUSED = [
    ({"instances": [{"island": "Biscoe", "observer": "Zoé"}]}, "missing 'bill_mm'"),
    ({"instances": [ROW, {**ROW, "colour": "red"}]}, "instances[1] has keys ['bill_mm', 'colour', 'island', "
                                                     "'observer']; the model's inputs are ['bill_mm', 'island', "
                                                     "'observer']; unknown 'colour'"),
    ({"inputs": {"island": ["Biscoe"], "bill_mm": [39.1]}}, "missing 'observer'"),
    ({"instances": [{**ROW, "bill_mm": "39,1"}]}, "input 'bill_mm': expected a number, got the string '39,1'; "
                                                  "send a JSON number, or null (or \"NaN\") where the value is missing"),
    ({"instances": [{**ROW, "bill_mm": "NA"}]}, "input 'bill_mm': expected a number, got the string 'NA'"),
    ({"instances": [{**ROW, "bill_mm": True}]}, "input 'bill_mm': expected a number, got true"),
    ({"instances": [{**ROW, "island": 3}]}, "input 'island': expected text (a category, as the table has it), "
                                            "got 3; send it as a JSON string, or null where the value is missing"),
    ({"instances": [{**ROW, "bill_mm": 1e39}]}, "Input 'bill_mm' contains infinity"),
]


@pytest.mark.parametrize("body, message", REFUSED)
def test_tf_serving_refuses_a_bad_row_naming_the_column(served, body, message):
    server, _, _ = served
    response = _post(server, "/v1/models/penguins:predict", body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def _v2(**columns):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": [1, 1], "data": [value]}
                       for name, (datatype, value) in columns.items()]}


GOOD = {"island": ("BYTES", "Biscoe"), "bill_mm": ("FP32", 39.1), "observer": ("BYTES", "Zoé")}
REFUSED_V2 = [
    (_v2(island=GOOD["island"], bill_mm=GOOD["bill_mm"]), "(missing: observer)"),
    (_v2(**GOOD, colour=("BYTES", "red")), "Unknown input 'colour'; model 'penguins' takes ['bill_mm', 'island', 'observer']"),
    (_v2(**{**GOOD, "bill_mm": ("FP32", "39,1")}), "input 'bill_mm': expected a number, got the string '39,1'"),
    (_v2(**{**GOOD, "bill_mm": ("BYTES", "39.1")}), "input 'bill_mm': datatype 'BYTES' does not match the model's FP32"),
    (_v2(**{**GOOD, "observer": ("BYTES", 7)}), "input 'observer': expected text (a category"),
]


@pytest.mark.parametrize("body, message", REFUSED_V2)
def test_kserve_v2_refuses_a_bad_column_naming_it(served, body, message):
    server, _, _ = served
    response = _post(server, "/v2/models/penguins/infer", body)
    assert response.status_code == 400
    assert message in response.json()["error"]
