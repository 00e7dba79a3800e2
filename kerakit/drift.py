"""`kerakit drift`: has what the model now sees moved away from what it was trained on?

    from kerakit.drift import drift
    result = drift("runs/demo", "runs/demo/requests.jsonl")  # a run, and its `kerakit serve` log
    result["drift"], result["drifted"]

The reference is the run's training split, summarised once into
RUN/data_profile.json: for every input, the per-row mean, std, min and max
(the summary `kerakit serve` logs per request), plus each feature of a
tabular (rank-1) input; and the distribution of the model's predictions.
New data is a server request log (JSON lines) or raw model inputs (.npz
keyed by input name, .npy or .csv for a one-input model); raw inputs are
also run through the model for the prediction shift.

Per series: the population stability index over the reference's decile bins
and the two-sample Kolmogorov-Smirnov statistic; predicted classes by PSI
over classes. A series drifts when PSI > psi_threshold (0.2 by default, the
usual "significant shift") or KS > ks_threshold (0.2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kerakit import request_log, runs
from kerakit.errors import KerakitError
from kerakit.request_log import row_statistics

PROFILE_VERSION = 2  # bump when the summary or its binning changes: older profiles are recomputed
MAX_TABULAR_FEATURES = 64
SAMPLE = 2000        # reference values kept per series, for KS
MIN_ROWS = 30
EPS = 1e-4


def _series_of_inputs(inputs: dict[str, np.ndarray], feature_names: dict[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    series = {}
    for name, x in inputs.items():
        for stat, values in row_statistics(x).items():
            series[f"{name}.{stat}"] = values
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[1] <= MAX_TABULAR_FEATURES:
            names = (feature_names or {}).get(name) or [str(i) for i in range(x.shape[1])]
            for i, feature in enumerate(names):
                series[f"{name}[{feature}]"] = x[:, i].astype(np.float64)
    return series


def _prediction_summary(outputs: np.ndarray) -> dict:
    flat = np.asarray(outputs).reshape(len(outputs), -1)
    if flat.shape[1] > 1:
        return {"classes": flat.argmax(1)}
    return {"values": flat[:, 0].astype(np.float64)}


def summarize(values: np.ndarray) -> dict:
    """One reference series: its decile edges, the share of values in each bin (for PSI), and a sorted sample (for KS)."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 11)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    rng = np.random.default_rng(0)
    sample = values if len(values) <= SAMPLE else rng.choice(values, SAMPLE, replace=False)
    return {"edges": edges.tolist(), "proportions": (counts / counts.sum()).tolist(), "sample": np.sort(sample).tolist()}


# --------------------------------------------------------------------------- reference profile

def profile(run_path: "str | os.PathLike", data_dir: str | None = None, refresh: bool = False,
            predictor=None) -> dict:
    """The run's training-split profile (computed once, then read from RUN/data_profile.json).

    predictor: the run's model already open as a `kerakit.formats.keras.KerasPredictor`, to not load it twice.
    """
    run = runs.Run.open(run_path)
    path = run.data_profile
    if path.exists() and not refresh:
        stored = runs.read_json(path)
        if stored.get("version") == PROFILE_VERSION:
            return stored
    from kerakit.data import load_data
    from kerakit.folds import from_record

    recipe = run.recipe()
    data = load_data(recipe, run.config["config"], data_dir, fold=from_record(run.config.get("fold")))
    x, _ = data.arrays("train")
    from kerakit import runtime
    from kerakit.formats.keras import KerasPredictor

    predictor = predictor or KerasPredictor(run.model_path)
    outputs = runtime.first_output(predictor, x)
    names = {i.name: recipe.feature_names for i in recipe.inputs if recipe.feature_names and len(i.shape) == 1}
    result = {"version": PROFILE_VERSION, "recipe": recipe.name, "split": "train", "rows": int(len(next(iter(x.values())))),
              "feature_names": names,
              "series": {k: summarize(v) for k, v in _series_of_inputs(x, names).items()}}
    prediction = _prediction_summary(outputs)
    if "classes" in prediction:
        n = outputs.reshape(len(outputs), -1).shape[1]
        counts = np.bincount(prediction["classes"], minlength=n)
        result["predictions"] = {"kind": "classes", "proportions": (counts / counts.sum()).tolist(),
                                 "class_names": data.class_names or [str(i) for i in range(n)]}
    else:
        result["predictions"] = {"kind": "values", **summarize(prediction["values"])}
    runs.write_json(path, result)
    return result


# --------------------------------------------------------------------------- new data

