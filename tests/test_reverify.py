"""Quantized files are judged again on a machine other than the one a run was benched on, from the rows their export
stored (verification_rows.npz: held-out inputs, labels, Keras's outputs), in their own runtime (no TensorFlow),
by the export's judgement, before a re-bench or the rule may pick one; a file that fails is no candidate there.
Also: a run never benched serves by the rule, and a run's choice carries its settings whole (no runtime.json
beneath it) in `kerakit serve` as in `runtime.load`."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kerakit import cpu, deployment, files, runs, runtime
from kerakit.export import rows
from kerakit.export.report import ExportReport
from kerakit.serve.models import Model, ServeOptions, resolve

QUANTIZED = {"model_int8.tflite", "model_fp16.tflite", "model_int8.onnx"}  # the edge target's (conftest)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test its own re-verification cache (the machine's own is ~/.cache/kerakit)."""
    monkeypatch.setenv("KERAKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def run(digits_run, digits_export, tmp_path):
    """The session's digits run with its export (server, edge, LiteRT fp32), never benched."""
    path = tmp_path / "digits"
    shutil.copytree(digits_run.path, path, ignore=shutil.ignore_patterns("export", "bench", "deployment.json"))
    shutil.copytree(digits_export[0], path / "export")
    return runs.Run(path)


def _benched_elsewhere(run: runs.Run) -> None:
    """A deployment.json measured on a machine with other ISA flags, its pick the verified ONNX fp32 file."""
    choice = {"artifact": "model.onnx", "format": "onnx", "setting": "threads=1", "options": {"threads": 1}}
    deployment.write(run, {1: dict(choice), 8: dict(choice)}, {}, cpu.cores())
    book = json.loads(run.deployment.read_text())
    book["machine"]["flags"] = [f for f in cpu.FLAGS if f not in cpu.flags()]
    run.deployment.write_text(json.dumps(book))


def _only(run: runs.Run, keep: set[str]) -> None:
    """Every other artifact of the export removed: no longer a candidate."""
    for path in run.export_dir.iterdir():
        if path.name in {r.filename for r in ExportReport.read(run.export_dir).artifacts} - keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _tamper(run: runs.Run, record_it: bool) -> None:
    """Keras's stored answers on the labelled rows made right on every row (one-hot of the labels): a quantized
    file's accuracy then falls short of Keras's by its own error rate, past the 1-point limit. `record_it`: the
    report's SHA-256 of the rows updated too, as if the export had stored these."""
    path = run.export_dir / rows.ROWS_FILE
    arrays, meta = rows.read(path)
    labels = arrays["eval/label"]
    arrays["eval/keras/probabilities"] = np.eye(10, dtype="float32")[labels]
    rows._write(path, arrays, meta)
    if record_it:
        report = json.loads((run.export_dir / "export_report.json").read_text())
        report["verification_rows"]["sha256"] = files.sha256(path)
        (run.export_dir / "export_report.json").write_text(json.dumps(report))


def test_export_stores_the_rows_its_quantized_files_were_judged_on_once_bounded_and_recorded(digits_export):
    out, report = digits_export
    record = report.verification_rows
    path = out / record["file"]
    assert record["file"] == rows.ROWS_FILE and files.sha256(path) == record["sha256"]
    assert ExportReport.read(out).verification_rows == record  # in export_report.json
    arrays, meta = rows.read(path)
    # Every labelled test row the export judged on (digits: well under the bound), their labels and Keras's outputs.
    assert record["labelled_rows"] == record["labelled_rows_judged"] == len(arrays["eval/label"])
    assert record["labelled_rows"] <= rows.MAX_LABELLED_ROWS and record["bytes"] <= rows.MAX_BYTES
    assert arrays["eval/in/image"].shape[0] == arrays["eval/keras/probabilities"].shape[0] == record["labelled_rows"]
    assert meta["metric"] == report.keras_metric["name"]
    # Keras's metric, recomputed from the stored outputs alone, is the one the export reported.
    assert rows.reference(path, record).metric == pytest.approx(report.keras_metric["value"])


def test_the_stored_rows_file_is_the_same_bytes_each_time(digits_export, tmp_path):
    out, report = digits_export
    arrays, meta = rows.read(out / rows.ROWS_FILE)
    again = rows._write(tmp_path / rows.ROWS_FILE, arrays, meta)
    assert files.sha256(again) == report.verification_rows["sha256"]


def test_on_another_machine_an_int8_file_is_reverified_without_tensorflow_and_serves(run, cache):
    _only(run, {"model_int8.tflite", "model_int8.onnx"})
    _benched_elsewhere(run)
    code = ("import json, sys\nimport numpy as np\nfrom kerakit import runtime\n"
            "with runtime.load(sys.argv[1]) as p:\n"
            "    out = p.predict({'image': np.zeros((2, 8, 8, 1), 'float32')})\n"
            "    print(json.dumps({'served': p.path.name, 'rows': len(out['probabilities']),\n"
            "                      'tensorflow': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(run.path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"served": "model_int8.tflite", "rows": 2, "tensorflow": False, "keras": False}
    line, = [l for l in done.stderr.splitlines() if "deployment.json" in l]
    assert "measured on another machine" in line and "re-verified here from the export's stored rows:" in line
    assert "model_int8.tflite (accuracy" in line and "model_int8.onnx (accuracy" in line
    assert "(cached)" not in line and len(list((cache / "reverified").glob("*.json"))) == 2


def test_a_second_load_on_the_same_machine_takes_the_judgement_from_its_cache(run, capsys, cache):
    _benched_elsewhere(run)
    with runtime.load(run.path):
        pass
    first = capsys.readouterr().err
    assert "re-verified here from the export's stored rows:" in first and "(cached)" not in first
    assert len(list((cache / "reverified").glob("*.json"))) == len(QUANTIZED)
    with runtime.load(run.path):
        pass
    second = capsys.readouterr().err
    assert "re-verified here from the export's stored rows (cached):" in second
    assert second.split("(cached):")[1] == first.split("stored rows:")[1]  # the same files and figures


def test_rows_that_no_longer_match_the_int8_answers_refuse_it_here_and_a_verified_float_file_serves(run, capsys):
    _only(run, {"model_int8.tflite", "model_int8.onnx", "model_fp16.tflite", "model.onnx", "model_fp32.tflite"})
    _benched_elsewhere(run)
    _tamper(run, record_it=True)
    table = deployment.plan(run, rebench=3)
    err = capsys.readouterr().err.splitlines()
    refused = [l for l in err if "refused on this machine" in l]
    assert len(refused) == len(QUANTIZED), err
    assert sorted(l.split(": refused")[0].rsplit("/", 1)[1] for l in refused) == sorted(QUANTIZED)
    for line in refused:  # its figure: accuracy past the limit against the (now perfect) stored Keras answers
        assert "accuracy dropped" in line and "points" in line and "allowed 1.00" in line, line
    written = json.loads(run.deployment.read_text())
    assert written["machine"]["flags"] == cpu.flags()
    named = {c["artifact"] for c in table.values()} | {o["artifact"] for c in table.values() for o in c["beat"]}
    assert named and not named & QUANTIZED  # the refused files were not even timed
    with runtime.load(run.path) as p:  # measured here now: the re-bench's verified float pick
        assert p.path.name in {"model.onnx", "model_fp32.tflite"}


def test_rows_changed_since_the_export_refuse_every_quantized_file_and_the_rule_serves_a_float_one(run, capsys):
    _only(run, {"model_int8.tflite", "model.onnx"})
    _benched_elsewhere(run)
    _tamper(run, record_it=False)
    with runtime.load(run.path) as p:
        assert p.path.name == "model.onnx"
    err = capsys.readouterr().err.splitlines()
    refused, = [l for l in err if "refused on this machine" in l]
    assert "model_int8.tflite" in refused and "changed since the export (SHA-256)" in refused


def test_with_every_file_refused_here_nothing_is_served_and_the_line_says_why(run, capsys):
    _only(run, {"model_int8.tflite"})
    _benched_elsewhere(run)
    _tamper(run, record_it=True)
    with pytest.raises(deployment.KerakitError, match=r"no verified artifact to deploy here \(refused on this "
                                                      r"machine: model_int8.tflite\)"):
        runtime.load(run.path)


def test_a_run_never_benched_serves_the_rules_pick_and_says_so(run, capsys):
    entry, = resolve(run.path)
    assert entry.path == str(run.export_dir / "model_fp32.tflite") and entry.format == "tflite"
    assert entry.options == {"threads": deployment.rule_threads(cpu.cores())}
    line, = capsys.readouterr().err.splitlines()
    assert "no deployment.json (never benched)" in line and "rule: model_fp32.tflite" in line
    with runtime.load(run.path) as p:  # runtime.load agrees
        assert p.path.name == "model_fp32.tflite"


def test_a_run_from_another_machine_is_served_without_its_runtime_json_beneath_the_rule(run):
    _only(run, {"model.onnx"})
    _benched_elsewhere(run)
    # What `kerakit bench` saved beside the file on the other machine: not this machine's settings.
    runtime.save_tuned_options(run.export_dir / "model.onnx", {"threads": 2, "optimization": "basic"}, {})
    import onnxruntime as ort

    entry, = resolve(run.path)
    model = Model(entry, ServeOptions())
    try:
        served = model.predictor.session.get_session_options()
    finally:
        model.close()
    with runtime.load(run.path) as p:
        loaded = p.session.get_session_options()
    for options in (served, loaded):
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # not "basic"
        assert options.intra_op_num_threads == deployment.rule_threads(cpu.cores())


def test_a_run_never_benched_with_rebench_measures_here_and_writes_its_deployment(run, capsys):
    table = deployment.plan(run, rebench=3)
    line, = capsys.readouterr().err.splitlines()
    assert "no deployment.json (never benched)" in line and "re-benched here in" in line
    written = json.loads(run.deployment.read_text())
    assert set(written["batches"]) == {"1"} and written["machine"]["flags"] == cpu.flags()
    assert table[1]["artifact"] in deployment.candidates(run) and table[1]["format"] != "savedmodel"
