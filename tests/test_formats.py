"""The format registry: each format's facts live in its own module, and a new format is one file."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import Server, run_cli
from kerakit import formats, runtime
from kerakit.errors import KerakitError

TOY = {"KERAKIT_FORMATS": "toy_format",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}


def test_the_registry_knows_every_shipped_format_and_its_files():
    assert [f.name for f in formats.all_formats()][:4] == ["onnx", "tflite", "keras", "savedmodel"]
    assert formats.artifact_names()["tflite-int8"] == ("tflite", "int8")
    assert formats.get("onnx").variant("int8").filename == "model_int8.onnx"
    assert formats.get("tflite").takes_threads and not formats.get("savedmodel").takes_threads
    assert formats.for_layout("triton").name == "onnx" and formats.for_layout("tfserving").name == "savedmodel"
    assert formats.repository_files()[:2] == ("model.onnx", "model.tflite")


def test_a_path_of_no_known_format_is_refused_naming_what_is_accepted(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(KerakitError, match=r"Unsupported model file .*model.pt.*\.onnx.*\.tflite.*\.keras"):
        formats.for_path(tmp_path / "model.pt")
    with pytest.raises(KerakitError, match="is not a model directory"):
        formats.for_path(tmp_path)
    with pytest.raises(KerakitError, match="Invalid format='caffe'"):
        formats.get("caffe")


def test_a_runtime_option_the_format_does_not_take_is_refused(digits_run):
    with pytest.raises(KerakitError, match=r"keras models take no option\(s\) threads"):
        runtime.load(digits_run.model_path, threads=2)


def test_a_format_module_named_in_the_environment_that_cannot_be_imported_is_one_line():
    result = run_cli("export", "x.keras", "--format", "onnx", env={"KERAKIT_FORMATS": "no_such_module"})
    assert result.returncode == 1
    assert "error: Cannot import format module 'no_such_module' named in $KERAKIT_FORMATS" in result.stderr


def _serve_one_request(model: Path, x: np.ndarray, log_dir: Path) -> np.ndarray:
    import tritonclient.http as httpclient

    server = Server(model, "--name", "toy", "--no-log", log_dir=log_dir, env=TOY)
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.get_model_metadata("toy")["platform"] == "tensorflow_savedmodel"
        tensor = httpclient.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("toy", [tensor]).as_numpy("probabilities")
    finally:
        server.stop()


@pytest.mark.slow
def test_a_format_in_one_new_file_flows_through_export_evaluate_bench_and_serve(digits_run, tmp_path):
    """tests/toy_format.py is the whole format; nothing else in kerakit names it."""
    out = tmp_path / "export"
    exported = run_cli("export", digits_run.path, "--format", "toy", "--out", out, env=TOY)
    assert exported.returncode == 0, exported.stderr
    row = json.loads((out / "export_report.json").read_text())["artifacts"][0]
    assert (row["artifact"], row["format"], row["verdict"]) == ("toy", "toy", "verified")
    assert row["max_abs_error"] <= 1e-5 and row["metric_change"] == 0

    evaluated = run_cli("evaluate", out / "model.tfsm", "--recipe", "digits_cnn", "--json", env=TOY)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["format"] == "toy"
    assert metrics["accuracy"] == pytest.approx(digits_run.metrics["accuracy"])

    benched = run_cli("bench", out / "model.tfsm", "--batch", "1", "--threads", "1", "--runs", "5",
                      "--warmup", "1", "--out", tmp_path / "bench", env=TOY)
    assert benched.returncode == 0, benched.stderr
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [(r["artifact"], r["format"], r["batch"]) for r in rows] == [("model.tfsm", "toy", 1)]

    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    served = _serve_one_request(out / "model.tfsm", x, tmp_path)
    with runtime.load(digits_run.model_path) as keras_model:
        expected = keras_model.predict(x)["probabilities"]
    np.testing.assert_allclose(served, expected, atol=1e-5)
