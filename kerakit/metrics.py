"""The task metric: what each task computes, the one number a recipe is judged
by, and which way is better. Verify, evaluate, report and tune all use this
module, so "the task metric" has one definition.

>>> score("classification", "accuracy", [0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
0.6666666666666666
>>> direction("val_mae"), direction("val_loss"), direction("accuracy")
('min', 'min', 'max')
>>> judge("accuracy", 0.98, 0.965, max_drop=0.01, max_rel_increase=0.05)
'accuracy dropped 1.50 points (allowed 1.00)'
>>> judge("mae", 0.2, 0.205, max_drop=0.01, max_rel_increase=0.05) is None
True

A "max" metric (higher is better) may fall by an absolute amount (accuracy
points); a "min" metric (an error) may grow by a fraction of its reference,
since an error's scale is the data's.

No TensorFlow here: these are plain NumPy (and scikit-learn) functions of
labels and model outputs.
"""

from __future__ import annotations

import math

import numpy as np

from kerakit.errors import KerakitError

# The metric a recipe is judged by when it declares no METRIC.
TASK_DEFAULTS = {"classification": "accuracy", "regression": "mae", "forecasting": "mae"}

# The single numbers `task_metrics` computes per task: the allowed METRIC values.
TASK_SCALARS = {"classification": ("accuracy", "macro_f1"), "regression": ("mae", "mse", "rmse", "r2"),
                "forecasting": ("mae", "mse", "rmse")}

# Which way is better: "max" for a score, "min" for an error.
DIRECTIONS = {"accuracy": "max", "macro_f1": "max", "mae": "min", "mse": "min", "rmse": "min", "r2": "max"}

# A change within float rounding of a bound is not a failure.
_EPSILON = 1e-12


def direction(name: str) -> str:
    """"max" or "min": whether a higher `name` is better.

    A `val_` prefix (Keras's validation logs) is ignored. Besides the metrics
    in DIRECTIONS, any name containing "loss" or "error" is an error to
    minimize (Keras's `loss`, `mean_absolute_error`, ...).
    """
    base = name.removeprefix("val_")
    if base in DIRECTIONS:
        return DIRECTIONS[base]
    if "loss" in base or "error" in base:
        return "min"
    raise KerakitError(
        f"Unknown metric {name!r}: cannot tell whether higher or lower is better. Expected one of "
        f"{', '.join(DIRECTIONS)} (optionally with a val_ prefix), or a name containing 'loss' or 'error'."
    )


def check_metric(task: str, metric: str) -> str:
    """`metric` if `task_metrics` computes it for `task`; otherwise a KerakitError naming the allowed ones."""
    if task not in TASK_SCALARS:
        raise KerakitError(f"Invalid task={task!r}. Expected one of {', '.join(TASK_SCALARS)}.")
    if metric not in TASK_SCALARS[task]:
        raise KerakitError(
            f"Invalid METRIC={metric!r} for a {task} recipe. Expected one of {', '.join(TASK_SCALARS[task])} "
            f"(default {TASK_DEFAULTS[task]})."
        )
    return metric


def task_metrics(task: str, labels, outputs, class_names=None) -> dict:
    """Every metric of `task` for model `outputs` against `labels` (per-class rows for classification)."""
    if task == "classification":
        return classification_metrics(labels, outputs, class_names)
    return regression_metrics(labels, outputs)  # a forecast is a regression on the next values


def score(task: str, metric: str, labels, outputs, class_names=None) -> float:
    """The one number of `metric` (the recipe's METRIC) for model `outputs` against `labels`."""
    check_metric(task, metric)
    if task in ("regression", "forecasting"):
        return regression_metrics(labels, outputs)[metric]
    return classification_metrics(labels, outputs, class_names)[metric]


