"""`--track`: runs, nested runs, per-epoch metrics, artifacts and registered versions in a real MLflow.

A real `mlflow server` (SQLite backend store, its own artifact store) on 127.0.0.1, started once for the
module; everything is read back through `MlflowClient`, as a team's dashboard would. Needs the `track` extra.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytest.importorskip("mlflow", reason="the 'track' extra (pip install -e '.[track]'; make test installs it)")

import kerakit  # noqa: E402
from kerakit import runs, tracking  # noqa: E402
from conftest import KERAKIT, run_cli  # noqa: E402

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a throwaway SQLite store; its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:  # not listening yet, or busy starting
            pass
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    else:
        raise AssertionError("mlflow server did not answer /health in 120 s")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker, which this fixture started
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # uvicorn's graceful shutdown takes 20 s; its store is thrown away
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    log.close()


@pytest.fixture
def tracked(mlflow_server, monkeypatch):
    """MLFLOW_TRACKING_URI set to the test server; its client."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return MlflowClient(tracking_uri=mlflow_server)


def _record(path: Path) -> dict:
    return json.loads((path / "mlflow.json").read_text())


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def test_a_tracked_training_is_one_mlflow_run_with_its_config_epochs_tags_and_files(tracked, tmp_path):
    run = kerakit.train("digits_cnn", tmp_path / "run", epochs=2, patience=100, verbose=0, track=True)
    run_id = _record(run.path)["runs"]["train"]
    logged = tracked.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert tracked.get_experiment(logged.info.experiment_id).name == "digits_cnn"
    params = logged.data.params
    assert (params["epochs"], params["batch_size"], params["learning_rate"], params["filters"]) == (
        "2", "64", "0.003", "32")  # the resolved config and the hyperparameters the model was built with
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert _steps(tracked, run_id, key) == [0, 1], key  # one value per epoch, each at its epoch
    history = [float(row.split(",")[1]) for row in run.history_path.read_text().splitlines()[1:]]
    assert [m.value for m in sorted(tracked.get_metric_history(run_id, "accuracy"), key=lambda m: m.step)] == \
        pytest.approx(history)
    assert logged.data.metrics["test_accuracy"] == pytest.approx(run.metrics["accuracy"])
    manifest, tags = run.manifest, logged.data.tags
    assert tags["kerakit.recipe"] == "digits_cnn"
    assert (tags["kerakit.data.dataset"], tags["kerakit.data.version"]) == ("kerakit_digits", "1.0.0")
    assert len(tags["kerakit.data.sha256"]) == 64
    assert tags["mlflow.source.git.commit"] == manifest["code"]["git_commit"]
    assert tags["kerakit.version"] == manifest["versions"]["kerakit"]
    assert {"config.json", "manifest.json", "metrics.json", "history.csv", "recipe.py", "model.keras"} <= \
        _artifacts(tracked, run_id)

    # The same finished run, tracked again: the same MLflow run, nothing logged twice.
    again = kerakit.train("digits_cnn", run.path, epochs=2, patience=100, verbose=0, track=True)
    assert _record(again.path)["runs"]["train"] == run_id
    assert _steps(tracked, run_id, "loss") == [0, 1]


def test_a_server_that_is_down_costs_training_one_line_and_track_sends_it_later(mlflow_server, monkeypatch,
                                                                                tmp_path):
    from mlflow import MlflowClient

    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    lines = []
    start = time.monotonic()
    run = kerakit.train("digits_cnn", tmp_path / "run", epochs=1, verbose=0, track=True, log=lines.append)
    seconds = time.monotonic() - start
    said = [line for line in lines if "MLflow" in line]
    assert len(said) == 1 and f"MLflow at {down} is not reachable" in said[0], lines
    assert f"kerakit track {run.path}" in said[0]
    assert run.is_finished and not (run.path / "mlflow.json").exists()
    assert seconds < 120, seconds  # not MLflow's minutes of retries

    # Once the server is up, `kerakit track RUN` sends what was missed.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run_id = tracking.track_run(run.path, log=lines.append)
    logged = MlflowClient(tracking_uri=mlflow_server).get_run(run_id)
    assert logged.data.params["epochs"] == "1" and "test_accuracy" in logged.data.metrics
    assert _steps(MlflowClient(tracking_uri=mlflow_server), run_id, "loss") == [0]
    assert _record(run.path)["runs"]["train"] == run_id