def load_new(path: "str | os.PathLike", run: runs.Run, feature_names: dict) -> tuple[dict, dict, str]:
    """(series, predictions, description) of the new data at `path`."""
    path = Path(path)
    if not path.is_file():
        raise KerakitError(f"Drift data {str(path)!r} does not exist (expected a request log .jsonl, or .npz/.npy/.csv inputs).")
    if path.suffix in (".jsonl", ".log", ".json"):
        return _from_log(path)
    if path.suffix not in (".npz", ".npy", ".csv"):
        raise KerakitError(f"Unsupported drift data {str(path)!r}: expected .jsonl (a `kerakit serve` request log), "
                           ".npz (arrays keyed by input name), .npy or .csv (one-input models).")
    recipe = run.recipe()
    names = [i.name for i in recipe.inputs]
    try:
        if path.suffix == ".npz":
            with np.load(path) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if len(names) == 1 and list(arrays) in (["arr_0"], ["x"]):
                arrays = {names[0]: next(iter(arrays.values()))}
        elif path.suffix == ".npy":
            arrays = {names[0]: np.load(path)}
        else:
            arrays = {names[0]: np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32)}
    except (ValueError, OSError) as e:
        raise KerakitError(f"Cannot read {str(path)!r}: {str(e)[:200]}.") from None
    if set(arrays) != set(names):
        raise KerakitError(f"{str(path)!r} holds arrays {sorted(arrays)}; the model's inputs are {sorted(names)}.")
    from kerakit import runtime

    with runtime.load(run.model_path) as model:
        checked = model.validate(arrays)
        outputs = runtime.first_output(model, checked)
    return _series_of_inputs(checked, feature_names), _prediction_summary(outputs), f"{len(outputs)} rows of model inputs"


def _from_log(path: Path) -> tuple[dict, dict, str]:
    return request_log.read(path, MAX_TABULAR_FEATURES)


# --------------------------------------------------------------------------- comparison

def psi(reference: dict, values: np.ndarray) -> float:
    """Population stability index of `values` over the decile bins of a `summarize`d reference."""
    edges = np.asarray(reference["edges"])
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return proportions_psi(np.asarray(reference["proportions"]), counts / counts.sum())


def proportions_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two distributions over the same bins (or classes); empty bins count as EPS, not log(0)."""
    expected, actual = np.clip(expected, EPS, None), np.clip(actual, EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def compare_series(reference: dict, values: np.ndarray, psi_threshold: float = 0.2, ks_threshold: float = 0.2) -> dict:
    """PSI and two-sample KS statistic of new `values` against one `summarize`d reference series.

    >>> rng = np.random.default_rng(0)
    >>> compare_series(summarize(rng.normal(size=5000)), rng.normal(1.0, size=500))["drift"]
    True
    """
    from scipy.stats import ks_2samp

    values = np.asarray(values, dtype=np.float64)
    sample = np.asarray(reference["sample"])
    value = psi(reference, values)
    ks = float(ks_2samp(sample, values).statistic)
    return {"psi": round(value, 4), "ks": round(ks, 4), "reference_median": float(np.median(sample)),
            "new_median": float(np.median(values)), "drift": value > psi_threshold or ks > ks_threshold}


def drift(run_path: "str | os.PathLike", data: "str | os.PathLike", psi_threshold: float = 0.2,
          ks_threshold: float = 0.2, data_dir: str | None = None) -> dict:
    """Compare the new `data` with the run's training-data profile, series by series and predictions."""
    run = runs.Run.open(run_path)
    reference = profile(run.path, data_dir)
    series, predictions, described = _new_series(data, run, reference)
    table = [{"series": name, **compare_series(ref, series[name], psi_threshold, ks_threshold)}
             for name, ref in reference["series"].items() if name in series]
    prediction = _compare_predictions(reference["predictions"], predictions, psi_threshold, ks_threshold)
    drifted = [r["series"] for r in table if r["drift"]] + (["predictions"] if prediction and prediction["drift"] else [])
    return {"run": str(run.path), "data": str(data), "described": described, "rows": len(next(iter(series.values()))),
            "thresholds": {"psi": psi_threshold, "ks": ks_threshold}, "series": table, "predictions": prediction,
            "drifted": drifted, "drift": bool(drifted)}


def _new_series(data, run: runs.Run, reference: dict) -> tuple[dict, dict, str]:
    """The new data's series named as in the profile, and its predictions; too few rows is an error."""
    series, predictions, described = load_new(data, run, reference.get("feature_names") or {})
    # Log records name tabular features by index; the profile by name.
    for name, features in (reference.get("feature_names") or {}).items():
        for i, feature in enumerate(features):
            if f"{name}[{i}]" in series:
                series[f"{name}[{feature}]"] = series.pop(f"{name}[{i}]")
    rows = len(next(iter(series.values()), []))
    if rows < MIN_ROWS:
        raise KerakitError(f"{str(data)!r} has {rows} rows; a drift check needs at least {MIN_ROWS}.")
    return series, predictions, described


def _compare_predictions(ref_pred: dict, predictions: dict, psi_threshold: float, ks_threshold: float) -> dict | None:
    """Predicted classes by PSI over classes; predicted values like any other series."""
    if ref_pred["kind"] == "classes" and "classes" in predictions:
        n = len(ref_pred["proportions"])
        counts = np.bincount(np.clip(predictions["classes"].astype(int), 0, n - 1), minlength=n)
        new = counts / counts.sum()
        value = proportions_psi(np.asarray(ref_pred["proportions"]), new)
        return {"kind": "classes", "psi": round(value, 4), "reference": ref_pred["proportions"],
                "new": new.tolist(), "class_names": ref_pred["class_names"], "drift": value > psi_threshold}
    if ref_pred["kind"] == "values" and "values" in predictions:
        row = compare_series(ref_pred, predictions["values"], psi_threshold, ks_threshold)
        return {"kind": "values", "psi": row["psi"], "ks": row["ks"], "drift": row["drift"]}
    return None
