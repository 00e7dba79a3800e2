"""`kerakit evaluate`: test-split metrics of a run, a `.keras` file, or any artifact on a `--sample`.

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
    sample: "str | os.PathLike | None" = None,
    metric_output: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    **overrides: Any,
) -> dict:
    """Metrics of a run, or of any artifact (.keras, .onnx, .tflite, SavedModel), on `split`.

    An artifact inside a run (RUN/export/model_int8.tflite) is evaluated on
    that run's recipe and config; one from elsewhere needs `recipe=` or
    `sample=` (an .npz of inputs and labels, `kerakit.sample`). The metric is
    computed on `metric_output` (default: the first output by Keras order).
    """
    if sample is not None:
        return evaluate_sample(Path(target), sample, metric_output)
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
        from kerakit.formats.keras import KerasPredictor

        model = KerasPredictor(model_path, model=model)  # a functional or subclassed model, by output name
        if len(model.outputs) == 1 and metric_output is None:
            return with_baselines({"format": fmt, **evaluate_model(model.model, data, split)}, data, split)
    with model:
        x, y = data.arrays(split)
        name = runtime.metric_output(model, metric_output)
        outputs = runtime.predict_all(model, model.validate(x))
        per_output = _per_output(data, split, outputs)  # a multi-output recipe's: each on its own labels
        metrics = per_output.get(name) or _task_metrics(data, x, y, outputs[name])
    result = {"format": fmt, "output": name, **metrics, "split": split, "examples": int(len(y))}
    return with_baselines({**result, "outputs": per_output} if per_output else result, data, split)


def with_baselines(result: dict, data, split: str) -> dict:
    """`result` with "baselines" added for a tabular recipe: a majority-class (or mean) predictor and gradient
    boosting, trained on the same training rows and scored on the same split (`kerakit.baselines`)."""
    from kerakit.baselines import baselines

    found = baselines(data, split)
    return {**result, "baselines": found} if found else result


def evaluate_sample(path: Path, sample: "str | os.PathLike", metric_output: str | None = None) -> dict:
    """Metrics of any model on an .npz sample: the metric output's at the top, every labelled output's
    under "outputs" (by name)."""
    from kerakit import runtime
    from kerakit.sample import read_sample, task_of

    if not path.exists():
        raise KerakitError(f"{str(path)!r} does not exist. Expected a model file or SavedModel directory.")
    data = read_sample(sample)
    if not data.labels:
        raise KerakitError(f"--sample {str(sample)!r} has no labels: add 'label' (or 'label:OUTPUT') to evaluate.")
    with runtime.load(path) as model:
        name = runtime.metric_output(model, metric_output)
        labels = data.labels_by_output(runtime.metric_output(model), [s.name for s in model.outputs])
        if name not in labels:
            raise KerakitError(f"--sample {str(sample)!r} has no labels for output {name!r} "
                               f"(it labels {', '.join(labels)}): add 'label:{name}'.")
        outputs = runtime.predict_all(model, model.validate(data.inputs))
        per_output = {k: task_metrics(task_of(y), y, outputs[k]) for k, y in labels.items()}
        fmt = model.format
    result = {"format": fmt, "output": name, **per_output[name], "split": f"--sample {sample}", "examples": data.size}
    if len(per_output) > 1:
        result["outputs"] = per_output
    return result


def _per_output(data, split: str, outputs: dict) -> dict:
    """Every output's task metrics on its own labels of `split`, by name, for a recipe with several OUTPUTS;
    else {}."""
    declared = data.recipe.outputs
    if not declared or len(declared) < 2:
        return {}
    labels = data.output_labels(split)
    return {name: task_metrics(task, labels[name], np.asarray(outputs[name]), data.label_names(name))
            for name, task in declared.items() if name in outputs}


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


def keras_ready(named: dict) -> dict:
    """Inputs as Keras' fit/predict/evaluate take them: text (an object array) as a string tensor, which Keras'
    array adapter refuses as numpy."""
    if not any(np.asarray(v).dtype == object for v in named.values()):
        return named
    import tensorflow as tf

    return {k: tf.constant(v.astype(str)) if np.asarray(v).dtype == object else v for k, v in named.items()}


def evaluate_model(model, data, split: str = "test") -> dict:
    """Task metrics of `model` on one split of `data` (a `kerakit.data.Data`); a multi-output recipe's (OUTPUTS)
    first output's at the top, and every output's under "outputs", by name."""
    named, y = data.arrays(split)
    x = data.model_input(keras_ready(named))
    predictions = model.predict(x, batch_size=256, verbose=0)
    by_name = data.recipe.check_outputs(model, predictions)
    per_output = _per_output(data, split, by_name)
    if per_output:
        predictions = by_name[data.recipe.judged_output]
    predictions = np.asarray(next(iter(predictions.values())) if isinstance(predictions, dict) else predictions)
    metrics = _task_metrics(data, named, y, predictions)
    if per_output:
        metrics["outputs"] = per_output
    metrics["split"] = split
    metrics["examples"] = int(len(y))
    if getattr(model, "compiled", False) and model.loss is not None:
        labels = data.output_labels(split) if per_output else y
        evaluated = model.evaluate(x, labels, batch_size=256, verbose=0, return_dict=True)
        for key, value in evaluated.items():
            metrics.setdefault(key, float(value))
    return metrics
