"""deployment.json: the fastest *verified* artifact per batch size; serve RUN and runtime.load(RUN) use it.
Also the openvino format, checked with OpenVINO itself, and the bench's stop rule."""

import json
import shutil
import time

import numpy as np
import pytest

from kerakit import deployment, runs, runtime
from kerakit.bench import bench
from kerakit.errors import KerakitError
from kerakit.export import ExportReport, VerificationFailed, export
from kerakit.measure import StopRule, measure
from kerakit.serve import ServeOptions, resolve
from kerakit.serve.models import Model

OPENVINO = {"model.openvino", "model_bf16.openvino", "model_int8.openvino"}  # x86's OpenVINO files: f32, bf16, int8


@pytest.fixture(scope="module")
def x86_run(digits_run, tmp_path_factory):
    """The digits run exported for x86 (OpenVINO f32/bf16/int8, ONNX), ONNX under a tolerance nothing meets, benched."""
    path = tmp_path_factory.mktemp("x86") / "digits"
    shutil.copytree(digits_run.path, path, ignore=shutil.ignore_patterns("export", "bench", "deployment.json"))
    strict = path.parent / "strict.toml"  # first: its [verify] judges the onnx artifact x86 also names
    strict.write_text('[[artifacts]]\nformat = "onnx"\n[verify]\natol = 0\nrtol = 0\n')
    with pytest.raises(VerificationFailed) as failed:
        export(path, targets=[str(strict), "x86"], log=lambda m: None)
    report = failed.value.report
    result = bench([path], batches=[1, 8], threads=[1], runs_=40, warmup=2, budget_s=0.3, log=lambda m: None)
    return runs.Run(path), report, result


def test_deployment_only_ever_names_a_verified_artifact(x86_run):
    run, report, result = x86_run
    assert report.failed == ["onnx"]  # ONNX fp32 (the fastest here at batch 1) cannot meet atol=0
    written = json.loads(run.deployment.read_text())
    assert set(written["batches"]) == {"1", "8"}
    for choice in written["batches"].values():
        assert choice["artifact"] in OPENVINO
        assert all(b["artifact"] != "model.onnx" for b in choice["beat"])  # not even a contender
        # A faster figure beside the pick only where the measurement could not tell them apart (the simpler won).
        assert all(b["ratio"] >= 1 or not choice["decided"] for b in choice["beat"]) and choice["p50_ms"] > 0
    assert written["machine"]["cores"] == runtime.cores() and written["machine"]["cpu"]
    assert result["deployment"]["1"]["artifact"] == written["batches"]["1"]["artifact"]


def test_a_deployment_naming_an_unverified_artifact_is_refused(x86_run, tmp_path):
    run, _, _ = x86_run
    saved = run.deployment.read_text()
    try:
        tampered = json.loads(saved)
        tampered["batches"]["1"]["artifact"] = "model.onnx"
        run.deployment.write_text(json.dumps(tampered))
        with pytest.raises(KerakitError, match="'model.onnx', which is no longer a verified artifact"):
            runtime.load(run.path)
    finally:
        run.deployment.write_text(saved)


def test_a_tampered_artifact_is_no_longer_verified_for_deployment_or_the_report(x86_run, tmp_path):
    """The batch-1 choice's bytes change after bench: deployment, runtime.load(RUN) and the report's table all
    stop counting it as verified, with the one reason the export report gives (build's rerun: test_build.py)."""
    from kerakit.report import deployment_rows

    run = runs.Run(shutil.copytree(x86_run[0].path, tmp_path / "digits"))
    chosen = deployment.choose(run, 1)["artifact"]
    weights = run.export_dir / chosen / "model.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of one weight: same size, same name
    weights.write_bytes(bytes(data))

    report = ExportReport.read(run.export_dir)
    tampered = next(r.artifact for r in report.artifacts if r.filename == chosen)
    assert report.why_not_verified() == {"onnx": "onnx failed verification",
                                         tampered: f"{chosen} changed since it was verified"}
    assert chosen not in deployment.candidates(run) and len(deployment.candidates(run)) == len(OPENVINO) - 1
    with pytest.raises(KerakitError, match=f"names '{chosen}', which is no longer a verified artifact"):
        runtime.load(run.path)
    row = next(r for r in deployment_rows(run) if r["artifact"] == tampered)
    assert row["verdict"] == "failed" and row["reasons"] == [f"{chosen} changed since it was verified: export again"]


