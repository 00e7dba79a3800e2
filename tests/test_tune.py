"""`kerakit tune`: keras-tuner over the recipe's own build_model, resumable, with a retrained best run."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

import kerakit
from conftest import KERAKIT, ROOT, run_cli
from kerakit.errors import KerakitError

QUICK = dict(epochs=2, retrain=False, verbose=0, log=lambda m: None)


@pytest.mark.parametrize("tuner, kwargs", [
    ("random", {"max_trials": 2}),
    ("grid", {"max_trials": 2}),
    ("bayesian", {"max_trials": 2}),
    ("hyperband", {"max_epochs": 2}),
])
def test_every_tuner_searches_the_recipes_space(tuner, kwargs, tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path, tuner=tuner, **kwargs, **QUICK)
    completed = [t for t in result.trials if t["status"] == "COMPLETED"]
    assert len(completed) >= 2 if tuner != "hyperband" else len(completed) >= 1
    assert set(result.best_hparams) == {"units", "dropout", "learning_rate"}
    assert json.loads((tmp_path / "best_hparams.json").read_text()) == result.best_hparams
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert trials["objective"] == "val_accuracy" and trials["direction"] == "max"
    assert (tmp_path / "trials.csv").read_text().splitlines()[0].startswith("trial,status,score")
    assert (tmp_path / "trials.png").read_bytes()[:4] == b"\x89PNG"


def test_overrides_fix_a_hyperparameter_for_the_whole_search(tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=2, units=48, **QUICK)
    assert all(t["units"] == 48 for t in result.trials)


@pytest.mark.slow
def test_the_best_is_retrained_as_a_run_that_export_takes(tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=2, epochs=2, verbose=0, log=lambda m: None)
    run = result.run
    assert run.path == tmp_path / "best" and run.is_finished
    assert {k: run.manifest["hparams"][k] for k in result.best_hparams} == result.best_hparams
    from kerakit.export import export

    assert export(run.path, formats=["onnx"], log=lambda m: None).passed


@pytest.mark.slow
def test_a_longer_search_continues_and_retrains_the_new_best_without_overwrite(tmp_path):
    """max_trials 2 -> 4 on the same search: two new trials, and best/ trained on whatever is best now."""
    first = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=2, epochs=2, verbose=0, log=lambda m: None)
    logs = []
    longer = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=4, epochs=2, verbose=0, log=logs.append)
    assert len(longer.trials) == 4
    best = json.loads((tmp_path / "best_hparams.json").read_text())
    assert longer.run.config["hparams_requested"] == best == longer.best_hparams
    assert all(longer.run.verify_artifacts().values())
    said = any("holds an earlier best" in line for line in logs)
    assert said == (longer.best_hparams != first.best_hparams)


@pytest.mark.slow
def test_rerun_resumes_without_repeating_finished_trials(tmp_path):
    first = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=2, **QUICK)
    logs = []
    second = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=3, retrain=False, verbose=0, epochs=2,
                          log=logs.append)
    assert any("2 trial(s) already done" in line for line in logs)
    started = [line for line in logs if line.startswith("Trial ") and "starting" in line]
    assert len(started) == 1  # only the third trial ran
    assert {t["trial"] for t in first.trials} < {t["trial"] for t in second.trials}


@pytest.mark.slow
def test_a_different_search_in_the_same_directory_is_refused(tmp_path):
    kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=1, **QUICK)
    with pytest.raises(KerakitError, match=r"holds a different search \(changed: tuner\).*--overwrite"):
        kerakit.tune("breast_cancer_mlp", tmp_path, tuner="bayesian", max_trials=1, **QUICK)
    result = kerakit.tune("breast_cancer_mlp", tmp_path, tuner="bayesian", max_trials=1, overwrite=True, **QUICK)
    assert len(result.trials) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"tuner": "annealing"}, "Invalid tuner='annealing'. Expected one of random, grid, bayesian, hyperband, or "
                             "MODULE:CLASS naming a keras_tuner.Oracle subclass"),
    ({"tuner": "no_such_module:Oracle"}, "Cannot import 'no_such_module' for --tuner no_such_module:Oracle"),
    ({"tuner": "custom_oracle:Nope"}, "module custom_oracle has no class 'Nope'"),
    ({"tuner": "kerakit.tune:TuneResult"}, "TuneResult is not a keras_tuner.Oracle subclass"),
    ({"tuner": "hyperband"}, "needs --max-epochs"),
    ({"tuner": "hyperband", "max_epochs": 2, "cv": 2}, "--cv works with --tuner random, grid, bayesian or a custom "
                                                        "Oracle, not hyperband"),
    ({"cv": 2, "workers": 2}, "--cv runs in one process"),
    ({"max_trials": 0}, r"Invalid max_trials=0. Expected an integer >= 1"),
    ({"role": "boss", "oracle": "127.0.0.1:1"}, "Invalid role='boss'. Expected one of chief, worker"),
    ({"role": "worker"}, "--role needs --oracle HOST:PORT"),
    ({"colour": "red"}, "Unknown override 'colour'"),
])
def test_bad_search_requests(kwargs, message, tmp_path):
    with pytest.raises(KerakitError, match=re.escape(message)):
        kerakit.tune("breast_cancer_mlp", tmp_path, **{**QUICK, **kwargs})


def test_an_oracle_instance_is_refused_with_the_class_to_pass_instead(tmp_path):
    from custom_oracle import UnitsLadder

    with pytest.raises(KerakitError, match="pass the Oracle's class \\(custom_oracle:UnitsLadder\\)"):
        kerakit.tune("breast_cancer_mlp", tmp_path, tuner=UnitsLadder(), **QUICK)


def test_workers_are_started_from_the_request_with_every_option_it_holds():
    """What the launcher passes its chief and workers parses back, through the command line, into the same request."""
    from custom_oracle import UnitsLadder
    from kerakit.cli import _parse_overrides, cli
    from kerakit.tune import TuneRequest

    request = TuneRequest(str(ROOT / "recipes" / "breast_cancer_mlp.py"), {"units": "48", "epochs": "2"},
                          out="/tmp/search", tuner=UnitsLadder, max_trials=3, max_epochs=4, executions_per_trial=2,
                          objective="val_loss", seed=7, retrain=False, overwrite=True, data_dir="/tmp/tfds",
                          strategy="mirrored", role="worker", oracle="10.0.0.5:8470", recycle_after=2)
    argv = request.argv()
    assert argv[argv.index("--tuner") + 1] == "custom_oracle:UnitsLadder"
    params = cli.commands["tune"].make_context("tune", argv[1:]).params
    parsed = TuneRequest(params.pop("recipe"), _parse_overrides(params.pop("overrides")), **params)
    assert parsed == TuneRequest(**{**vars(request), "tuner": "custom_oracle:UnitsLadder"})
    assert TuneRequest("breast_cancer_mlp").argv() == ["tune", "breast_cancer_mlp"]  # defaults are not spelled


@pytest.mark.slow
def test_a_custom_oracle_plugs_in_by_class_or_module_path_and_its_proposals_are_what_is_trained(tmp_path):
    """An Oracle subclass kerakit has never seen (tests/custom_oracle.py): passed as a class through the API, then
    resumed by the command line's `--tuner MODULE:CLASS`; the search directory holds exactly the trials it proposed."""
    from custom_oracle import UnitsLadder

    first = kerakit.tune("breast_cancer_mlp", tmp_path, tuner=UnitsLadder, max_trials=2, **QUICK)
    assert [t["units"] for t in first.trials] == list(UnitsLadder.LADDER[:2])
    assert json.loads((tmp_path / "search.json").read_text())["tuner"] == "custom_oracle:UnitsLadder"

    tests_dir = str(ROOT / "tests")
    r = run_cli("tune", "breast_cancer_mlp", "epochs=2", "--tuner", "custom_oracle:UnitsLadder", "--max-trials", "3",
                "--no-retrain", "--out", tmp_path, env={"PYTHONPATH": tests_dir})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 trial(s) already done" in r.stdout
    assert sum(line.startswith("Trial ") and "starting" in line for line in r.stdout.splitlines()) == 1
    trials = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert [t["units"] for t in trials] == list(UnitsLadder.LADDER)
    assert all(t["status"] == "COMPLETED" and t["score"] is not None and t["epochs"] for t in trials)
    for t in trials:  # keras-tuner's own record of each trial: the values the oracle proposed, at their defaults else
        values = json.loads((tmp_path / "tuner" / f"trial_{t['trial']}" / "trial.json").read_text())["hyperparameters"]
        assert values["values"] == {"units": t["units"], "dropout": 0.2, "learning_rate": 3e-3}


