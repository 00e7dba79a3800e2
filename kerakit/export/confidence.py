"""How sure is a metric change? An artifact and Keras answer the same rows, so the change is paired.

    change = paired_change("classification", "accuracy", labels, keras_outputs, artifact_outputs)
    change.value, change.low, change.high, change.rows     # -0.0333, -0.0986, 0.0319, 30
    outcome = decide(change, "accuracy", keras_value=0.9, max_drop=0.01, max_rel_increase=0.05)
    outcome.decision, outcome.rows_needed                  # 'undecided', 490

- Accuracy (per row; per pixel or position averaged within each row): only rows on which the two
  disagree carry information. Each row's difference d = artifact right - Keras right (b rows of -1,
  c of +1 for one class per row); the change is their mean (c - b) / n, its standard error their sample
  standard deviation / sqrt(n), and the 95 % interval change +- 1.96 SE. No disagreement: [0, 0].
- Any other metric (macro F1, MAE, MSE, RMSE, R2): a paired bootstrap over rows, 1,000 resamples drawn
  with a fixed seed, each scoring Keras and the artifact on the same resampled rows (vectorised: each
  row's sufficient statistics, weighted by how often a resample drew it); the interval is the 2.5th to
  97.5th percentile of the differences.
- Against the limit (a score may drop `max_drop`, an error may grow `max_rel_increase` of Keras's
  value): `within` when the whole interval is inside it, `beyond` when the whole interval is past it,
  `undecided` otherwise: these rows cannot tell, and `rows_needed` is how many would decide 4 times
  in 5 if the change is what these rows show (the interval shrinks as 1 / sqrt(rows)).

No TensorFlow here: NumPy on labels and outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kerakit import metrics

Z95 = 1.959964  # two-sided 95 %
Z_POWER = 0.841621  # rows_needed: the interval clears the limit 4 times in 5 (80 % power) at the observed change
RESAMPLES = 1000
SEED = 0
# The bootstrap's resample weights are drawn in blocks of at most this many (resamples x rows) cells.
BLOCK_CELLS = 2_000_000
_EPSILON = 1e-12


@dataclass(frozen=True)
class Change:
    """An artifact's metric minus Keras's on the same `rows`, with its 95 % interval [low, high]."""

    value: float
    low: float
    high: float
    rows: int
    method: str  # "paired" (mean of per-row differences +- 1.96 SE) or "bootstrap" (paired, percentile)

    @property
    def interval(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Outcome:
    decision: str                 # "within" | "beyond" | "undecided"
    worse: float                  # how much worse than Keras, in the metric's units (negative: better)
    allowed: float                # how much worse the target allows
    worse_low: float = 0.0        # the interval of `worse`
    worse_high: float = 0.0
    rows_needed: int | None = None  # undecided: rows that would decide (None: the change sits on the limit)


def from_differences(differences) -> Change:
    """The mean of per-row paired differences, +- 1.96 standard errors."""
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    n, value = len(d), float(d.mean())
    if not d.any():
        return Change(value, 0.0, 0.0, n, "paired")
    se = float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return Change(value, value - Z95 * se, value + Z95 * se, n, "paired")


def paired_change(task: str, metric: str, labels, keras_outputs, artifact_outputs) -> Change:
    """`metric` of the artifact minus Keras's on the same labelled rows, with a 95 % interval (module doc)."""
    labels = np.asarray(labels)
    n = len(labels)
    if task == "classification":
        truth = labels.reshape(n, -1).astype(int)
        keras_pred, classes = metrics.predicted_classes(keras_outputs)
        artifact_pred, _ = metrics.predicted_classes(artifact_outputs)
        keras_pred, artifact_pred = keras_pred.reshape(n, -1), artifact_pred.reshape(n, -1)
        if metric == "accuracy":
            return from_differences(((artifact_pred == truth).astype(float) - (keras_pred == truth)).mean(1))
        from scipy import sparse  # per row x class counts: mostly zeros when there are many classes

        true_counts = _class_counts(truth, classes)
        keras_stats, artifact_stats = (
            sparse.hstack([_class_counts(pred, classes, truth), _class_counts(pred, classes), true_counts], "csr")
            for pred in (keras_pred, artifact_pred))
        return bootstrap(lambda sums: _macro_f1(sums, classes), keras_stats, artifact_stats)
    return bootstrap(lambda sums: _regression(metric, sums),
                     _regression_stats(labels, keras_outputs), _regression_stats(labels, artifact_outputs))


