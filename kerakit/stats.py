"""The statistics of a data profile: how a split is summarised, and how new values are compared with it.

    reference = summarize(train_values)        # decile edges, the share in each bin, a sorted sample
    compare_series(reference, new_values)      # {'psi': 0.31, 'ks': 0.24, ..., 'drift': True}
    profile = profile_split(batches, predict, feature_names={}, class_names=["0", "1"])

One definition for three users: `kerakit train` profiles the training split
into RUN/data_profile.json, `kerakit drift` compares new data with that
profile, and the report's data-quality view compares the test split with
train. Nothing here knows a run, a model or a data pipeline: callers hand in
arrays, batches and a prediction function.

A series is one number per row: each input's per-row mean, std, min and max
(`request_log.row_statistics`, what `kerakit serve` logs per request), plus
each feature of a tabular (rank-1) input. Per series: the population
stability index over the reference's decile bins and the two-sample
Kolmogorov-Smirnov statistic; predicted classes by PSI over classes. A series
drifts when PSI > psi_threshold (0.2 by default, the usual "significant
shift") or KS > ks_threshold (0.2).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from kerakit.errors import KerakitError
from kerakit.request_log import row_statistics

PROFILE_VERSION = 2  # bump when the summary or its binning changes: an older profile is then not used
MAX_TABULAR_FEATURES = 64
SAMPLE = 2000  # reference values kept per series, for KS
PROFILE_ROWS = 100_000  # rows a profile is computed from at most: a seeded sample of a larger split
EPS = 1e-4


def series_of_inputs(inputs: dict[str, np.ndarray], feature_names: dict[str, list[str]] | None = None
                     ) -> dict[str, np.ndarray]:
    """Every series of a batch of named inputs: `image.mean`, ..., and `features[age]` per tabular feature."""
    series = {}
    for name, x in inputs.items():
        for stat, values in row_statistics(x).items():
            series[f"{name}.{stat}"] = values
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[1] <= MAX_TABULAR_FEATURES and x.dtype.kind in "biuf":  # text: its lengths
            names = (feature_names or {}).get(name) or [str(i) for i in range(x.shape[1])]
            for i, feature in enumerate(names):
                series[f"{name}[{feature}]"] = x[:, i].astype(np.float64)
    return series


def prediction_summary(outputs: np.ndarray) -> dict:
    """The predicted class of each row for a vector output, else its value."""
    flat = np.asarray(outputs).reshape(len(outputs), -1)
    if flat.shape[1] > 1:
        return {"classes": flat.argmax(1)}
    return {"values": flat[:, 0].astype(np.float64)}


def summarize(values: np.ndarray) -> dict:
    """One reference series: its decile edges, the share of values in each bin (for PSI), and a sorted sample
    (for KS). The same values in any order give the same summary."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, 11)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    rng = np.random.default_rng(0)
    sample = values if len(values) <= SAMPLE else rng.choice(values, SAMPLE, replace=False)
    return {"edges": edges.tolist(), "proportions": (counts / counts.sum()).tolist(), "sample": np.sort(sample).tolist()}


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


# --------------------------------------------------------------------------- a split's profile

def profile_split(batches: Iterable[dict[str, np.ndarray]], predict: Callable[[dict], np.ndarray],
                  feature_names: dict[str, list[str]], class_names: list[str] | None,
                  keep: int = PROFILE_ROWS) -> dict:
    """The profile of a split: every series `summarize`d, and the distribution of the model's predictions.

    batches: the split's named inputs, batch by batch; predict: named inputs -> the model's first output.
    A split of more than `keep` rows is profiled from `keep` of them, chosen by a hash of each row's
    values: the same rows in any order (a shuffled pipeline) give the same profile, in bounded memory.
    """
    names, chunks, rows, pending, n_classes = None, [], 0, 0, None
    for x in batches:
        series = series_of_inputs(x, feature_names)
        outputs = np.asarray(predict(x))
        n_classes = outputs.reshape(len(outputs), -1).shape[1]
        prediction = next(iter(prediction_summary(outputs).values())).astype(np.float64)
        names = list(series)
        chunks.append(np.column_stack([*series.values(), prediction]))
        rows, pending = rows + len(chunks[-1]), pending + len(chunks[-1])
        if pending > 2 * keep:  # compacted now and then, not per batch: the copies stay linear in the rows
            chunks = [_sample_rows(np.concatenate(chunks), keep)]
            pending = len(chunks[0])
    if not chunks:
        raise KerakitError("There are no rows to profile: the split is empty.")
    kept = _sample_rows(np.concatenate(chunks), keep)
    profile = {"version": PROFILE_VERSION, "rows": rows, "profiled_rows": len(kept), "feature_names": feature_names,
               "series": {name: summarize(kept[:, i]) for i, name in enumerate(names)}}
    predicted = kept[:, -1]
    if n_classes > 1:
        counts = np.bincount(predicted.astype(int), minlength=n_classes)
        profile["predictions"] = {"kind": "classes", "proportions": (counts / counts.sum()).tolist(),
                                  "class_names": class_names or [str(i) for i in range(n_classes)]}
    else:
        profile["predictions"] = {"kind": "values", **summarize(predicted)}
    return profile


def _sample_rows(matrix: np.ndarray, keep: int) -> np.ndarray:
    """`keep` rows of `matrix` (all of them when there are no more), chosen by a hash of their values."""
    if len(matrix) <= keep:
        return matrix
    return matrix[np.sort(np.argpartition(_row_keys(matrix), keep)[:keep])]


def _row_keys(matrix: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's values (splitmix64's mixer over the float64 bits), for an order-free sample."""
    bits = np.ascontiguousarray(matrix, dtype=np.float64).view(np.uint64)
    keys = np.full(len(bits), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for column in bits.T:
        keys = (keys ^ column) * np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(31)
    return keys
