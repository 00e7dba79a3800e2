"""The task metric has one definition: what each task computes, which way is better,
and when an artifact's metric is worse than allowed. Plain NumPy, no TensorFlow, no run."""

import math

import numpy as np
import pytest

from kerakit import metrics
from kerakit.errors import KerakitError

LABELS = np.array([0, 1, 2, 2])
PROBABILITIES = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])  # last one wrong


def test_classification_metrics_from_probabilities():
    result = metrics.task_metrics("classification", LABELS, PROBABILITIES, ["a", "b", "c"])
    assert result["accuracy"] == 0.75
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert [row["class"] for row in result["per_class"]] == ["a", "b", "c"]
    assert result["per_class"][2] == {"class": "c", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                      "support": 2}


def test_one_sigmoid_unit_is_a_binary_classifier():
    result = metrics.classification_metrics([0, 1, 1], [[0.2], [0.9], [0.4]])
    assert result["accuracy"] == pytest.approx(2 / 3) and result["class_names"] == ["0", "1"]


def test_scores_of_any_rank_are_classes_along_the_last_axis():
    """Per-pixel (N, H, W, C) scores against (N, H, W) labels: pixel accuracy and mean IoU over every position."""
    labels = np.array([[[0, 1], [2, 2]]])                      # one 2x2 image
    scores = np.eye(3)[np.array([[[0, 1], [2, 0]]])]             # (1, 2, 2, 3): the last pixel wrong
    result = metrics.classification_metrics(labels, scores)
    assert result["accuracy"] == 0.75 and result["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert result["mean_iou"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics.score("classification", "accuracy", labels.reshape(1, 4), scores.reshape(1, 4, 3)) == 0.75
    assert "mean_iou" not in metrics.classification_metrics(LABELS, PROBABILITIES)  # per row: no positions


def test_labels_that_do_not_fit_the_outputs_are_refused_naming_both_shapes():
    with pytest.raises(KerakitError, match=r"Labels of shape \(2, 3\) do not fit outputs of shape \(2, 4, 3\): a class "
                                           r"head takes one class index per row or position, labels of shape \(2, 4\)"):
        metrics.classification_metrics(np.zeros((2, 3), int), np.ones((2, 4, 3)) / 3)
    with pytest.raises(KerakitError, match=r"Labels of shape \(2, 4\) do not fit outputs of shape \(2, 4, 4\)"):
        metrics.regression_metrics(np.zeros((2, 4)), np.zeros((2, 4, 4)))
    assert metrics.regression_metrics(np.ones((2, 4, 4)), np.zeros((2, 4, 4)))["mae"] == 1.0  # per element


def test_regression_metrics():
    result = metrics.task_metrics("regression", [1.0, 2.0, 3.0], [[1.5], [2.0], [2.0]])
    assert result["mae"] == pytest.approx(0.5)
    assert result["mse"] == pytest.approx((0.25 + 1) / 3)
    assert result["rmse"] == pytest.approx(math.sqrt((0.25 + 1) / 3))
    assert result["r2"] == pytest.approx(1 - 1.25 / 2)


def test_r2_of_constant_labels_is_nan_not_an_error():
    assert math.isnan(metrics.regression_metrics([2.0, 2.0], [1.0, 3.0])["r2"])


def test_score_is_the_one_number_of_the_recipes_metric():
    assert metrics.score("classification", "accuracy", LABELS, PROBABILITIES) == 0.75
    assert metrics.score("regression", "mae", [1.0, 2.0, 3.0], [1.5, 2.0, 2.0]) == pytest.approx(0.5)
    assert metrics.score("regression", "rmse", [0.0, 0.0], [3.0, 4.0]) == pytest.approx(math.sqrt(12.5))


@pytest.mark.parametrize("task, metric, allowed", [
    ("classification", "rmse", "accuracy, macro_f1"),
    ("regression", "accuracy", "mae, mse, rmse, r2"),
    ("regression", "MAE", "mae, mse, rmse, r2"),
])
def test_a_metric_the_task_does_not_compute_is_refused_naming_the_allowed_ones(task, metric, allowed):
    with pytest.raises(KerakitError, match=rf"Invalid METRIC='{metric}' for a {task} recipe. Expected one of {allowed}"):
        metrics.score(task, metric, [0], [0])


def test_every_task_default_is_a_metric_the_task_computes():
    for task, metric in metrics.TASK_DEFAULTS.items():
        assert metrics.check_metric(task, metric) == metric
    assert metrics.TASK_DEFAULTS == {"classification": "accuracy", "regression": "mae", "forecasting": "mae"}


@pytest.mark.parametrize("name, expected", [
    ("accuracy", "max"), ("val_accuracy", "max"), ("macro_f1", "max"), ("r2", "max"),
    ("mae", "min"), ("val_mae", "min"), ("mse", "min"), ("rmse", "min"),
    ("loss", "min"), ("val_loss", "min"), ("val_mean_absolute_error", "min"), ("sparse_categorical_crossentropy_loss", "min"),
])
def test_direction(name, expected):
    assert metrics.direction(name) == expected


def test_unknown_metric_direction_names_the_known_ones():
    with pytest.raises(KerakitError, match=r"Unknown metric 'val_auc'.*accuracy, macro_f1, mae, mse, rmse, r2"):
        metrics.direction("val_auc")


@pytest.mark.parametrize("metric, reference, value, expected", [
    ("accuracy", 0.98, 0.965, "accuracy dropped 1.50 points (allowed 1.00)"),
    ("accuracy", 0.98, 0.97, None),  # exactly the allowed drop
    ("accuracy", 0.98, 0.99, None),  # better
    ("macro_f1", 0.90, 0.85, "macro_f1 dropped 5.00 points (allowed 1.00)"),
    ("mae", 0.20, 0.25, "mae grew by 0.05 (allowed 0.01)"),
    ("mae", 0.20, 0.21, None),  # exactly 5 % more
    ("mae", 0.20, 0.10, None),
    ("rmse", 2.0, 2.5, "rmse grew by 0.5 (allowed 0.1)"),
])
def test_judge_allows_an_absolute_drop_of_a_score_and_a_relative_increase_of_an_error(metric, reference, value,
                                                                                       expected):
    assert metrics.judge(metric, reference, value, max_drop=0.01, max_rel_increase=0.05) == expected


def test_judge_fails_a_non_finite_metric_and_skips_a_non_finite_reference():
    assert metrics.judge("mae", 0.2, float("nan"), max_drop=0.01, max_rel_increase=0.05) == "mae is nan (Keras: 0.2)"
    assert metrics.judge("r2", float("nan"), 0.5, max_drop=0.01, max_rel_increase=0.05) is None


def test_worsening_is_positive_when_worse_in_either_direction():
    assert metrics.worsening("accuracy", 0.9, 0.8) == pytest.approx(0.1)
    assert metrics.worsening("mae", 0.2, 0.3) == pytest.approx(0.1)
    assert metrics.worsening("mae", 0.3, 0.2) == pytest.approx(-0.1)


def test_metrics_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, kerakit.metrics; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