def test_without_a_tracking_uri_the_run_goes_to_mlflows_local_default_store(monkeypatch, tmp_path):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run = kerakit.train("digits_cnn", tmp_path / "run", epochs=1, verbose=0, track=True)
    record = _record(run.path)
    assert record["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow 3.7+'s default, in the cwd
    logged = MlflowClient(tracking_uri=record["tracking_uri"]).get_run(record["runs"]["train"])
    assert logged.info.status == "FINISHED" and "test_accuracy" in logged.data.metrics
    assert "model.keras" in _artifacts(MlflowClient(tracking_uri=record["tracking_uri"]), logged.info.run_id)


def test_a_recipe_default_turns_tracking_on_and_a_bad_value_is_one_line():
    assert tracking.wanted(None, {"tracking": "mlflow"}) and not tracking.wanted(None, {})
    assert not tracking.wanted(False, {"tracking": "mlflow"}) and tracking.wanted(True, {"tracking": "none"})
    with pytest.raises(kerakit.KerakitError, match=r"Invalid tracking='wandb'. Expected one of: mlflow, none"):
        tracking.wanted(None, {"tracking": "wandb"})


@pytest.mark.slow
def test_a_killed_training_resumes_the_same_mlflow_run(tracked, mlflow_server, tmp_path):
    out = tmp_path / "run"
    args = ["train", "digits_cnn", "epochs=4", "patience=100", "--out", out, "--track"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*KERAKIT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.monotonic() + 300
    while not ((out / "backup" / "training_metadata.json").exists() and (out / "mlflow.json").exists()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no epoch finished in 300 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # the training this test started, after its first epoch
    proc.wait(30)
    run_id = _record(out)["runs"]["train"]
    assert tracked.get_run(run_id).info.status == "RUNNING"  # killed: nobody ended it

    r = run_cli(*args, env={"MLFLOW_TRACKING_URI": mlflow_server}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Resuming digits_cnn from epoch" in r.stdout
    assert _record(out)["runs"]["train"] == run_id
    assert tracked.get_run(run_id).info.status == "FINISHED"
    assert _steps(tracked, run_id, "loss") == [0, 1, 2, 3]  # each epoch once: none lost, none twice
    same_dir = tracked.search_runs([tracked.get_run(run_id).info.experiment_id],
                                   f"tags.`kerakit.run_dir` = '{out.resolve()}'")
    assert [r.info.run_id for r in same_dir] == [run_id]


@pytest.fixture(scope="module")
def built(mlflow_server, tmp_path_factory):
    """`build --register digits` of two targets, tracked in the test server: a SavedModel that verifies, and an
    ONNX file held to atol 0, which no float conversion meets. Its run directory and the lines it said."""
    from kerakit.build import BuildFailed, build

    root = tmp_path_factory.mktemp("built")
    (root / "loose.toml").write_text('[[artifacts]]\nformat = "savedmodel"\n')
    (root / "strict.toml").write_text('[[artifacts]]\nformat = "onnx"\n[verify]\natol = 0\nrtol = 0\n')
    out, lines = root / "digits", []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        with pytest.raises(BuildFailed):
            build("digits_cnn", [str(root / "loose.toml"), str(root / "strict.toml")], out, bench_runs=5,
                  epochs=1, register="digits", log=lines.append)
    return out, lines


@pytest.mark.slow
def test_build_is_a_parent_run_and_registers_each_verified_artifact_never_a_failed_one(built, tracked, tmp_path):
    out, lines = built
    record = _record(out)["runs"]
    parent, child = tracked.get_run(record["build"]), tracked.get_run(record["train"])
    assert parent.info.status == "FAILED"  # as the build did: an artifact failed
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    assert _steps(tracked, child.info.run_id, "loss") == [0]
    tags, metrics = parent.data.tags, parent.data.metrics
    assert (tags["export.savedmodel.verdict"], tags["export.onnx.verdict"]) == ("verified", "failed")
    assert metrics["export.onnx.max_abs_error"] > 0 and "export.savedmodel.metric" in metrics
    assert {"step.train.seconds", "step.export.seconds", "step.bench.seconds"} <= set(metrics)
    deployment = json.loads((out / "deployment.json").read_text())["batches"]
    assert tags["deployment.batch_1"].startswith(deployment["1"]["artifact"])
    assert metrics["deployment.batch_1.p50_ms"] == pytest.approx(deployment["1"]["p50_ms"])
    assert {"deployment.json", "report", "export", "models", "bench.json"} <= _artifacts(tracked, parent.info.run_id)
    assert {"index.html", "model_card.md"} <= _artifacts(tracked, parent.info.run_id, "report")
    assert _artifacts(tracked, parent.info.run_id, "models") == {"savedmodel"}  # the verified one only

    versions = tracked.search_model_versions("name = 'digits'")
    assert [v.tags["kerakit.artifact"] for v in versions] == ["savedmodel"]  # never the failed onnx
    version = versions[0]
    assert version.run_id == parent.info.run_id and version.tags["kerakit.verdict"] == "verified"
    assert version.tags["kerakit.deployment_batch_sizes"] == "1,32"
    assert float(version.tags["kerakit.metric"]) == pytest.approx(
        json.loads((out / "export" / "export_report.json").read_text())["artifacts"][0]["metric"])
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    model = Model.load(download_artifacts(f"{version.source}/MLmodel", dst_path=str(tmp_path / "dl")))
    inputs, outputs = model.signature.inputs.to_dict(), model.signature.outputs.to_dict()
    assert [(i["name"], i["tensor-spec"]["dtype"], list(i["tensor-spec"]["shape"])) for i in inputs] == [
        ("image", "float32", [-1, 8, 8, 1])]
    assert [(o["name"], list(o["tensor-spec"]["shape"])) for o in outputs] == [("probabilities", [-1, 10])]
    assert any(line == "Registered savedmodel as digits version 1." for line in lines)


def _mlflow_ui():
    """docs/mlflow_ui.py, the script that took README's picture of the MLflow UI."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlflow_ui", Path(__file__).parent.parent / "docs" / "mlflow_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_build_with_its_training_and_registered_model_in_chromium(built, tmp_path):
    """What README's picture shows, seen by a real browser: the MLflow server's own UI, offline."""
    ui = _mlflow_ui()
    out, _ = built
    build = ui.build_run(out)
    assert (build["run_name"], build["child_name"], build["registered"]) == ("digits build", "digits", "digits")
    shown = ui.screenshot(build, tmp_path / "mlflow-ui.png")
    assert shown["heading"] == "digits build" and shown["child"] == "digits"
    assert shown["registered"].split() == ["digits", "v1"]  # the one verified artifact; never the failed onnx
    assert {"step.train.seconds", "export.onnx.max_abs_error", "deployment.batch_1.p50_ms"} <= set(shown["metrics"])
    assert shown["elsewhere"] == []  # the UI's scripts and styles all come from the mlflow server itself
    shot = (tmp_path / "mlflow-ui.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000


@pytest.mark.slow
def test_a_build_that_missed_the_server_is_sent_whole_by_kerakit_track(mlflow_server, monkeypatch, tmp_path):
    """Down during the build: one line; once up, `kerakit track RUN` sends the build's run, its training nested,
    the steps' figures and the registered version the build asked for; a second time sends nothing twice."""
    from mlflow import MlflowClient

    from kerakit.build import build

    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    (tmp_path / "server.toml").write_text('[[artifacts]]\nformat = "savedmodel"\n')
    out, lines = tmp_path / "late", []
    build("digits_cnn", [str(tmp_path / "server.toml")], out, bench_runs=5, epochs=1, register="late",
          log=lines.append)
    said = [line for line in lines if "MLflow" in line]
    assert len(said) == 1 and f"MLflow at {down} is not reachable" in said[0], said
    assert f"`kerakit track {out}` sends it" in said[0]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run_id = tracking.track_run(out, log=lines.append)
    client, record = MlflowClient(tracking_uri=mlflow_server), _record(out)
    parent, child = client.get_run(run_id), client.get_run(record["runs"]["train"])
    assert record["runs"]["build"] == run_id and parent.info.run_name == "late build"
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == run_id and _steps(client, child.info.run_id, "loss") == [0]
    tags, metrics, steps = parent.data.tags, parent.data.metrics, record["build_done"]["steps"]
    assert tags["step.export"] == steps["export"]["status"] == "1 of 1 artifacts verified"
    assert metrics["step.train.seconds"] == pytest.approx(steps["train"]["seconds"])
    assert tags["export.savedmodel.verdict"] == "verified" and "export.savedmodel.max_abs_error" in metrics
    deployment = json.loads((out / "deployment.json").read_text())["batches"]
    assert metrics["deployment.batch_32.p50_ms"] == pytest.approx(deployment["32"]["p50_ms"])
    assert _artifacts(client, run_id, "models") == {"savedmodel"}
    versions = client.search_model_versions("name = 'late'")
    assert [(v.tags["kerakit.artifact"], v.run_id) for v in versions] == [("savedmodel", run_id)]
    assert "Registered savedmodel as late version 1." in lines

    assert tracking.track_run(out, log=lines.append) == run_id  # again: the same runs, nothing twice
    assert len(client.search_model_versions("name = 'late'")) == 1 and _steps(client, child.info.run_id, "loss") == [0]
    assert len(_children(client, parent)) == 1


def _children(client, parent) -> list:
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def test_a_search_is_a_parent_run_with_each_trial_and_the_best_nested(tracked, tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path / "search", max_trials=2, epochs=2, verbose=0,
                          log=lambda m: None, track=True)
    search = tracked.get_run(_record(result.path)["runs"]["search"])
    assert search.info.status == "FINISHED" and search.data.params["tuner"] == "random"
    best_score = max(t["score"] for t in result.trials)
    assert search.data.metrics["best_val_accuracy"] == pytest.approx(best_score)
    assert json.loads(search.data.tags["kerakit.best_hparams"]) == result.best_hparams
    assert {"trials.csv", "trials.json", "best_hparams.json"} <= _artifacts(tracked, search.info.run_id)

    children = _children(tracked, search)
    trials = {r.data.tags["kerakit.trial"]: r for r in children if "kerakit.trial" in r.data.tags}
    assert sorted(trials) == sorted(t["trial"] for t in result.trials)
    for table_row in result.trials:
        trial = trials[table_row["trial"]]
        assert trial.info.status == "FINISHED" and trial.data.metrics["score"] == pytest.approx(table_row["score"])
        assert trial.data.params["units"] == str(table_row["units"])  # the trial's hyperparameters
        assert _steps(tracked, trial.info.run_id, "val_accuracy") == list(range(table_row["epochs"]))
    best = [r for r in children if r.data.tags.get("kerakit.run_dir") == str((result.path / "best").resolve())]
    assert len(best) == 1 and best[0].data.params["units"] == str(result.best_hparams["units"])


def test_cross_validation_is_a_parent_run_with_one_nested_run_per_fold(tracked, tmp_path):
    summary = kerakit.cross_validate("breast_cancer_mlp", tmp_path / "cv", folds=2, epochs=2, verbose=0,
                                     log=lambda m: None, track=True)
    parent = tracked.get_run(_record(tmp_path / "cv")["runs"]["cv"])
    assert parent.info.status == "FINISHED" and parent.data.params["folds"] == "2"
    assert parent.data.metrics["held_out_accuracy_mean"] == pytest.approx(summary["mean"])
    assert parent.data.metrics["held_out_accuracy_std"] == pytest.approx(summary["std"])
    assert [m.value for m in sorted(tracked.get_metric_history(parent.info.run_id, "fold_held_out_accuracy"),
                                    key=lambda m: m.step)] == pytest.approx([r["held_out_accuracy"] for r in summary["rows"]])
    folds = sorted(_children(tracked, parent), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in folds] == ["fold-1", "fold-2"]
    for fold, row in zip(folds, summary["rows"]):
        assert fold.data.metrics["held_out_accuracy"] == pytest.approx(row["held_out_accuracy"])
        assert _steps(tracked, fold.info.run_id, "loss") == [0, 1]
    assert {"cv.json", "folds.csv"} <= _artifacts(tracked, parent.info.run_id)


@pytest.mark.slow
def test_a_distributed_search_logs_each_trial_once_nested_in_the_chiefs_run(tracked, tmp_path):
    """--workers 2: the chief's search run, and each trial, whichever worker process ran it, nested in it once."""
    started_ms = int(time.time() * 1000)
    result = kerakit.tune("breast_cancer_mlp", tmp_path / "search", max_trials=3, epochs=1, workers=2, retrain=False,
                          log=lambda m: None, track=True)
    assert len(result.trials) == 3 and all(t["status"] == "COMPLETED" for t in result.trials)
    search = tracked.get_run(_record(result.path)["runs"]["search"])
    assert search.info.status == "FINISHED" and search.data.metrics["trials_completed"] == 3
    workers = [(result.path / "distributed" / f"worker{i}.log").read_text().count("starting") for i in range(2)]
    assert sum(workers) == 3, workers

    trials = [r for r in _children(tracked, search) if "kerakit.trial" in r.data.tags]
    assert sorted(r.data.tags["kerakit.trial"] for r in trials) == sorted(t["trial"] for t in result.trials)
    anywhere = tracked.search_runs([search.info.experiment_id], f"attributes.start_time >= {started_ms}")
    assert sorted(r.info.run_id for r in anywhere if "kerakit.trial" in r.data.tags) == \
        sorted(r.info.run_id for r in trials)  # no trial logged twice, nor outside the search
    scores = {t["trial"]: t["score"] for t in result.trials}
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert trial.data.metrics["score"] == pytest.approx(scores[trial.data.tags["kerakit.trial"]])
        assert _steps(tracked, trial.info.run_id, "val_accuracy") == [0]