def test_runtime_load_of_a_run_opens_the_choice_for_the_batch_size_with_its_settings(x86_run):
    run, _, _ = x86_run
    for batch, asked in (("1", None), ("8", 8), ("8", 100)):
        choice = json.loads(run.deployment.read_text())["batches"][batch]
        with runtime.load(run.path, batch=asked) as p:
            assert p.path.name == choice["artifact"]
            threads = choice["options"]["threads"]
            if threads:
                assert int(p.compiled.get_property("INFERENCE_NUM_THREADS")) == threads


def test_serve_of_a_run_serves_its_deployment_choice(x86_run):
    run, _, _ = x86_run
    choice = deployment.choose(run, 1)
    entry, = resolve(run.path)
    assert entry.path == choice["path"] and entry.options == choice["options"] and entry.name == "digits_cnn"
    model = Model(entry, ServeOptions())
    try:
        assert model.format == "openvino" and model.predictor.path.name == choice["artifact"]
    finally:
        model.close()


def test_openvino_artifact_agrees_with_keras_when_loaded_by_openvino_itself(x86_run):
    import keras
    import openvino as ov

    run, report, _ = x86_run
    assert report.row("openvino")["verdict"] == "verified" and report.row("openvino-bf16")["verdict"] == "verified"
    x = np.random.default_rng(7).normal(0.5, 0.3, (16, 8, 8, 1)).astype(np.float32)  # inputs verify never saw
    want = keras.saving.load_model(run.model_path).predict(x, verbose=0)
    compiled = ov.Core().compile_model(str(run.export_dir / "model.openvino" / "model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x)[compiled.output("probabilities")]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_openvino_int8_is_verified_in_openvino_and_its_convolutions_and_matmuls_run_in_int8(x86_run):
    """NNCF's int8 IR, read and compiled by OpenVINO itself: FakeQuantize before every convolution and matrix
    multiplication, int8 weights, the CPU plugin running those ops on u8/i8 data, and Keras's answers."""
    import keras
    import openvino as ov
    from sklearn.datasets import load_digits

    run, report, _ = x86_run
    row = report.row("openvino-int8")
    assert row["verdict"] == "verified" and row["libraries"]["nncf"]
    core = ov.Core()
    model = core.read_model(str(run.export_dir / "model_int8.openvino" / "model.xml"))
    ops = model.get_ordered_ops()
    weighted = [op for op in ops if op.get_type_name() in ("Convolution", "MatMul")]
    assert len(weighted) == 4  # digits_cnn: 2 Conv2D, 2 Dense
    for op in weighted:  # activations through a FakeQuantize; weights stored int8 (Constant i8 -> Convert -> * scale)
        activations, weights = (op.input(i).get_source_output().get_node() for i in (0, 1))
        while activations.get_type_name() in ("Transpose", "Reshape", "MaxPool"):  # NNCF quantizes above these
            activations = activations.input(0).get_source_output().get_node()
        assert activations.get_type_name() == "FakeQuantize", op.get_friendly_name()
        stored = weights.input(0).get_source_output().get_node().input(0).get_source_output().get_node()
        assert (stored.get_type_name(), stored.get_output_element_type(0)) == ("Constant", ov.Type.i8)
    assert row["conversion"]["fake_quantize"] == sum(op.get_type_name() == "FakeQuantize" for op in ops)

    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ran = {(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
           for op in compiled.get_runtime_model().get_ops()}
    assert {("Convolution", "u8"), ("FullyConnected", "u8")} <= ran, ran  # oneDNN's int8 kernels, not f32

    images = (load_digits().images[-300:, :, :, None] / 16.0).astype(np.float32)
    want = keras.saving.load_model(run.model_path).predict(images, verbose=0).argmax(axis=1)
    got = compiled(images)[compiled.output("probabilities")].argmax(axis=1)
    assert (got == want).mean() >= 0.97


def test_bench_times_openvino_and_sweeps_its_settings(x86_run):
    _, _, result = x86_run
    rows = [r for r in result["rows"] if r["format"] == "openvino"]
    assert {(r["artifact"], r["batch"]) for r in rows} == {(a, b) for a in OPENVINO for b in (1, 8)}
    assert all(r["p50_ms"] > 0 and r["stopped"] in ("precise", "budget", "calls", "pruned") for r in rows)
    assert set(result["sweep"]["model.openvino"]["configs"]) == {"hint=latency,threads=auto", "hint=latency,threads=1",
                                                                  "hint=throughput,threads=auto",
                                                                  "hint=throughput,threads=1"}


def test_timing_stops_once_the_p50_is_known_and_prunes_what_cannot_win():
    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    timed = measure({"fast": sleeper(0.0005), "slow": sleeper(0.004)},
                    StopRule(precision=0.05, budget_s=2, max_calls=500, prune=True), warmup=1)
    assert timed["fast"].stopped == "precise" and timed["fast"].precision <= 0.05
    assert len(timed["fast"].samples_ns) < 500
    assert timed["slow"].stopped in ("precise", "pruned") and len(timed["slow"].samples_ns) <= 60
    budget = measure({"x": sleeper(0.002)}, StopRule(precision=1e-9, budget_s=0.1, max_calls=10**6), warmup=0)["x"]
    assert budget.stopped == "budget" and budget.spent_s < 0.2 and budget.precision is not None


def test_a_corrupt_deployment_file_is_named_with_what_to_do(x86_run):
    run, _, _ = x86_run
    saved = run.deployment.read_text()
    try:
        run.deployment.write_text("garbage")
        with pytest.raises(KerakitError, match=r"deployment.json is not valid JSON \(line 1\); rerun `kerakit bench RUN`"):
            resolve(run.path)
    finally:
        run.deployment.write_text(saved)


def test_openvino_bf16_asks_for_bf16_and_runs_it_where_the_cpu_has_it(x86_run):
    import openvino as ov

    run, _, _ = x86_run
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with runtime.load(run.export_dir / "model_bf16.openvino") as p, runtime.load(run.export_dir / "model.openvino") as f:
        assert (p.requested_precision, p.precision) == ("bf16", "bf16" if has_bf16 else "f32")
        assert (f.requested_precision, f.precision) == ("f32", "f32")


def test_serve_switches_to_the_choice_for_larger_batches(x86_run):
    run, _, _ = x86_run
    saved = run.deployment.read_text()
    try:
        choices = json.loads(saved)
        one = choices["batches"]["1"]
        other = "model_bf16.openvino" if one["artifact"] == "model.openvino" else "model.openvino"
        choices["batches"]["8"] = {**one, "artifact": other, "options": {"hint": "throughput", "threads": 1}}
        run.deployment.write_text(json.dumps(choices))
        entry, = resolve(run.path)
        model = Model(entry, ServeOptions())
        try:
            assert model.predictor_for(1).path.name == one["artifact"]
            assert model.predictor_for(7).path.name == one["artifact"]
            big = model.predictor_for(8)
            assert big.path.name == other and str(big.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
            x = np.random.default_rng(3).random((9, 8, 8, 1)).astype(np.float32)
            np.testing.assert_allclose(model.run({"image": x})["probabilities"],
                                       big.run({"image": x})["probabilities"], atol=1e-6)
        finally:
            model.close()
    finally:
        run.deployment.write_text(saved)
