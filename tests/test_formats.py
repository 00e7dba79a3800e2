"""The format registry: each format's facts live in its own module, and a new format is one file
registered by an entry point (the `kerakit.formats` group), as any package registers one."""

import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from conftest import Server, run_cli
from kerakit import formats, runtime
from kerakit.errors import KerakitError

TESTS = Path(__file__).resolve().parent


def installed(site: Path, entry_points: str, package: str = "toy-format") -> dict:
    """A package's metadata as pip installs it (`PACKAGE-0.dist-info/` with METADATA and entry_points.txt) in
    `site`; the environment that puts it, and tests/ (where toy_format.py is), on a fresh interpreter's path."""
    info = site / f"{package.replace('-', '_')}-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(TESTS), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def toy(tmp_path):
    """The environment of a Python where tests/toy_format.py is installed as a package registering `toy`."""
    return installed(tmp_path / "site", "[kerakit.formats]\ntoy = toy_format:FORMAT\n")


def test_the_registry_knows_every_shipped_format_and_its_files():
    assert [f.name for f in formats.all_formats()] == ["onnx", "tflite", "keras", "savedmodel", "tflite-micro",
                                                       "openvino"]  # the preference order of a repository's files
    assert formats.artifact_names()["tflite-int8"] == ("tflite", "int8")
    assert formats.get("onnx").variant("int8").filename == "model_int8.onnx"
    assert formats.get("tflite").takes_threads and not formats.get("savedmodel").takes_threads
    assert formats.for_layout("triton").name == "onnx" and formats.for_layout("tfserving").name == "savedmodel"
    assert formats.repository_files()[:2] == ("model.onnx", "model.tflite")


def test_a_thread_count_goes_to_a_format_that_takes_one_and_is_refused_by_one_that_does_not():
    assert formats.get("onnx").thread_options(2) == {"threads": 2}
    assert formats.with_threads() == ["onnx", "tflite", "openvino"]
    for name in ("keras", "savedmodel", "tflite-micro"):
        with pytest.raises(KerakitError, match=rf"Invalid threads=2: {name} models take no thread count"):
            formats.get(name).thread_options(2)


def test_only_formats_whose_runtime_is_tensorflow_ask_the_cli_to_start_it():
    """An OpenVINO IR and a TFLite Micro bundle are directories, but neither runs on TensorFlow."""
    assert {f.name for f in formats.all_formats() if f.needs_tensorflow} == {"keras", "savedmodel"}


def test_each_format_names_its_libraries_and_reads_their_installed_versions():
    for fmt in formats.all_formats():
        assert fmt.libraries, fmt.name
        assert fmt.library_versions() == {d: metadata.version(d) for d in fmt.libraries}, fmt.name
    assert "openvino" in formats.get("openvino").libraries and "tflite-micro" in formats.get("tflite-micro").libraries


def test_every_exported_artifact_records_its_format_libraries_at_export_time(digits_export):
    _, report = digits_export
    for row in report.artifacts:
        assert row["libraries"] == formats.get(row["format"]).library_versions(), row["artifact"]
    assert report.row("onnx")["libraries"]["onnxruntime"] == metadata.version("onnxruntime")


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


def test_a_format_registered_by_entry_point_is_offered_by_export(toy):
    """The --format help is the registry's: a package's format appears in it with nothing else edited."""
    listed = run_cli("export", "--help", env=toy)
    assert listed.returncode == 0, listed.stderr
    assert "onnx-int8, " in listed.stdout and ", toy." in " ".join(listed.stdout.split())
    assert ", toy" not in " ".join(run_cli("export", "--help").stdout.split())


@pytest.mark.parametrize("entry_points, error", [
    ("[kerakit.formats]\nonnx = toy_format:FORMAT\n",
     "Two formats are named 'onnx': 'kerakit.formats.onnx:FORMAT' (entry point 'onnx' of kerakit) and "
     "'toy_format:FORMAT' (entry point 'onnx' of toy-format). A format name is registered once"),
    ("[kerakit.formats]\ntoy = no_such_module:FORMAT\n",
     "Cannot load format 'no_such_module:FORMAT' (entry point 'toy' of toy-format): ModuleNotFoundError"),
    ("[kerakit.formats]\ntoy2 = toy_format:FORMAT\n",
     "must point at a Format named 'toy2'"),
])
def test_a_format_entry_point_that_cannot_register_is_one_line(tmp_path, entry_points, error):
    result = run_cli("export", "--help", env=installed(tmp_path / "site", entry_points))
    assert result.returncode == 1 and result.stderr.startswith("error: ") and error in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_one_package_found_twice_on_the_path_registers_its_formats_once(tmp_path):
    """A stale copy of a package's metadata (an old egg-info in a checkout) is the same registration."""
    env = installed(tmp_path / "one", "[kerakit.formats]\ntoy = toy_format:FORMAT\n")
    again = installed(tmp_path / "two", "[kerakit.formats]\ntoy = toy_format:FORMAT\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "two"), env["PYTHONPATH"]])
    assert again["PYTHONPATH"].split(os.pathsep)[0] in env["PYTHONPATH"]
    result = run_cli("export", "--help", env=env)
    assert result.returncode == 0 and ", toy." in " ".join(result.stdout.split()), result.stderr


def _serve_one_request(model: Path, x: np.ndarray, log_dir: Path, env: dict) -> np.ndarray:
    import tritonclient.http as httpclient

    server = Server(model, "--name", "toy", "--no-log", log_dir=log_dir, env=env)
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.get_model_metadata("toy")["platform"] == "tensorflow_savedmodel"
        tensor = httpclient.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("toy", [tensor]).as_numpy("probabilities")
    finally:
        server.stop()


@pytest.mark.slow
def test_a_format_in_one_new_file_flows_through_export_evaluate_bench_and_serve(digits_run, tmp_path, toy):
    """tests/toy_format.py is the whole format, registered by its package's entry point; nothing else in
    kerakit names it."""
    out = tmp_path / "export"
    exported = run_cli("export", digits_run.path, "--format", "toy", "--out", out, env=toy)
    assert exported.returncode == 0, exported.stderr
    row = json.loads((out / "export_report.json").read_text())["artifacts"][0]
    assert (row["artifact"], row["format"], row["verdict"]) == ("toy", "toy", "verified")
    assert row["max_abs_error"] <= 1e-5 and row["metric_change"] == 0
    assert row["libraries"] == {"tensorflow": metadata.version("tensorflow"), "keras": metadata.version("keras")}

    evaluated = run_cli("evaluate", out / "model.tfsm", "--recipe", "digits_cnn", "--json", env=toy)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["format"] == "toy"
    assert metrics["accuracy"] == pytest.approx(digits_run.metrics["accuracy"])

    benched = run_cli("bench", out / "model.tfsm", "--batch", "1", "--threads", "1", "--runs", "5",
                      "--warmup", "1", "--out", tmp_path / "bench", env=toy)
    assert benched.returncode == 0, benched.stderr
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [(r["artifact"], r["format"], r["batch"]) for r in rows] == [("model.tfsm", "toy", 1)]

    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    served = _serve_one_request(out / "model.tfsm", x, tmp_path, toy)
    with runtime.load(digits_run.model_path) as keras_model:
        expected = keras_model.predict(x)["probabilities"]
    np.testing.assert_allclose(served, expected, atol=1e-5)