def bootstrap(score, keras_stats, artifact_stats, resamples: int = RESAMPLES, seed: int = SEED) -> Change:
    """A paired percentile bootstrap over rows. `*_stats` are per-row sums (rows x columns, an array or a
    scipy sparse matrix) that `score` turns into the metric: score(weights @ stats) for every resample's row
    weights at once."""
    n = keras_stats.shape[0]
    value = float(score(_total(artifact_stats))[0] - score(_total(keras_stats))[0])
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BLOCK_CELLS // max(n, 1)))
    differences = []
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        drawn = rng.integers(0, n, (size, n)) + n * np.arange(size)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        differences.append(score(np.asarray(weights @ artifact_stats)) - score(np.asarray(weights @ keras_stats)))
    differences = np.concatenate(differences)
    if not np.isfinite(differences).any():
        return Change(value, math.nan, math.nan, n, "bootstrap")
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return Change(value, float(min(low, value)), float(max(high, value)), n, "bootstrap")


def _total(stats) -> np.ndarray:
    """Column sums as a (1, columns) array, of an array or a sparse matrix."""
    return np.asarray(stats.sum(0)).reshape(1, -1)


def _class_counts(pred: np.ndarray, classes: int, truth: np.ndarray | None = None):
    """Per row, how many positions are predicted as each class (only the correct ones, given `truth`), as a
    sparse (rows x classes) matrix. A label outside 0..classes-1 counts for no class, as in scikit-learn."""
    from scipy import sparse

    rows, flat = np.repeat(np.arange(len(pred)), pred.shape[1]), pred.reshape(-1)
    keep = (flat >= 0) & (flat < classes) & (True if truth is None else (pred == truth).reshape(-1))
    return sparse.csr_matrix((np.ones(int(keep.sum())), (rows[keep], flat[keep])), shape=(len(pred), classes))


def _macro_f1(sums: np.ndarray, classes: int) -> np.ndarray:
    """Macro F1 from summed [true positives | predicted | true] per class: F1 = 2 TP / (predicted + true), 0
    where a class is neither predicted nor present (scikit-learn's zero_division=0)."""
    tp, predicted, true = sums[:, :classes], sums[:, classes:2 * classes], sums[:, 2 * classes:]
    denominator = predicted + true
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(1)


def _regression_stats(labels, outputs) -> np.ndarray:
    """Per row: [count, sum |error|, sum error^2, sum label, sum label^2] over its elements."""
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    error = np.asarray(outputs, dtype=np.float64).reshape(y.shape) - y
    return np.stack([np.full(len(y), y.shape[1], np.float64), np.abs(error).sum(1), (error ** 2).sum(1),
                     y.sum(1), (y ** 2).sum(1)], axis=1)


def _regression(metric: str, sums: np.ndarray) -> np.ndarray:
    count, abs_error, squared_error, total, squares = sums.T
    if metric == "mae":
        return abs_error / count
    if metric == "mse":
        return squared_error / count
    if metric == "rmse":
        return np.sqrt(squared_error / count)
    spread = squares - total ** 2 / count  # r2: 1 - SSE / SST, NaN where the (resampled) labels are constant
    return np.where(spread > 1e-12 * np.maximum(squares, 1), 1 - squared_error / np.where(spread > 0, spread, 1),
                    np.nan)


def decide(change: Change, metric: str, keras_value: float, max_drop: float, max_rel_increase: float) -> Outcome:
    """Is the artifact's change within the target's limit, beyond it, or can these rows not tell?"""
    allowed = metrics.allowed_worsening(metric, keras_value, max_drop, max_rel_increase)
    sign = -1.0 if metrics.direction(metric) == "max" else 1.0  # worse = sign * change
    worse = sign * change.value
    if not math.isfinite(keras_value):
        return Outcome("within", 0.0, allowed)  # nothing to compare with (r2 of constant labels)
    if not math.isfinite(change.value):
        return Outcome("beyond", math.inf, allowed, math.inf, math.inf)
    low, high = sorted((sign * change.low, sign * change.high))
    low, high = min(low, worse), max(high, worse)
    if high <= allowed + _EPSILON:
        return Outcome("within", worse, allowed, low, high)
    if low > allowed + _EPSILON:
        return Outcome("beyond", worse, allowed, low, high)
    return Outcome("undecided", worse, allowed, low, high, rows_needed(change.rows, worse, low, high, allowed))


