"""k-fold cross-validation (`kerakit cv`, `kerakit tune --cv`), model selection across architectures, and the
report's data-quality view."""

import numpy as np
import pytest

import kerakit
from kerakit import files, runs
from kerakit.folds import Fold, fold_masks


def test_folds_are_stratified_disjoint_and_forward_chaining_for_a_series():
    labels = np.array([0] * 60 + [1] * 30)
    held = []
    for k in range(3):
        train, out = fold_masks("classification", 90, Fold(k, 3, seed=0), labels)
        assert not (train & out).any() and (train | out).all()
        assert np.bincount(labels[out]).tolist() == [20, 10]  # each fold keeps the 2:1 class mix
        held.append(out)
    assert (np.sum(held, axis=0) == 1).all()  # every example is held out exactly once
    for k in range(4):
        train, out = fold_masks("forecasting", 100, Fold(k, 4, seed=0))
        assert train.nonzero()[0].max() < out.nonzero()[0].min()  # never trained on the future
        assert train.nonzero()[0].tolist() == list(range(train.sum()))  # contiguous from the start
    with pytest.raises(kerakit.KerakitError, match="folds=1"):
        fold_masks("regression", 10, Fold(0, 1, seed=0))


def test_feature_quality_flags_constant_duplicate_and_shifted_features():
    from kerakit.quality import feature_quality

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(2000, 4)), rng.normal(size=(1000, 4))
    train[:, 1] = test[:, 1] = 7.0
    train[5, 0] = np.nan  # a missing value; the duplicate below has it too
    train[:, 3], test[:, 3] = train[:, 0], test[:, 0]
    test[:, 2] += 1.5
    rows = feature_quality(train, test, ["a", "b", "c", "d"])
    assert [r["flags"] for r in rows] == [[], ["constant"], ["train/test shift"], ["duplicate of a"]]
    assert rows[0]["missing"] == 1 and rows[1]["min"] == rows[1]["max"] == 7.0


CONSTANT_RECIPE = '''
import tensorflow as tf
from breast_cancer_mlp import *  # noqa: F401,F403 - the same recipe, with feature 3 held constant
from breast_cancer_mlp import preprocess as _preprocess

NAME = "breast_cancer_constant"


def preprocess(example, config):
    x, y = _preprocess(example, config)
    f = x["features"]
    return {"features": tf.concat([f[:3], [1.0], f[4:]], 0)}, y
'''


@pytest.mark.slow
def test_cv_prints_mean_and_std_and_the_report_shows_it_beside_test_with_a_data_quality_table(tmp_path, monkeypatch):
    from kerakit.report import report
    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    recipe = tmp_path / "breast_cancer_constant.py"
    recipe.write_text(CONSTANT_RECIPE)
    run = kerakit.train(recipe, tmp_path / "run", epochs=2, verbose=0)
    lines = []
    summary = kerakit.cross_validate(recipe, run.path / "cv", folds=2, epochs=2, verbose=0, log=lines.append)
    assert any(f"accuracy: {summary['mean']:.4f} ± {summary['std']:.4f} over 2 folds" in line for line in lines)
    rows = summary["rows"]
    assert len(rows) == 2 and sum(r["held_out_examples"] for r in rows) == 455  # train + val, each once
    assert summary["mean"] == pytest.approx(np.mean([r["held_out_accuracy"] for r in rows]))
    assert summary["std"] == pytest.approx(np.std([r["held_out_accuracy"] for r in rows], ddof=1))
    # A fold run is evaluated on its own fold: its val split is the held-out part it was scored on.
    fold = runs.CrossValidation(run.path / "cv").fold_dir(2)
    assert kerakit.evaluate(fold, split="val")["accuracy"] == pytest.approx(rows[1]["held_out_accuracy"])
    again = kerakit.cross_validate(recipe, run.path / "cv", folds=2, epochs=2, verbose=0, log=lines.append)
    assert again["rows"] == rows and any("already holds this finished run" in line for line in lines)
    with pytest.raises(kerakit.KerakitError, match="changed: config"):
        kerakit.cross_validate(recipe, run.path / "cv", folds=2, epochs=3, verbose=0, log=lines.append)

    result = report(run.path, log=lambda m: None)
    card = open(result["markdown"]).read()
    assert f"| cross-validated accuracy | {summary['mean']:.4f} ± {summary['std']:.4f} over 2 folds" in card
    assert "feature features[mean area]: constant" in result["flags"]
    assert "| mean area | 0 | 1.0000 | 1.0000 | 1.0000 |" in card


@pytest.mark.slow
def test_tune_selects_an_architecture_and_the_trials_table_shows_each_familys_own_hyperparameters(tmp_path):
    own = {"mlp": {"mlp_units", "mlp_layers"}, "cnn": {"cnn_filters"}, "separable": {"sep_filters"}}
    result = kerakit.tune("digits_select", tmp_path / "search", max_trials=3, epochs=1, retrain=False, verbose=0,
                          log=lambda m: None)
    assert result.best_hparams["arch"] in own
    for trial in result.trials:
        family = set().union(*own.values()) & set(trial)
        assert family == own[trial["arch"]], trial  # only the chosen family's hyperparameters
    header = (tmp_path / "search" / "trials.csv").read_text().splitlines()[0].split(",")
    assert "arch" in header


@pytest.mark.slow
def test_tune_with_cv_scores_each_trial_by_the_mean_over_its_folds(tmp_path):
    result = kerakit.tune("breast_cancer_mlp", tmp_path / "search", max_trials=1, epochs=2, cv=2, retrain=False,
                          verbose=0, log=lambda m: None)
    trial = result.trials[0]
    folds = files.read_json(next((tmp_path / "search" / "tuner").glob("trial_*/cv_folds.json")))
    assert sorted(folds) == ["1", "2"]
    assert trial["score"] == pytest.approx(np.mean([f["val_accuracy"] for f in folds.values()]))
    assert files.read_json(tmp_path / "search" / "search.json")["cv_folds"] == 2


@pytest.mark.slow
def test_cv_resumes_after_sigkill_keeping_finished_folds(tmp_path):
    from tests.conftest import run_cli
    from tests.test_faults import _kill_when, _start

    out = tmp_path / "cv"
    args = ["cv", "breast_cancer_mlp", "epochs=4", "patience=100", "--folds", "3", "--out", out]
    proc = _start(*args)
    assert _kill_when(proc, lambda: (out / "fold-2" / "backup" / "training_metadata.json").exists())
    assert runs.is_run(out / "fold-1") and not runs.is_run(out / "fold-2")
    r = run_cli(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fold-1 already holds this finished run" in r.stdout and "Resuming breast_cancer_mlp from epoch" in r.stdout
    assert "accuracy" in r.stdout and " ± " in r.stdout.splitlines()[-1]
    assert runs.CrossValidation(out).summary()["folds"] == 3
