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
(`request_log.row_statistics`, what `kerakit serve` logs per request), or the
value itself for an input of one value per row (a table's column; a string's
length), plus each feature of a tabular (rank-1) input. Per series: the population
stability index over the reference's decile bins, with missing values (NaN:
a table's empty cell) as one more bin, and the two-sample Kolmogorov-Smirnov
statistic over the values present; predicted classes by PSI over classes. A series
drifts when PSI > psi_threshold (0.2 by default, the usual "significant
shift") or KS > ks_threshold (0.2).

A string input of one value per row (a table's text column) also has its
categories profiled (`summarize_categories`): the TOP_CATEGORIES most common
values with their share of the rows, missing ("") always, and one "other"
bucket; new values training never saw fall in "other". They drift by PSI over
those buckets above the same psi_threshold, like predicted classes. PSI, not a
chi-square test: chi-square's p-value measures evidence, so a request log of a
million rows calls a 1 % change in the mix significant and a log of 50 rows
misses a large one, while PSI measures the size of the shift and reads on the
same scale as every other series.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np

from kerakit.errors import KerakitError
from kerakit.request_log import category_key, row_statistics, strings_per_row

PROFILE_VERSION = 4  # bump when the summary or its binning changes: an older profile is then not used (3: categories;
# 4: missing values counted apart, where 3 put NaN through the quantiles and every comparison came out false, and
# an input of one value per row as one series)
MAX_TABULAR_FEATURES = 64
SAMPLE = 2000  # reference values kept per series, for KS
PROFILE_ROWS = 100_000  # rows a profile is computed from at most: a seeded sample of a larger split
EPS = 1e-4
TOP_CATEGORIES = 20  # values of a string input counted by name; the rest share the "other" bucket
FREE_TEXT = 0.5  # a string input whose top values cover less of the rows is free text: its lengths are its series
MISSING = ""


def series_of_inputs(inputs: dict[str, np.ndarray], feature_names: dict[str, list[str]] | None = None
                     ) -> dict[str, np.ndarray]:
    """Every series of a batch of named inputs: `image.mean`, ..., and `features[age]` per tabular feature; an
    input of one value per row (a table's column) is one series, `bill_mm` (its value) or `island.length` (a
    string's), where its mean, std, min and max would be the same series four times (std always 0)."""
    series = {}
    for name, x in inputs.items():
        one = one_per_row(x)
        if one is not None:
            series[one.format(name=name)] = row_statistics(x)["mean"]
            continue
        for stat, values in row_statistics(x).items():
            series[f"{name}.{stat}"] = values
        x = np.asarray(x)
        if x.ndim == 2 and x.shape[1] <= MAX_TABULAR_FEATURES and x.dtype.kind in "biuf":  # text: its lengths
            names = (feature_names or {}).get(name) or [str(i) for i in range(x.shape[1])]
            for i, feature in enumerate(names):
                series[f"{name}[{feature}]"] = x[:, i].astype(np.float64)
    return series


def one_per_row(x: np.ndarray) -> str | None:
    """The series name pattern of an input with one value per row ("{name}" for a number, "{name}.length" for
    a string), None for any other input."""
    x = np.asarray(x)
    if x.size != len(x) or not len(x):
        return None
    return "{name}.length" if x.dtype.kind in "OUS" else "{name}"


def prediction_summary(outputs: np.ndarray) -> dict:
    """The predicted class of each row for a vector output, else its value."""
    flat = np.asarray(outputs).reshape(len(outputs), -1)
    if flat.shape[1] > 1:
        return {"classes": flat.argmax(1)}
    return {"values": flat[:, 0].astype(np.float64)}


def summarize(values: np.ndarray) -> dict:
    """One reference series: its decile edges, the share of values in each bin (for PSI), a sorted sample (for
    KS), and the share of rows missing (NaN: a table's empty cell), counted apart from the bins and the sample.
    The same values in any order give the same summary."""
    values = np.asarray(values, dtype=np.float64)
    present = np.sort(values[~np.isnan(values)])
    missing = _missing_share(values, present)
    if not len(present):  # every row missing: one empty bin, nothing to sample
        return {"edges": [], "proportions": [1.0], "sample": [], "missing": missing}
    edges = np.unique(np.quantile(present, np.linspace(0, 1, 11)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    rng = np.random.default_rng(0)
    sample = present if len(present) <= SAMPLE else rng.choice(present, SAMPLE, replace=False)
    return {"edges": edges.tolist(), "proportions": (counts / counts.sum()).tolist(), "sample": np.sort(sample).tolist(),
            "missing": missing}


def _missing_share(values: np.ndarray, present: np.ndarray) -> float:
    """The share of `values` missing, where `present` are the others."""
    return round(1 - len(present) / len(values), 6) if len(values) else 0.0


def psi(reference: dict, values: np.ndarray) -> float:
    """Population stability index of `values` over the decile bins of a `summarize`d reference, with missing
    values (NaN) as one more bin: a column that starts arriving empty drifts like one whose values move. Where
    neither side has a missing value that bin adds nothing.

    >>> ref = summarize(np.arange(100.0))
    >>> round(psi(ref, np.arange(100.0)), 6), psi(ref, np.where(np.arange(100) < 30, np.nan, np.arange(100.0))) > 0.2
    (0.0, True)
    """
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    edges = np.asarray(reference["edges"])
    counts = np.bincount(np.searchsorted(edges, values[~missing], side="left"), minlength=len(edges) + 1)
    was_missing = reference.get("missing", 0.0)  # a profile of kerakit 3 and older had no missing share
    expected = np.append(np.asarray(reference["proportions"]) * (1 - was_missing), was_missing)
    return proportions_psi(expected, np.append(counts, missing.sum()) / max(len(values), 1))


def proportions_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two distributions over the same bins (or classes); empty bins count as EPS, not log(0)."""
    expected, actual = np.clip(expected, EPS, None), np.clip(actual, EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def compare_series(reference: dict, values: np.ndarray, psi_threshold: float = 0.2, ks_threshold: float = 0.2) -> dict:
    """PSI and two-sample KS statistic of new `values` against one `summarize`d reference series, and the share
    of rows missing on each side. KS and the medians are over the values present (KS is 0 where a side has
    none: the missing bin of PSI then says it).

    >>> rng = np.random.default_rng(0)
    >>> compare_series(summarize(rng.normal(size=5000)), rng.normal(1.0, size=500))["drift"]
    True
    """
    from scipy.stats import ks_2samp

    values = np.asarray(values, dtype=np.float64)
    present, sample = values[~np.isnan(values)], np.asarray(reference["sample"])
    value = psi(reference, values)
    ks = float(ks_2samp(sample, present).statistic) if len(sample) and len(present) else 0.0
    return {"psi": round(value, 4), "ks": round(ks, 4),
            "reference_median": float(np.median(sample)) if len(sample) else None,
            "new_median": float(np.median(present)) if len(present) else None,
            "reference_missing": reference.get("missing", 0.0),
            "new_missing": _missing_share(values, present),
            "drift": value > psi_threshold or ks > ks_threshold}


# --------------------------------------------------------------------------- categories of a string input

def summarize_categories(values: Sequence[str], top: int = TOP_CATEGORIES) -> dict | None:
    """One string input's reference: its `top` most common values (ties by value) and missing (""), each with
    its share of the rows, then the share of every other value; None for free text (ids, sentences), whose top
    values cover under half of the rows.

    >>> summarize_categories(["a", "a", "b", ""], top=1)
    {'values': ['a', ''], 'proportions': [0.5, 0.25, 0.25]}
    """
    counts, n = Counter(values), len(values)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    if not n or sum(c for _, c in ranked) < FREE_TEXT * n:
        return None
    named = [v for v, _ in ranked] + ([] if MISSING in dict(ranked) else [MISSING])
    shares = [counts.get(v, 0) / n for v in named]
    return {"values": named, "proportions": [*shares, (n - sum(counts.get(v, 0) for v in named)) / n]}


def compare_categories(reference: dict, keys: Sequence[str], psi_threshold: float = 0.2) -> dict:
    """PSI of new rows' `request_log.category_key`s over a `summarize_categories` reference's buckets (values
    training never saw count as "other"), each bucket's share before and after (value None: other), and the
    bucket that moved most.

    >>> ref = summarize_categories(["a"] * 50 + ["b"] * 50)
    >>> row = compare_categories(ref, [category_key("b")] * 80 + [category_key("c")] * 20)
    >>> row["drift"], row["moved"]
    (True, {'value': 'a', 'reference': 0.5, 'new': 0.0})
    """
    index = {category_key(v): i for i, v in enumerate(reference["values"])}
    other = len(index)
    counts = np.bincount([index.get(k, other) for k in keys], minlength=other + 1)
    new, expected = counts / max(counts.sum(), 1), np.asarray(reference["proportions"])
    value = proportions_psi(expected, new)
    buckets = [{"value": v, "reference": round(float(e), 4), "new": round(float(a), 4)}
               for v, e, a in zip([*reference["values"], None], expected, new)]
    moved = max(buckets, key=lambda b: abs(b["new"] - b["reference"]))
    return {"psi": round(value, 4), "buckets": buckets, "moved": moved, "drift": value > psi_threshold}


# --------------------------------------------------------------------------- a split's profile

def profile_split(batches: Iterable[dict[str, np.ndarray]], predict: Callable[[dict], np.ndarray],
                  feature_names: dict[str, list[str]], class_names: list[str] | None,
                  keep: int = PROFILE_ROWS) -> dict:
    """The profile of a split: every series `summarize`d, and the distribution of the model's predictions.

    batches: the split's named inputs, batch by batch; predict: named inputs -> the model's first output.
    A split of more than `keep` rows is profiled from `keep` of them, chosen by a hash of each row's
    values: the same rows in any order (a shuffled pipeline) give the same profile, in bounded memory.
    """
    names, text_names, chunks, rows, pending, n_classes = None, [], [], 0, 0, None
    for x in batches:
        series = series_of_inputs(x, feature_names)
        strings = {name: s for name, values in x.items() if (s := strings_per_row(values)) is not None}
        outputs = np.asarray(predict(x))
        n_classes = outputs.reshape(len(outputs), -1).shape[1]
        prediction = next(iter(prediction_summary(outputs).values())).astype(np.float64)
        names, text_names = list(series), list(strings)
        # A string's digest rides in the numbers, so the rows kept depend on the text too, not on the order.
        numbers = np.column_stack([*series.values(), *map(_digests, strings.values()), prediction])
        chunks.append((numbers, _text_matrix(strings.values(), len(numbers))))
        rows, pending = rows + len(numbers), pending + len(numbers)
        if pending > 2 * keep:  # compacted now and then, not per batch: the copies stay linear in the rows
            chunks = [_sample_rows(chunks, keep)]
            pending = len(chunks[0][0])
    if not chunks:
        raise KerakitError("There are no rows to profile: the split is empty.")
    kept, kept_text = _sample_rows(chunks, keep)
    categories = {name: summarize_categories(kept_text[:, j].tolist()) for j, name in enumerate(text_names)}
    profile = {"version": PROFILE_VERSION, "rows": rows, "profiled_rows": len(kept), "feature_names": feature_names,
               "series": {name: summarize(kept[:, i]) for i, name in enumerate(names)},
               "categories": {name: summary for name, summary in categories.items() if summary is not None}}
    predicted = kept[:, -1]
    if n_classes > 1:
        counts = np.bincount(predicted.astype(int), minlength=n_classes)
        profile["predictions"] = {"kind": "classes", "proportions": (counts / counts.sum()).tolist(),
                                  "class_names": class_names or [str(i) for i in range(n_classes)]}
    else:
        profile["predictions"] = {"kind": "values", **summarize(predicted)}
    return profile


def _digests(strings: list[str]) -> np.ndarray:
    """52 bits of each string's `category_key`, exact in a float64."""
    return np.array([int(category_key(v), 16) >> 12 for v in strings], dtype=np.float64)


def _text_matrix(columns: Iterable[list[str]], rows: int) -> np.ndarray:
    """Rows x string inputs, as an object array."""
    columns = list(columns)
    matrix = np.empty((rows, len(columns)), dtype=object)
    for j, column in enumerate(columns):
        matrix[:, j] = column
    return matrix


def _sample_rows(chunks: list[tuple[np.ndarray, np.ndarray]], keep: int) -> tuple[np.ndarray, np.ndarray]:
    """`keep` rows of the (numbers, text) chunks (all of them when there are no more), chosen by a hash of
    their numbers."""
    numbers, text = (np.concatenate([c[i] for c in chunks]) for i in (0, 1))
    if len(numbers) <= keep:
        return numbers, text
    chosen = np.sort(np.argpartition(_row_keys(numbers), keep)[:keep])
    return numbers[chosen], text[chosen]


def _row_keys(matrix: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's values (splitmix64's mixer over the float64 bits), for an order-free sample."""
    bits = np.ascontiguousarray(matrix, dtype=np.float64).view(np.uint64)
    keys = np.full(len(bits), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for column in bits.T:
        keys = (keys ^ column) * np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(31)
    return keys
