"""A metric change comes with its 95 % interval, and a verdict says when the rows cannot decide.

Constructed predictions, no TensorFlow: Keras and an "artifact" answer the same rows; only the rows on
which they disagree move the change.
"""

import math
import time

import numpy as np
import pytest

from kerakit import metrics
from kerakit.export.confidence import bootstrap, decide, from_differences, paired_change, reason, rows_needed
from kerakit.export.source import sample_calibration_rows, sample_rows_for


def _classifier_pair(rows: int, lost: int, gained: int = 0):
    """Labels, Keras's scores (right on every row but the first `gained`), an artifact's (wrong on the first
    `lost` of the rows Keras gets right, right on the `gained` rows): b = lost, c = gained."""
    labels = np.zeros(rows, int)
    keras = np.tile([0.9, 0.1], (rows, 1))
    keras[:gained] = [0.1, 0.9]
    artifact = np.tile([0.9, 0.1], (rows, 1))
    artifact[gained:gained + lost] = [0.1, 0.9]
    return labels, keras, artifact


def test_the_accuracy_change_is_the_mean_paired_difference_with_its_standard_error():
    labels, keras, artifact = _classifier_pair(30, lost=1)
    change = paired_change("classification", "accuracy", labels, keras, artifact)
    sd = math.sqrt((1 - 30 * (1 / 30) ** 2) / 29)  # one -1 among 30 differences, ddof=1
    assert change.value == pytest.approx(-1 / 30) and change.rows == 30 and change.method == "paired"
    assert change.high - change.value == pytest.approx(1.959964 * sd / math.sqrt(30))
    assert change.interval == pytest.approx([-0.0987, 0.0320], abs=1e-4)  # -3.33 points ± 6.53
    # b = c: no change, and an interval around it from the 4 informative rows.
    labels, keras, artifact = _classifier_pair(100, lost=2, gained=2)
    change = paired_change("classification", "accuracy", labels, keras, artifact)
    assert change.value == 0 and change.low == pytest.approx(-change.high) and change.high > 0.03


def test_no_disagreement_is_no_change_at_all():
    labels, keras, _ = _classifier_pair(30, lost=0)
    change = paired_change("classification", "accuracy", labels, keras, keras.copy())
    assert change.interval == [0.0, 0.0]
    assert decide(change, "accuracy", 1.0, max_drop=0.0, max_rel_increase=0.05).decision == "within"


@pytest.mark.parametrize("rows, lost, limit, decision", [
    (1000, 2, 0.01, "within"),     # -0.20 points ± 0.28: the whole interval within a 1-point drop
    (80, 15, 0.05, "beyond"),      # -18.75 ± 8.61: the whole interval past a 5-point drop
    (30, 1, 0.01, "undecided"),    # -3.33 ± 6.53 across a 1-point limit: one row is 3.3 points
    (30, 3, 0.01, "undecided"),    # -10.00 ± 10.92: the observed drop is 10 points, and still a coin flip
    (80, 2, 0.05, "undecided"),    # -2.50 ± 3.44 against 5 points: 80 rows cannot say 2 flips are within
])
def test_three_outcomes_within_beyond_and_cannot_decide(rows, lost, limit, decision):
    labels, keras, artifact = _classifier_pair(rows, lost)
    change = paired_change("classification", "accuracy", labels, keras, artifact)
    outcome = decide(change, "accuracy", 1.0, max_drop=limit, max_rel_increase=0.05)
    assert outcome.decision == decision
    assert (outcome.rows_needed is not None) == (decision == "undecided")


def test_reasons_state_the_change_its_interval_rows_and_limit():
    labels, keras, artifact = _classifier_pair(80, lost=15)
    change = paired_change("classification", "accuracy", labels, keras, artifact)
    outcome = decide(change, "accuracy", 1.0, max_drop=0.05, max_rel_increase=0.05)
    assert reason(change, outcome, "accuracy", 1.0) == "accuracy dropped 18.75 points ± 8.61 (95 %, 80 rows; allowed 5.00)"
    labels, keras, artifact = _classifier_pair(30, lost=1)
    change = paired_change("classification", "accuracy", labels, keras, artifact)
    outcome = decide(change, "accuracy", 1.0, max_drop=0.01, max_rel_increase=0.05)
    assert reason(change, outcome, "accuracy", 1.0, lambda rows: "a larger test split") == (
        "accuracy change -3.33 points ± 6.53 (95 %, 30 rows): these rows cannot decide against the 1.00-point "
        "limit; verify on about 490 rows (a larger test split)")
    assert reason(change, decide(change, "accuracy", 1.0, 0.2, 0.05), "accuracy", 1.0) is None


