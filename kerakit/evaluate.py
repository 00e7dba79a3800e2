"""`kerakit evaluate`: test-split metrics of a run or a `.keras` file.

    kerakit.evaluate("runs/demo")["accuracy"]          # 0.9805
    kerakit.evaluate("runs/demo/export/model_int8.tflite")["accuracy"]

Classification adds per-class precision/recall/F1 and a confusion matrix
(rows: true class, columns: predicted class).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import runs
from kerakit.errors import KerakitError
from kerakit.folds import from_record
from kerakit.metrics import forecast_metrics, task_metrics
from kerakit.recipe import Recipe, load_recipe


def evaluate(
    target: "str | os.PathLike",
    *,
    recipe: "str | os.PathLike | Recipe | None" = None,
    data_dir: str | None = None,
    split: str = "test",
    **overrides: Any,
) -> dict:
    """Metrics of a run, or of any artifact (.keras, .onnx, .tflite, SavedModel), on `split`.

    An artifact inside a run (RUN/export/model_int8.tflite) is evaluated on
    that run's recipe and config; one from elsewhere needs `recipe=`.
    """
    model_path, recipe, config, fold = _resolve(Path(target), recipe, overrides)
    if split not in recipe.splits:
        raise KerakitError(f"Invalid split={split!r}. Expected one of {', '.join(recipe.splits)}.")
    from kerakit import runtime
    from kerakit.formats.keras import load_keras_model

    fmt = runtime.detect_format(model_path)
    model = load_keras_model(model_path) if fmt == "keras" else runtime.load(model_path)

    from kerakit.data import load_data

    data = load_data(recipe, config, data_dir, fold=fold)
    if fmt == "keras":
        return {"format": fmt, **evaluate_model(model, data, split)}
    with model:
        x, y = data.arrays(split)
        outputs = runtime.predict_all(model, x)
        metrics = _task_metrics(data, x, y, outputs[model.outputs[0].name])
    return {"format": fmt, **metrics, "split": split, "examples": int(len(y))}


def _task_metrics(data, x: dict, y, outputs) -> dict:
    """The task's metrics; a forecast adds MAE, RMSE and MASE beside the seasonal-naive forecast's."""
    metrics = task_metrics(data.recipe.task, y, outputs, data.class_names)
    if data.recipe.series is not None:
        metrics["forecast"] = {**forecast_metrics(y, outputs, *data.forecast_baseline(x)),
                               "season": data.recipe.series.season, "horizon": data.recipe.series.horizon}
    return metrics


def _resolve(target: Path, recipe, overrides) -> tuple[Path, Recipe, dict, Any]:
    """The model file, its recipe and config, and (for a `kerakit cv` fold run) its fold."""
    if not target.exists():
        raise KerakitError(f"{str(target)!r} does not exist. Expected a run directory or a model file.")
    run = runs.find_run(target)
    if target.is_dir() and run is not None and run.path == target.resolve():
        run = runs.Run.open(target)
        model_path = run.model_path
    else:
        model_path = target
    if recipe is None and run is None:
        raise KerakitError(
            f"{str(target)!r} is not inside a kerakit run, so its data is unknown: "
            "pass --recipe NAME_OR_PATH to evaluate it on that recipe's test split."
        )
    if recipe is not None:
        recipe = load_recipe(recipe)
        config, _ = recipe.resolve_config(overrides)
        return model_path, recipe, config, None
    recipe = run.recipe()
    config = {**run.config["config"], **recipe.resolve_config(overrides)[0]} if overrides else run.config["config"]
    return model_path, recipe, config, from_record(run.config.get("fold"))


def evaluate_model(model, data, split: str = "test") -> dict:
    """Task metrics of `model` on one split of `data` (a `kerakit.data.Data`)."""
    named, y = data.arrays(split)
    x = data.model_input(named)
    predictions = np.asarray(model.predict(x, batch_size=256, verbose=0))
    metrics = _task_metrics(data, named, y, predictions)
    metrics["split"] = split
    metrics["examples"] = int(len(y))
    if getattr(model, "compiled", False) and model.loss is not None:
        evaluated = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
        for key, value in evaluated.items():
            metrics.setdefault(key, float(value))
    return metrics