@pytest.mark.slow
def test_the_readmes_defaults_first_oracle_scores_the_recipes_defaults_first(tmp_path):
    from custom_oracle import DefaultsFirst

    result = kerakit.tune("breast_cancer_mlp", tmp_path, tuner=DefaultsFirst, max_trials=2, **QUICK)
    defaults = {"units": 32, "dropout": 0.2, "learning_rate": 3e-3}
    assert {k: result.trials[0][k] for k in defaults} == defaults
    assert {k: result.trials[1][k] for k in defaults} != defaults  # then random search's own proposals


@pytest.mark.slow
def test_sigkill_during_a_trial_then_rerun_continues_that_trial(tmp_path):
    out = tmp_path / "search"
    args = ["tune", "digits_cnn", "epochs=6", "patience=100", "--max-trials", "2", "--no-retrain", "--out", str(out)]
    proc = subprocess.Popen([*KERAKIT, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, meta = time.time() + 240, None
    while time.time() < deadline and meta is None:
        for path in out.glob("tuner/trial_*/backup/training_metadata.json"):
            try:
                if json.loads(path.read_text())["epoch"] >= 2:
                    meta = path
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert meta is not None, "no trial reached epoch 2"
    trial_dir = meta.parent.parent
    killed_at = json.loads(meta.read_text())["epoch"]

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"Trial {trial_dir.name.removeprefix('trial_')} resumes from epoch {killed_at}" in result.stdout
    trial = json.loads((trial_dir / "trial.json").read_text())
    assert trial["status"] == "COMPLETED"
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 2 and all(t["status"] == "COMPLETED" for t in trials)
    assert killed_at >= 2 and not (trial_dir / "backup").exists()


@pytest.mark.slow
def test_chief_and_two_workers_on_loopback_run_every_trial_once(tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=4, epochs=3, workers=2, retrain=False,
                          log=lambda m: None)
    assert len(result.trials) == 4 and all(t["status"] == "COMPLETED" for t in result.trials)
    assert len(list((tmp_path / "tuner").glob("trial_*"))) == 4
    started = [(tmp_path / "distributed" / f"worker{i}.log").read_text().count("starting") for i in range(2)]
    assert sum(started) == 4 and all(n >= 1 for n in started), started
    assert json.loads((tmp_path / "best_hparams.json").read_text()) == result.best_hparams


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_restarted_and_the_search_finishes(tmp_path):
    import psutil

    args = ["tune", "breast_cancer_mlp", "epochs=8", "patience=100", "--max-trials", "3", "--workers", "2",
            "--no-retrain", "--out", str(tmp_path)]
    launcher = subprocess.Popen([*KERAKIT, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim, deadline = None, time.time() + 240
    while victim is None and time.time() < deadline and launcher.poll() is None:
        if any(p.exists() for p in tmp_path.glob("tuner/trial_*/backup/training_metadata.json")):
            workers = [c for c in psutil.Process(launcher.pid).children() if "--role worker" in " ".join(c.cmdline())]
            victim = workers[0] if workers else None
        time.sleep(0.05)
    assert victim is not None, "no trial got to its first epoch"
    victim.kill()
    output, _ = launcher.communicate(timeout=400)
    assert launcher.returncode == 0, output[-3000:]
    assert "restarting it (1/3)" in output
    trials = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)


@pytest.mark.slow
def test_trials_table_counts_the_epochs_each_trial_trained(tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=2, epochs=3, patience=100, retrain=False,
                          verbose=0, log=lambda m: None)
    assert [t["epochs"] for t in result.trials] == [3, 3]


@pytest.mark.slow
def test_workers_recycle_their_process_to_bound_memory(tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path, max_trials=5, epochs=2, workers=1, recycle_after=2,
                          retrain=False, log=lambda m: None)
    assert len(result.trials) == 5 and all(t["status"] == "COMPLETED" for t in result.trials)
    log = (tmp_path / "distributed" / "worker0.log").read_text()
    assert log.count("Worker recycling after 2 trials") == 2
