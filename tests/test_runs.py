"""The run directory: every path a step reads or writes comes from `Run` (or `Search`),
and one rule (`is_run`) says what counts as a finished run. Fast: no TensorFlow, no training."""

import json
from pathlib import Path

import pytest

from kerakit import files, runs
from kerakit.errors import KerakitError
from kerakit.runs import Run, Search, find_run, is_run


def make_run(path: Path, finished: bool = True) -> Path:
    """A directory laid out the way `kerakit train` leaves it (files empty but for JSON)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"recipe": "digits_cnn", "config": {}}))
    (path / "model.keras").write_bytes(b"")
    if finished:
        (path / "manifest.json").write_text(json.dumps({"artifacts": {}}))
    return path


def test_run_paths_cover_the_whole_directory(tmp_path):
    run = Run(tmp_path)
    expected = {
        "config_path": "config.json", "manifest_path": "manifest.json", "metrics_path": "metrics.json",
        "history_path": "history.csv", "recipe_path": "recipe.py", "model_path": "model.keras",
        "backup_dir": "backup", "checkpoint_dir": "checkpoints", "logs_dir": "logs",
        "export_dir": "export", "export_report": "export/export_report.json",
        "bench_dir": "bench", "bench_result": "bench/bench.json", "bench_chart": "bench/bench.png",
        "report_dir": "report", "data_profile": "data_profile.json", "request_log": "requests.jsonl",
        "build_state": "build.json", "search_dir": "search", "deployment": "deployment.json", "cv_dir": "cv",
        "tracking": "mlflow.json",
    }
    assert {name: getattr(run, name) for name in expected} == {k: tmp_path / v for k, v in expected.items()}
    assert set(runs.layout(Run)) == set(expected)  # the table is the whole directory


def test_every_file_name_is_declared_once_in_the_layout_tables():
    """One line of a layout (or, for a step's own directory, one constant) names a file; the module constants
    are read from the tables, so renaming a file is a one-line change."""
    source = Path(runs.__file__).read_text()
    names = {entry.name for layout in (Run, Search, runs.CrossValidation) for entry in runs.layout(layout).values()}
    assert {name: source.count(f'"{name}"') for name in names} == {name: 1 for name in names}
    assert (runs.MODEL_FILE, runs.TUNER_DIR, runs.CV_FILE) == (Run.model_path.name, Search.tuner_dir.name,
                                                                runs.CrossValidation.cv_file.name)


def test_run_accepts_a_string_path():
    assert Run("runs/demo").model_path == Path("runs/demo/model.keras")


def test_file_names_used_outside_a_run_are_module_constants():
    assert (runs.EXPORT_REPORT_FILE, runs.BENCH_RESULT_FILE, runs.BENCH_CHART_FILE, runs.RUNTIME_SETTINGS_FILE,
            runs.LABELS_FILE) == ("export_report.json", "bench.json", "bench.png", "runtime.json", "labels.txt")
    assert (runs.MODEL_FILE, runs.CONFIG_FILE, runs.MANIFEST_FILE, runs.METRICS_FILE, runs.HISTORY_FILE,
            runs.RECIPE_FILE) == ("model.keras", "config.json", "manifest.json", "metrics.json", "history.csv",
                                  "recipe.py")


def test_search_paths(tmp_path):
    search = Search(str(tmp_path))
    assert search.path == tmp_path
    assert search.tuner_dir == tmp_path / "tuner"
    assert search.search_file == tmp_path / "search.json"
    assert (search.trials_json, search.trials_csv, search.trials_png) == (
        tmp_path / "trials.json", tmp_path / "trials.csv", tmp_path / "trials.png")
    assert search.best_hparams == tmp_path / "best_hparams.json"
    assert search.best_dir == tmp_path / "best"
    assert search.distributed_dir == tmp_path / "distributed"


def test_a_builds_search_lives_in_the_run():
    assert Search(Run("runs/demo").search_dir).best_hparams == Path("runs/demo/search/best_hparams.json")


def test_is_run_needs_config_and_manifest(tmp_path):
    assert is_run(make_run(tmp_path / "finished"))
    assert not is_run(make_run(tmp_path / "unfinished", finished=False)), "training not done: no manifest yet"
    export = tmp_path / "finished" / "export"
    export.mkdir()
    (export / "manifest.json").write_text("{}")
    assert not is_run(export), "an export directory has a manifest of its own, but no config"
    assert not is_run(tmp_path / "missing")
    assert not is_run(tmp_path / "finished" / "model.keras")


def test_find_run_walks_up_from_an_artifact(tmp_path):
    run_dir = make_run(tmp_path / "run")
    artifact = run_dir / "export" / "model.onnx"
    artifact.parent.mkdir()
    artifact.write_bytes(b"")
    (artifact.parent / "manifest.json").write_text("{}")  # the export's own manifest must not stop the walk
    assert find_run(artifact) == Run(run_dir.resolve())
    assert find_run(run_dir / "model.keras") == Run(run_dir.resolve())
    assert find_run(run_dir) == Run(run_dir.resolve())


def test_find_run_ignores_an_unfinished_run_and_loose_files(tmp_path):
    unfinished = make_run(tmp_path / "run", finished=False)
    assert find_run(unfinished / "model.keras") is None
    loose = tmp_path / "model.keras"
    loose.write_bytes(b"")
    assert find_run(loose) is None


def test_open_a_finished_run(tmp_path):
    run = Run.open(make_run(tmp_path / "run"))
    assert run.is_finished and run.config["recipe"] == "digits_cnn"


def test_open_says_why_a_directory_is_not_a_run(tmp_path):
    with pytest.raises(KerakitError, match="does not exist"):
        Run.open(tmp_path / "missing")
    with pytest.raises(KerakitError, match=r"not a finished kerakit run \(no manifest.json\).*same --out"):
        Run.open(make_run(tmp_path / "unfinished", finished=False))
    with pytest.raises(KerakitError, match=r"not a kerakit run \(expected config.json and manifest.json"):
        Run.open(tmp_path)


def test_an_unfinished_run_is_not_finished(tmp_path):
    assert not Run(make_run(tmp_path / "run", finished=False)).is_finished


def test_verify_artifacts_rehashes_what_the_manifest_lists(tmp_path):
    run_dir = make_run(tmp_path / "run")
    (run_dir / "model.keras").write_bytes(b"weights")
    (run_dir / "manifest.json").write_text(json.dumps({"artifacts": {"model.keras": files.sha256(run_dir / "model.keras")}}))
    run = Run(run_dir)
    assert run.verify_artifacts() == {"model.keras": True}
    (run_dir / "model.keras").write_bytes(b"tampered")
    assert run.verify_artifacts() == {"model.keras": False}


def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"accuracy": 0.9})
    with pytest.raises(TypeError):
        files.write_json(target, {"accuracy": object()})
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