def worsening(metric: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference`, in the metric's units (negative: better)."""
    return reference - value if direction(metric) == "max" else value - reference


def allowed_worsening(metric: str, reference: float, max_drop: float, max_rel_increase: float) -> float:
    """The most `value` may be worse than `reference`: `max_drop` for a score, a fraction of it for an error."""
    return max_drop if direction(metric) == "max" else abs(reference) * max_rel_increase


def judge(metric: str, reference: float, value: float, max_drop: float, max_rel_increase: float) -> str | None:
    """Why `value` (an artifact's metric) is worse than allowed against `reference` (Keras's), or None.

    >>> judge("mae", 0.2, 0.25, max_drop=0.01, max_rel_increase=0.05)
    'mae grew by 0.05 (allowed 0.01)'
    """
    if not math.isfinite(reference):
        return None  # nothing to compare with (r2 of constant labels)
    if not math.isfinite(value):
        return f"{metric} is {value} (Keras: {reference:.4g})"
    worse = worsening(metric, reference, value)
    allowed = allowed_worsening(metric, reference, max_drop, max_rel_increase)
    if worse <= allowed + _EPSILON:
        return None
    if direction(metric) == "max":
        return f"{metric} dropped {worse * 100:.2f} points (allowed {allowed * 100:.2f})"
    return f"{metric} grew by {worse:.4g} (allowed {allowed:.4g})"


def classification_metrics(y_true, probabilities, class_names: list[str] | None = None) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix (rows: true class).

    Scores of any rank are classes along the last axis: a (N, H, W, C) per-pixel softmax against (N, H, W)
    labels, or (N, 16, C) per-position scores against (N, 16), count every position (pixel accuracy), and
    add `mean_iou`, the mean over classes of |true ∩ predicted| / |true ∪ predicted|.

    >>> r = classification_metrics([[0, 1], [1, 1]], [[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.3, 0.7]]])
    >>> r["accuracy"], round(r["mean_iou"], 4)
    (0.75, 0.5833)
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probabilities = np.asarray(probabilities)
    y_true = np.asarray(y_true)
    y_pred, n_classes = predicted_classes(probabilities)
    if y_true.size != y_pred.size:
        raise KerakitError(f"Labels of shape {y_true.shape} do not fit outputs of shape {probabilities.shape}: a "
                           f"class head takes one class index per row or position, labels of shape "
                           f"{probabilities.shape[:-1] if probabilities.ndim >= 2 else probabilities.shape}.")
    y_true = y_true.reshape(-1).astype(int)
    labels = list(range(n_classes))
    names = list(class_names) if class_names else [str(i) for i in labels]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    result = {
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": [
            {"class": names[i], "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(support[i])}
            for i in labels
        ],
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
    }
    if probabilities.ndim > 2:  # per pixel or per position
        result["mean_iou"] = mean_iou(matrix)
    return result


def predicted_classes(probabilities) -> tuple[np.ndarray, int]:
    """The class each score vector picks (flattened over rows and positions), and how many classes there are:
    the argmax of the last axis, or `>= 0.5` for one sigmoid unit.

    >>> predicted_classes([[0.2, 0.8], [0.6, 0.4]]), predicted_classes([[0.7], [0.1]])
    ((array([1, 0]), 2), (array([1, 0]), 2))
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim >= 2 and probabilities.shape[-1] > 1:
        return probabilities.argmax(axis=-1).reshape(-1), probabilities.shape[-1]
    return (probabilities.reshape(-1) >= 0.5).astype(int), 2  # one sigmoid unit


def mean_iou(matrix) -> float:
    """Mean intersection over union of a confusion matrix's classes (those absent from both sides left out).

    >>> mean_iou([[2, 1], [0, 1]])
    0.5833333333333333
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - hits
    return float((hits[union > 0] / union[union > 0]).mean()) if (union > 0).any() else float("nan")


def regression_metrics(y_true, predictions) -> dict:
    """MAE, MSE, RMSE and R² (NaN when the labels are constant), over every element of any shape."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(predictions, dtype=np.float64)
    if y_true.size != y_pred.size:
        raise KerakitError(f"Labels of shape {y_true.shape} do not fit outputs of shape {y_pred.shape}: "
                           "a regression head takes one label per output value.")
    y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "mse": float((err ** 2).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
    }


def forecast_metrics(y_true, predictions, naive, scale: float) -> dict:
    """MAE, RMSE and MASE of a forecast and of the seasonal-naive forecast on the same targets.

    `naive` is the seasonal-naive forecast of each target (the value one
    season earlier); `scale` is MASE's denominator, the mean absolute
    seasonal difference |y[t] - y[t - season]| over the training series
    (Hyndman & Koehler, 2006). A model that does not beat the naive MAE has
    `beats_naive` False.

    >>> r = forecast_metrics([3, 5], [2.5, 5.5], naive=[1, 4], scale=2.0)
    >>> r["model"]["mae"], r["model"]["mase"], r["seasonal_naive"]["mae"], r["beats_naive"]
    (0.5, 0.25, 1.5, True)
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    rows = {}
    for name, forecast in (("model", predictions), ("seasonal_naive", naive)):
        err = np.asarray(forecast, dtype=np.float64).reshape(-1) - y_true
        mae = float(np.abs(err).mean())
        rows[name] = {"mae": mae, "rmse": float(np.sqrt((err ** 2).mean())),
                      "mase": mae / scale if scale > 0 else float("nan")}
    return {**rows, "mase_scale": float(scale), "beats_naive": rows["model"]["mae"] < rows["seasonal_naive"]["mae"]}
