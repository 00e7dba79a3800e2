"""`kerakit bench` and `kerakit evaluate` on every format, through the runtime API."""

import json
import shutil

import numpy as np
import pytest

import kerakit
from conftest import run_cli
from kerakit import runtime
from kerakit.bench import bench, expand
from kerakit.export import export


@pytest.fixture(scope="module")
def bench_result(digits_export, tmp_path_factory):
    out, _ = digits_export
    artifacts = tmp_path_factory.mktemp("artifacts")
    for name in ("model.onnx", "model_int8.tflite"):
        shutil.copyfile(out / name, artifacts / name)
    progress = []
    result = bench([artifacts / "model.onnx", artifacts / "model_int8.tflite"], batches=[1, 4], threads=[1],
                   runs_=10, warmup=2, out=artifacts / "bench", log=lambda m: None,
                   progress=lambda done, total: progress.append((done, total)))
    result["progress_calls"] = progress
    return artifacts, result


def test_bench_reports_progress_after_every_round(bench_result):
    assert bench_result[1]["progress_calls"] == [(1, 2), (2, 2)]  # 2 batch sizes x 1 thread setting


def test_bench_reports_latency_percentiles_and_throughput_per_artifact_and_batch(bench_result):
    artifacts, result = bench_result
    rows = {(r["artifact"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(a, b) for a in ("model.onnx", "model_int8.tflite") for b in (1, 4)}
    for (_, batch), r in rows.items():
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["calls"] == 10
        assert r["throughput_per_s"] == pytest.approx(batch / (r["p50_ms"] / 1e3), rel=1e-3)
    assert result["peak_rss_mb"] > 0 and set(result["load_rss_mb"]) == {"model.onnx", "model_int8.tflite"}
    assert "random data" in result["inputs_from"]  # copied out of their run: no test split to use
    assert json.loads((artifacts / "bench" / "bench.json").read_text())["rows"] == result["rows"]
    assert (artifacts / "bench" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_settings_sweep_saves_the_best_as_the_files_default(bench_result):
    artifacts, result = bench_result
    sweep = result["sweep"]["model.onnx"]
    assert set(sweep["configs"]) == {f"opt={o},threads={t}" for o in ("disable", "basic", "extended", "all") for t in ("auto", 1)}
    assert sweep["best"] in sweep["configs"]
    assert runtime.tuned_options(artifacts / "model.onnx") == sweep["best_options"]
    with runtime.load(artifacts / "model.onnx") as predictor:
        assert predictor.session.get_session_options().intra_op_num_threads == sweep["best_options"]["threads"]


def test_a_run_directory_means_all_of_its_formats(digits_run):
    export(digits_run.path, formats=["onnx", "tflite-int8"], log=lambda m: None)
    found = {path.name: fmt.name for path, fmt in expand([digits_run.path])}
    assert next(iter(found)) == "model.keras" and {"model.onnx", "model_int8.tflite"} <= set(found)
    assert (found["model.keras"], found["model.onnx"], found["model_int8.tflite"]) == ("keras", "onnx", "tflite")


def test_bench_of_a_run_uses_its_test_split(digits_run, tmp_path):
    export(digits_run.path, formats=["onnx"], log=lambda m: None)
    result = bench([digits_run.path / "export" / "model.onnx"], batches=[2], threads=[1], runs_=5, warmup=1,
                   sweep=False, out=tmp_path, log=lambda m: None)
    assert result["inputs_from"].startswith("test split of digits_cnn")


def test_bench_rejects_bad_batch_without_tensorflow():
    result = run_cli("bench", "x.onnx", "--batch", "0,8")
    assert result.returncode == 2 and "expected comma-separated positive integers" in result.stderr


@pytest.mark.parametrize("name", ["savedmodel", "model.onnx", "model_fp32.tflite", "model_int8.tflite", "model_int8.onnx"])
def test_evaluate_works_on_every_format(name, digits_export, digits_run):
    out, report = digits_export
    metrics = kerakit.evaluate(out / name, recipe="digits_cnn")
    assert metrics["format"] == runtime.detect_format(out / name)
    assert metrics["examples"] == 360
    assert abs(metrics["accuracy"] - digits_run.metrics["accuracy"]) <= 0.01
    assert np.array(metrics["confusion_matrix"]).sum() == 360


def test_evaluate_an_artifact_inside_a_run_needs_no_recipe(digits_run):
    export(digits_run.path, formats=["tflite-int8"], log=lambda m: None)
    metrics = kerakit.evaluate(digits_run.path / "export" / "model_int8.tflite")
    assert metrics["format"] == "tflite" and abs(metrics["accuracy"] - digits_run.metrics["accuracy"]) <= 0.01
