"""`kerakit cv`: k-fold cross-validation of a recipe, one run per fold.

    result = kerakit.cross_validate("digits_cnn", "runs/cv", folds=5)
    result["mean"], result["std"], result["rows"][0]

The folds are cut from the recipe's train and val splits together
(`kerakit.folds`: stratified for classification, shuffled for regression,
contiguous and forward-chaining for a time series); the test split is left
alone. Each fold is an ordinary `kerakit train` run in OUT/fold-K that picks
its best epoch on its held-out part and is scored there, so a killed
cross-validation (even `kill -9`) resumes: finished folds are kept and the
interrupted one continues from its last finished epoch. The same request is
needed to resume; a different one is refused unless `overwrite=True`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kerakit import files, runs, tracking
from kerakit.errors import KerakitError
from kerakit.folds import SCHEMES, Fold, check_folds
from kerakit.recipe import Recipe, load_recipe


def cross_validate(
    recipe: "str | os.PathLike | Recipe",
    out: "str | os.PathLike | None" = None,
    *,
    folds: int = 5,
    data_dir: str | None = None,
    hparams: "dict | str | os.PathLike | None" = None,
    overwrite: bool = False,
    verbose: "int | str" = "auto",
    log: Callable[[str], None] = print,
    track: bool | None = None,
    **overrides: Any,
) -> dict:
    """Train one model per fold into OUT/fold-1 .. fold-K; return the per-fold rows and the mean ± std.

    The std is the sample standard deviation over the folds (ddof=1). track: a parent MLflow run with one
    nested run per fold (`kerakit.tracking`).
    """
    from kerakit.train import train

    recipe = load_recipe(recipe)
    check_folds(folds)
    config, _ = recipe.resolve_config(overrides)
    cv = runs.CrossValidation(Path(out) if out else Path("runs") / f"{recipe.name}-cv{folds}")
    request = {"recipe": recipe.name, "folds": folds, "scheme": SCHEMES[recipe.task], "config": config,
               "overrides": {k: str(v) for k, v in overrides.items()}, "hparams": hparams if isinstance(hparams, dict)
               else (str(hparams) if hparams else None)}
    started = time.time()
    with files.writer(cv.path, "kerakit cv"):
        _check_request(cv, request, overwrite)
        with tracking.parent_run(cv.path, "cv", name=f"{cv.path.name} cv", experiment=recipe.name, config=config,
                                 track=track, log=log) as tracker:
            rows = []
            for index in range(folds):
                log(f"── fold {index + 1} of {folds} ({request['scheme']}) -> {cv.fold_dir(index + 1)}")
                run = train(recipe, cv.fold_dir(index + 1), data_dir=data_dir, hparams=hparams, verbose=verbose,
                            log=log, fold=Fold(index, folds, config["seed"]), **tracker.for_children(), **overrides)
                rows.append(_row(index + 1, run, recipe.metric))
                files.write_csv(cv.folds_csv, rows)
            summary = _summarize(cv, request, recipe, rows, started, log)
            tracking.send_cv(tracker, cv, summary)
            return summary


def _check_request(cv: runs.CrossValidation, request: dict, overwrite: bool) -> None:
    """Record the request; refuse a different one in the same directory (resuming needs the same)."""
    if cv.cv_file.exists() and overwrite:
        for path in cv.path.iterdir():
            if path.name.startswith("fold-") or path.name in (runs.CV_FILE, runs.FOLDS_CSV_FILE, runs.TRACKING_FILE):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    elif cv.cv_file.exists():
        previous = files.load_json(cv.cv_file, f"delete it and rerun `kerakit cv` with --out {cv.path}")
        changed = sorted(k for k in request if previous.get("request", {}).get(k) != request[k])
        if changed:
            raise KerakitError(f"{cv.path} holds a different cross-validation (changed: {', '.join(changed)}). "
                               "Use another --out, or --overwrite to start this one from scratch.")
        return  # the same request: a finished summary stays readable while it is checked again
    files.write_json(cv.cv_file, {"request": request})


def _row(index: int, run: runs.Run, metric: str) -> dict:
    metrics, manifest = run.metrics, run.manifest
    sizes = manifest["data"].get("windows") or manifest["data"]["sizes"]  # a series counts windows, not time steps
    return {"fold": index, "train_examples": sizes.get("train"), "held_out_examples": metrics["held_out"]["examples"],
            f"held_out_{metric}": metrics["held_out"][metric], f"test_{metric}": metrics[metric],
            "epochs": manifest["training"]["epochs_run"], "best_epoch": manifest["training"]["best_epoch"]}


def _summarize(cv: runs.CrossValidation, request: dict, recipe: Recipe, rows: list[dict], started: float,
               log) -> dict:
    """Write cv.json with the mean and std (finished from then on); return it."""
    metric = recipe.metric
    held = np.array([r[f"held_out_{metric}"] for r in rows], dtype=np.float64)
    test = np.array([r[f"test_{metric}"] for r in rows], dtype=np.float64)
    summary = {"request": request, "path": str(cv.path), "recipe": recipe.name, "metric": metric,
               "direction": recipe.metric_direction, "folds": len(rows), "scheme": request["scheme"], "rows": rows,
               "mean": float(held.mean()), "std": float(held.std(ddof=1)),
               "test_mean": float(test.mean()), "test_std": float(test.std(ddof=1)),
               "wall_seconds": round(time.time() - started, 1)}
    files.write_json(cv.cv_file, summary)
    log(f"Cross-validated {metric}: {summary['mean']:.4f} ± {summary['std']:.4f} over {len(rows)} folds "
        f"(held-out parts; the fold models score {summary['test_mean']:.4f} ± {summary['test_std']:.4f} on test) "
        f"-> {cv.cv_file}")
    return summary
