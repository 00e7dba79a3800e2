"""`kerakit evaluate`: test-split metrics of a run or a `.keras` file.

>>> kerakit.evaluate("runs/demo")["accuracy"]
0.9805

Classification adds per-class precision/recall/F1 and a confusion matrix
(rows: true class, columns: predicted class).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import runs
from kerakit.errors import KerakitError
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
    model_path, recipe, config = _resolve(Path(target), recipe, overrides)
    if split not in recipe.splits:
        raise KerakitError(f"Invalid split={split!r}. Expected one of {', '.join(recipe.splits)}.")
    from kerakit import runtime

    fmt = runtime.detect_format(model_path)
    model = load_keras_model(model_path) if fmt == "keras" else runtime.load(model_path)

    from kerakit.data import load_data

    data = load_data(recipe, config, data_dir)
    if fmt == "keras":
        return {"format": fmt, **evaluate_model(model, data, split)}
    with model:
        x, y = data.arrays(split)
        outputs = runtime.predict_all(model, x)
        metrics = task_metrics(recipe.task, y, outputs[model.outputs[0].name], data.class_names)
    return {"format": fmt, **metrics, "split": split, "examples": int(len(y))}


def _resolve(target: Path, recipe, overrides) -> tuple[Path, Recipe, dict]:
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
    else:
        recipe = run.recipe()
        config = {**run.config["config"], **recipe.resolve_config(overrides)[0]} if overrides else run.config["config"]
    return model_path, recipe, config


def load_keras_model(path: "str | os.PathLike"):
    """Load a `.keras` file, turning the ways it can be broken into one clear message."""
    path = Path(path)
    if path.suffix != ".keras":
        raise KerakitError(f"Invalid model file {str(path)!r}: expected a .keras file (Keras 3 format).")
    if not zipfile.is_zipfile(path):
        raise KerakitError(f"{str(path)!r} is not a valid .keras file (not a zip archive: truncated or corrupt?).")
    import keras

    try:
        return keras.saving.load_model(path)
    except ValueError as e:
        if "Lambda" in str(e) or "safe_mode" in str(e):
            raise KerakitError(
                f"{str(path)!r} contains a Lambda layer, which Keras refuses to deserialize in safe mode. "
                "If you trust this file, call keras.config.enable_unsafe_deserialization() before loading."
            ) from e
        raise KerakitError(f"Cannot load {str(path)!r}: {e}") from e
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise KerakitError(f"Cannot load {str(path)!r}: {type(e).__name__}: {e} (truncated or corrupt?).") from e


def evaluate_model(model, data, split: str = "test") -> dict:
    """Task metrics of `model` on one split of `data` (a `kerakit.data.Data`)."""
    x, y = data.arrays(split)
    x = data.model_input(x)
    predictions = np.asarray(model.predict(x, batch_size=256, verbose=0))
    metrics = task_metrics(data.recipe.task, y, predictions, data.class_names)
    metrics["split"] = split
    metrics["examples"] = int(len(y))
    if getattr(model, "compiled", False) and model.loss is not None:
        evaluated = model.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
        for key, value in evaluated.items():
            metrics.setdefault(key, float(value))
    return metrics


def task_metrics(task: str, labels, outputs, class_names=None) -> dict:
    if task == "classification":
        return classification_metrics(labels, outputs, class_names)
    return regression_metrics(labels, outputs)


def classification_metrics(y_true, probabilities, class_names: list[str] | None) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 2 and probabilities.shape[1] > 1:
        y_pred = probabilities.argmax(axis=1)
        n_classes = probabilities.shape[1]
    else:  # one sigmoid unit
        y_pred = (probabilities.reshape(-1) >= 0.5).astype(int)
        n_classes = 2
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    labels = list(range(n_classes))
    names = list(class_names) if class_names else [str(i) for i in labels]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": [
            {"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])}
            for i in labels
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": names,
    }


def regression_metrics(y_true, predictions) -> dict:
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "mse": float((err ** 2).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
    }