def rows_needed(rows: int, worse: float, low: float, high: float, allowed: float) -> int | None:
    """Rows whose interval would clear `allowed` 4 times in 5 if `worse` is the truth: the half-width facing the
    limit shrinks as 1 / sqrt(rows). Rounded up to two significant figures; None when `worse` is the limit."""
    facing = (high - worse) if worse < allowed else (worse - low)
    distance = abs(worse - allowed)
    if distance <= _EPSILON or not math.isfinite(facing):
        return None
    needed = rows * ((Z95 + Z_POWER) / Z95) ** 2 * (facing / distance) ** 2
    if needed > 1e8:
        return None
    step = 10 ** max(0, int(math.log10(needed)) - 1)
    return max(rows + 1, int(math.ceil(needed / step) * step))


def points(metric: str) -> bool:
    """A score (accuracy, F1, r2) is told in points (x100, two decimals); an error in its own units (4 digits)."""
    return metrics.direction(metric) == "max"


def reason(change: Change, outcome: Outcome, metric: str, keras_value: float,
           more_rows: Callable[[int | None], str] = lambda rows: "more labelled rows") -> str | None:
    """Why `outcome` fails an artifact (None when it is within the limit), with the interval and its rows.

    beyond:    accuracy dropped 18.75 points +- 8.61 (95 %, 80 rows; allowed 5.00)
               mae grew by 0.05, 95 % interval 0.03 to 0.07 (80 rows, paired bootstrap; allowed 0.01)
    undecided: accuracy change -3.33 points +- 6.53 (95 %, 30 rows): these rows cannot decide against the
               1.00-point limit; verify on about 490 rows (a larger test split)
    """
    if outcome.decision == "within":
        return None
    if not math.isfinite(change.value):
        return f"{metric} is {change.value} (Keras: {keras_value:.4g})"
    if outcome.decision == "beyond":
        verb = "dropped" if points(metric) else "grew by"
        return (f"{metric} {verb} {_amount(outcome.worse, metric)}"
                f"{_spread(outcome.worse, outcome.worse_low, outcome.worse_high, change, metric)}; "
                f"allowed {_number(outcome.allowed, metric)})")
    return (f"{metric} change {interval_text(change, metric)}: these rows cannot decide against "
            f"{limit_text(metric, keras_value, outcome.allowed)}; "
            + more_rows_text(outcome.rows_needed, change.rows, more_rows))


def interval_text(change: Change, metric: str) -> str:
    """`-0.28 points +- 0.54 (95 %, 360 rows)`: a change and its interval, for a log line."""
    if change.interval == [0.0, 0.0]:
        return f"{_amount(change.value, metric, '+')} (no row of {change.rows:,} scored differently from Keras)"
    return f"{_amount(change.value, metric, '+')}{_spread(change.value, change.low, change.high, change, metric, '+')})"


def limit_text(metric: str, keras_value: float, allowed: float) -> str:
    if points(metric):
        return f"the {allowed * 100:.2f}-point limit"
    return f"the allowed growth of {allowed:.4g} (of Keras's {keras_value:.4g})"


def more_rows_text(needed: int | None, rows: int, more_rows: Callable[[int | None], str]) -> str:
    """`verify on about 490 rows (a larger test split)`; `more_rows(needed)` says where they come from."""
    if needed is None:
        return (f"the change sits on the limit itself: many more than {rows:,} rows would be needed "
                f"({more_rows(None)})")
    return f"verify on about {needed:,} rows ({more_rows(needed)})"


def _spread(value: float, low: float, high: float, change: Change, metric: str, sign: str = "") -> str:
    """` +- 6.53 (95 %, 30 rows` or `, 95 % interval 2.10 to 7.90 (80 rows, paired bootstrap` (left open)."""
    if change.method == "paired":
        return f" ± {_number(max(high - value, value - low), metric)} (95 %, {change.rows:,} rows"
    return (f", 95 % interval {_number(low, metric, sign)} to {_number(high, metric, sign)} "
            f"({change.rows:,} rows, paired bootstrap")


def _amount(x: float, metric: str, sign: str = "") -> str:
    return _number(x, metric, sign) + (" points" if points(metric) else "")


def _number(x: float, metric: str, sign: str = "") -> str:
    return f"{x * 100:{sign}.2f}" if points(metric) else f"{x:{sign}.4g}"
