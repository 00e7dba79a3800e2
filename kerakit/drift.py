"""`kerakit drift`: has what the model now sees moved away from what it was trained on?

    from kerakit.drift import drift
    result = drift("runs/demo", "runs/demo/requests.jsonl")  # a run, and its `kerakit serve` log
    result["drift"], result["drifted"]

The reference is the run's training split, summarised by `kerakit train` into
RUN/data_profile.json (`training_profile`): for every input, the per-row mean,
std, min and max (the summary `kerakit serve` logs per request), plus each
feature of a tabular (rank-1) input; the category mix of each string input
of one value per row (a table's text column); and the distribution of the
model's predictions. A run without a current profile (trained by an older kerakit) is
profiled from its training data when drift runs; drift writes nothing. New
data is a server request log (JSON lines) or raw model inputs (.npz keyed by
input name, .npy or .csv for a one-input model); raw inputs are also run
through the model for the prediction shift. The statistics (PSI, KS, the
thresholds) are `kerakit.stats`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kerakit import files, request_log, runs, stats
from kerakit.errors import KerakitError

MIN_ROWS = 30


# --------------------------------------------------------------------------- reference profile

def training_profile(recipe, data, predictor) -> dict:
    """The profile of `data`'s training split (a `kerakit.data.Data`) and of `predictor`'s answers to it:
    what `kerakit train` writes to RUN/data_profile.json."""
    from kerakit import runtime

    names = {i.name: recipe.feature_names for i in recipe.inputs if recipe.feature_names and len(i.shape) == 1}
    batches = (x for x, _ in data.pipelines["train"].as_numpy_iterator())
    profile = stats.profile_split(batches, lambda x: runtime.first_output(predictor, x), names, data.class_names)
    return {"recipe": recipe.name, "split": "train", **profile}


def reference(run: runs.Run, data_dir: str | None = None) -> tuple[dict, bool]:
    """(the run's training-split profile, whether it was computed now): RUN/data_profile.json as train wrote
    it, else (a run from an older kerakit) the training data profiled now. Nothing is written."""
    path = run.data_profile
    if path.exists():
        stored = files.load_json(path, "delete it: `kerakit drift` then profiles the run's training data itself",
                                ("series", "predictions"))
        if stored.get("version") == stats.PROFILE_VERSION:
            return stored, False
    from kerakit.data import load_data
    from kerakit.folds import from_record
    from kerakit.formats.keras import KerasPredictor

    recipe = run.recipe()
    data = load_data(recipe, run.config["config"], data_dir, fold=from_record(run.config.get("fold")))
    return training_profile(recipe, data, KerasPredictor(run.model_path)), True


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
    series = stats.series_of_inputs(checked, feature_names)
    for name, values in checked.items():  # string inputs: each row's category key, as a request log holds it
        keys = request_log.category_keys(values)
        if keys is not None:
            series[f"{name}.category"] = keys
    return series, stats.prediction_summary(outputs), f"{len(outputs)} rows of model inputs"


def _from_log(path: Path) -> tuple[dict, dict, str]:
    return request_log.read(path, stats.MAX_TABULAR_FEATURES)


# --------------------------------------------------------------------------- comparison

def drift(run_path: "str | os.PathLike", data: "str | os.PathLike", psi_threshold: float = 0.2,
          ks_threshold: float = 0.2, data_dir: str | None = None) -> dict:
    """Compare the new `data` with the run's training-data profile: series by series, each string input's
    categories (PSI over the profile's buckets, against `psi_threshold`) and predictions."""
    run = runs.Run.open(run_path)
    profile, profiled_now = reference(run, data_dir)
    series, predictions, described = _new_series(data, run, profile)
    table = [{"series": name, **stats.compare_series(ref, series[name], psi_threshold, ks_threshold)}
             for name, ref in profile["series"].items() if name in series]
    categories = [{"input": name, **stats.compare_categories(ref, series[f"{name}.category"], psi_threshold)}
                  for name, ref in profile.get("categories", {}).items() if f"{name}.category" in series]
    prediction = _compare_predictions(profile["predictions"], predictions, psi_threshold, ks_threshold)
    drifted = ([r["series"] for r in table if r["drift"]] + [f"{r['input']} categories" for r in categories if r["drift"]]
               + (["predictions"] if prediction and prediction["drift"] else []))
    return {"run": str(run.path), "data": str(data), "described": described, "rows": len(next(iter(series.values()))),
            "profiled_now": profiled_now,  # the run has no current data_profile.json: its training data, read now
            "thresholds": {"psi": psi_threshold, "ks": ks_threshold}, "series": table, "categories": categories,
            "predictions": prediction,
            "drifted": drifted, "drift": bool(drifted)}


def _new_series(data, run: runs.Run, profile: dict) -> tuple[dict, dict, str]:
    """The new data's series named as in the profile, and its predictions; too few rows is an error."""
    series, predictions, described = load_new(data, run, profile.get("feature_names") or {})
    # Log records name tabular features by index; the profile by name.
    for name, features in (profile.get("feature_names") or {}).items():
        for i, feature in enumerate(features):
            if f"{name}[{i}]" in series:
                series[f"{name}[{feature}]"] = series.pop(f"{name}[{i}]")
    # Log records summarise every input by its per-row statistics; an input of one value per row is one series.
    for name in profile["series"]:
        stem = name[:-len(".length")] if name.endswith(".length") else name
        if "." not in stem and "[" not in stem and f"{stem}.mean" in series and name not in series:
            series[name] = series.pop(f"{stem}.mean")
            for stat in ("std", "min", "max"):
                series.pop(f"{stem}.{stat}", None)
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
        value = stats.proportions_psi(np.asarray(ref_pred["proportions"]), new)
        return {"kind": "classes", "psi": round(value, 4), "reference": ref_pred["proportions"],
                "new": new.tolist(), "class_names": ref_pred["class_names"], "drift": value > psi_threshold}
    if ref_pred["kind"] == "values" and "values" in predictions:
        row = stats.compare_series(ref_pred, predictions["values"], psi_threshold, ks_threshold)
        return {"kind": "values", "psi": row["psi"], "ks": row["ks"], "drift": row["drift"]}
    return None
