"""The forecasting recipe: windows cut in tf.data, a split by time, and a model judged against seasonal naive."""

import numpy as np
import pytest

import kerakit
from kerakit import files, metrics, runs


def test_seasonal_naive_figures_match_a_hand_computation():
    import tensorflow as tf

    from kerakit.data import windows
    from kerakit.recipe import Series

    values = np.array([1, 2, 3, 4, 2, 3, 5, 6, 3, 5, 6, 8], dtype=np.float32)  # season 4
    series = Series(window=4, horizon=1, season=4)
    cut = np.stack(list(windows(tf.data.Dataset.from_tensor_slices(values), 4, 1).as_numpy_iterator()))
    assert cut.shape == (8, 5) and cut[0].tolist() == [1, 2, 3, 4, 2]
    targets, naive = cut[:, -1], cut[:, series.naive_index]
    assert naive.tolist() == values[:8].tolist()  # the value one season (4 steps) before each target
    scale = np.abs(values[4:] - values[:-4]).mean()  # in-sample seasonal differences: 1,1,2,2, 1,2,1,2
    assert scale == pytest.approx(1.5)
    predictions = targets + np.array([0.5, -0.5, 0, 0, 1, -1, 0, 0])
    r = metrics.forecast_metrics(targets, predictions, naive, scale)
    # By hand: naive errors |2-1|,|3-2|,|5-3|,|6-4|,|3-2|,|5-3|,|6-5|,|8-6| = 1,1,2,2,1,2,1,2 -> MAE 1.5
    assert r["seasonal_naive"]["mae"] == pytest.approx(1.5)
    assert r["seasonal_naive"]["rmse"] == pytest.approx(np.sqrt((4 * 1 + 4 * 4) / 8))
    assert r["seasonal_naive"]["mase"] == pytest.approx(1.0)
    assert r["model"]["mae"] == pytest.approx(3 / 8) and r["model"]["mase"] == pytest.approx(0.25)
    assert r["beats_naive"] is True
    assert metrics.forecast_metrics(targets, naive - 0.1, naive, scale)["beats_naive"] is False  # further off


def test_the_series_is_split_by_time_and_windows_never_cross_a_split():
    from kerakit.data import load_data
    from kerakit.recipe import load_recipe

    recipe = load_recipe("elnino_forecast")
    data = load_data(recipe, recipe.resolve_config({})[0])
    times = {split: data.target_times(split) for split in ("train", "val", "test")}
    for split, t in times.items():
        assert (np.diff(t) > 0).all(), f"{split} is not in time order"
        x, y = data.arrays(split)
        assert len(y) == len(t) == len(data.series_values(split)) - recipe.series.window - recipe.series.horizon + 1
    assert times["train"].max() < times["val"].min() < times["test"].min()
    assert "time" in data.fingerprint["split_by"]  # recorded in the manifest
    assert data.fingerprint["target_times"]["train"][1] < data.fingerprint["target_times"]["val"][0]

    from kerakit.folds import Fold

    fold = load_data(recipe, recipe.resolve_config({})[0], fold=Fold(1, 3, seed=0))  # forward chaining
    train, held_out = fold.target_times("train"), fold.target_times("val")
    assert train.min() == times["train"].min() and train.max() < held_out.min() and held_out.max() < times["test"].min()


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    return kerakit.train("elnino_forecast", tmp_path_factory.mktemp("runs") / "elnino", epochs=3, verbose=0)


def test_a_forecast_run_records_the_seasonal_naive_figures_and_the_report_flags_a_loss(forecast_run):
    from kerakit.data import load_data
    from kerakit.report import report

    run = runs.Run.open(forecast_run.path)
    forecast = run.metrics["forecast"]
    recipe = run.recipe()
    data = load_data(recipe, run.config["config"])
    test, train = data.series_values("test"), data.series_values("train")
    # By hand, from the raw test months: the target is month t, its naive forecast month t - 12.
    naive_mae = np.abs(test[24:] - test[12:-12]).mean()
    scale = np.abs(train[12:] - train[:-12]).mean()
    assert forecast["seasonal_naive"]["mae"] == pytest.approx(naive_mae, rel=1e-5)
    assert forecast["mase_scale"] == pytest.approx(scale, rel=1e-5)
    assert forecast["model"]["mae"] == pytest.approx(run.metrics["mae"], rel=1e-6)
    assert forecast["beats_naive"] == (forecast["model"]["mae"] < forecast["seasonal_naive"]["mae"])

    result = report(run.path, log=lambda m: None)
    card = open(result["markdown"]).read()
    assert "| seasonal naive |" in card and "| model |" in card
    flagged = any("does not beat the seasonal-naive forecast" in f for f in result["flags"])
    assert flagged == (not forecast["beats_naive"])


def test_drift_reads_the_forecast_inputs(forecast_run, tmp_path):
    from kerakit.data import load_data
    from kerakit.drift import drift

    run = runs.Run.open(forecast_run.path)
    data = load_data(run.recipe(), run.config["config"])
    x, _ = data.arrays("test")
    np.savez(tmp_path / "warm.npz", history=x["history"] + 3.0)  # three degrees warmer
    result = drift(run.path, tmp_path / "warm.npz")
    by_name = {r["series"]: r for r in result["series"]}
    assert result["drift"] and by_name["history.mean"]["drift"] and result["rows"] == len(x["history"])


@pytest.mark.slow
def test_build_forecast_for_server_and_edge_verifies_every_artifact(tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "build"
    r = run_cli("build", "elnino_forecast", "epochs=5", "--target", "server,edge", "--out", out, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    export = files.read_json(out / "export" / "export_report.json")
    assert export["artifacts"] and all(a["verdict"] == "verified" for a in export["artifacts"])
    assert "| seasonal naive |" in (out / "report" / "model_card.md").read_text()


def test_a_forecasting_recipe_whose_window_cannot_see_a_season_back_is_refused(tmp_path):
    from kerakit.recipe import load_recipe
    from tests.conftest import ROOT

    text = (ROOT / "recipes" / "elnino_forecast.py").read_text().replace("WINDOW = 24", "WINDOW = 6")
    (tmp_path / "short.py").write_text(text)
    with pytest.raises(kerakit.KerakitError, match=r"WINDOW >= SEASON - HORIZON \+ 1 \(= 12\)"):
        load_recipe(tmp_path / "short.py")