def test_the_rows_asked_for_decide_when_the_change_is_what_the_few_rows_showed():
    """30 rows, 3 lost: 10 points down but undecided. At the rows asked for, the same 10 % decides."""
    labels, keras, artifact = _classifier_pair(30, lost=3)
    few = decide(paired_change("classification", "accuracy", labels, keras, artifact), "accuracy", 1.0, 0.01, 0.05)
    assert few.decision == "undecided" and few.rows_needed == 91
    labels, keras, artifact = _classifier_pair(100, lost=10)
    enough = decide(paired_change("classification", "accuracy", labels, keras, artifact), "accuracy", 1.0, 0.01, 0.05)
    assert enough.decision == "beyond"
    assert rows_needed(30, 0.01, -0.05, 0.07, 0.01) is None  # the change is the limit itself: no number decides


def test_other_metrics_use_a_seeded_paired_bootstrap_that_agrees_with_the_metric():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    keras = rng.dirichlet(np.ones(4), 500)
    artifact = keras + rng.normal(0, 0.05, keras.shape)
    change = paired_change("classification", "macro_f1", labels, keras, artifact)
    assert change.method == "bootstrap" and change.rows == 500
    assert change.value == pytest.approx(metrics.score("classification", "macro_f1", labels, artifact)
                                         - metrics.score("classification", "macro_f1", labels, keras))
    assert change.low < change.value < change.high
    assert paired_change("classification", "macro_f1", labels, keras, artifact) == change  # seeded
    assert paired_change("classification", "macro_f1", labels, keras, keras.copy()).interval == [0.0, 0.0]
    y = rng.normal(size=(500, 3))
    keras_values = y + rng.normal(0, 0.5, y.shape)
    for metric in ("mae", "mse", "rmse", "r2"):
        drifted = paired_change("regression", metric, y, keras_values, keras_values + 0.05)
        want = metrics.score("regression", metric, y, keras_values + 0.05) - metrics.score("regression", metric, y,
                                                                                           keras_values)
        assert drifted.value == pytest.approx(want) and drifted.low <= drifted.value <= drifted.high, metric
    more = paired_change("regression", "mae", np.tile(y, (8, 1)), np.tile(keras_values, (8, 1)),
                         np.tile(keras_values + 0.05, (8, 1)))
    narrow = paired_change("regression", "mae", y, keras_values, keras_values + 0.05)
    assert (more.high - more.low) < 0.5 * (narrow.high - narrow.low)  # 8x the rows: about 1/sqrt(8) as wide


def test_an_error_metric_is_judged_by_its_relative_limit_and_told_in_its_units():
    rng = np.random.default_rng(1)
    y = rng.normal(size=400)
    keras = y + rng.normal(0, 0.2, 400)
    change = paired_change("regression", "mae", y, keras, keras + rng.normal(0, 0.3, 400))
    keras_mae = metrics.score("regression", "mae", y, keras)
    outcome = decide(change, "mae", keras_mae, 0.01, 0.05)
    assert outcome.decision == "beyond" and outcome.allowed == pytest.approx(0.05 * keras_mae)
    assert reason(change, outcome, "mae", keras_mae).startswith(f"mae grew by {change.value:.4g}, 95 % interval ")
    constant = paired_change("regression", "r2", np.ones(50), np.ones(50), np.ones(50) * 1.1)
    assert decide(constant, "r2", float("nan"), 0.01, 0.05).decision == "within"  # nothing to compare with


def test_the_bootstrap_is_vectorised_enough_for_every_artifact_of_an_export():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 10_000)
    keras = rng.dirichlet(np.ones(10), 10_000)
    started = time.perf_counter()
    paired_change("classification", "macro_f1", labels, keras, keras + rng.normal(0, 0.02, keras.shape))
    assert time.perf_counter() - started < 10  # ~0.5 s on a 2-core machine: 1,000 resamples of 10,000 rows


def test_bootstrap_takes_any_per_row_statistics():
    stats = np.ones((20, 1))
    change = bootstrap(lambda sums: sums[:, 0] / 20, stats, stats * 2)
    assert change.value == pytest.approx(1.0) and change.rows == 20


def test_paired_differences_of_one_row_cannot_decide():
    change = from_differences([-1.0])
    assert math.isinf(change.high) and decide(change, "accuracy", 1.0, 0.01, 0.05).decision == "undecided"


def test_a_sample_gives_verification_the_rows_calibration_does_not_need():
    """A quarter of a --sample (100 to 300 rows, never over half) calibrates int8; the rest verify."""
    assert [(n, sample_calibration_rows(n)) for n in (30, 160, 256, 400, 1024, 5000)] == \
        [(30, 15), (160, 80), (256, 100), (400, 100), (1024, 256), (5000, 300)]
    for verify in (10, 156, 490, 1000, 4700):
        n = sample_rows_for(verify)
        assert n - sample_calibration_rows(n) >= verify > n - 1 - sample_calibration_rows(n - 1)
