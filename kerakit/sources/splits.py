"""Splits a practitioner trusts: seeded, stratified by label, by group or by time; the rule said in words.

    splits, rule = assign_splits(frame, label="species", seed=0)
    rule  # 'stratified by species, seed 0: train 80 %, validation 10 %, test 10 %'
    splits, rule = split_labels(frame, {"species": "classification", "mass": "regression"}, seed=0)
    rule  # 'stratified by species (the first category label of species, mass), seed 0: ...'
"""

from __future__ import annotations

import numpy as np

from kerakit.errors import KerakitError

RATIOS = (0.8, 0.1, 0.1)
NAMES = ("train", "validation", "test")


def split_labels(frame, tasks: dict[str, str], **options) -> tuple[np.ndarray, str]:
    """`assign_splits` for a table's label columns ({column: task}, in order; none for a report without a
    label): stratified by the first classification label, shuffled where every label is a number; with several
    labels the rule names the one it stratified by."""
    first = next((c for c, task in tasks.items() if task == "classification"), None)
    label = first or next(iter(tasks), None)
    return assign_splits(frame, label, classification=first is not None,
                         among=tuple(tasks) if len(tasks) > 1 else (), **options)


def assign_splits(frame, label: str | None = None, *, seed: int = 0, ratios=RATIOS, group: str | None = None,
                  time: str | None = None, classification: bool = True, among: tuple = ()) -> tuple[np.ndarray, str]:
    """The split of each row ("train", "validation", "test") and the rule that made it.

    group: every row of one value of this column lands in one split. time: rows sorted by this column,
    the earliest in train and the latest in test. Otherwise shuffled with `seed`, stratified by
    `label` for classification where every class has enough rows. among: every label column, where `label`
    is one of several (the rule says which it stratified by).
    """
    ratios = _checked_ratios(ratios)
    n = len(frame)
    for column in (group, time):
        if column is not None and column not in frame.columns:
            raise KerakitError(f"Unknown split column {column!r}. Columns: {', '.join(frame.columns)}.")
    shares = ", ".join(f"{name} {r:.0%}" for name, r in zip(NAMES, ratios))
    if time is not None:
        order = np.argsort(_sortable(frame[time]), kind="stable")
        return _by_position(order, n, ratios), f"by time ({time}: earliest in train, latest in test): {shares}"
    rng = np.random.default_rng(seed)
    if group is not None:
        groups = frame[group].to_numpy()
        unique = rng.permutation(np.unique(groups))
        cut = _cuts(len(unique), ratios)
        where = {g: NAMES[int(np.searchsorted(cut, i, side="right"))] for i, g in enumerate(unique)}
        return np.array([where[g] for g in groups]), f"by group ({group}: a group in one split), seed {seed}: " \
            f"{shares} of the groups"
    if label is not None and classification:
        counts = frame[label].value_counts()
        if len(counts) and counts.min() * min(r for r in ratios if r) >= 1:
            which = f" (the first category label of {', '.join(among)})" if among else ""
            return _stratified(frame[label].to_numpy(), ratios, rng), \
                f"stratified by {label}{which}, seed {seed}: {shares}"
    why = " (every label a number)" if among and not classification else ""
    return _by_position(rng.permutation(n), n, ratios), f"shuffled{why}, seed {seed}: {shares}"


def _checked_ratios(ratios) -> tuple[float, float, float]:
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise KerakitError(f"Invalid split ratios {ratios}: expected train, validation and test shares "
                           "(train > 0) that sum to 1, e.g. 0.8,0.1,0.1.")
    return ratios


def _cuts(n: int, ratios) -> np.ndarray:
    """Positions where train ends and validation ends, for n items."""
    return np.round(np.cumsum(ratios)[:2] * n).astype(int)


def _by_position(order: np.ndarray, n: int, ratios) -> np.ndarray:
    out = np.empty(n, dtype=object)
    train_end, val_end = _cuts(n, ratios)
    out[order[:train_end]], out[order[train_end:val_end]], out[order[val_end:]] = NAMES
    return out.astype(str)


def _stratified(labels: np.ndarray, ratios, rng) -> np.ndarray:
    """Each class split by the ratios on its own (rounded per class), shuffled with `rng`."""
    out = np.empty(len(labels), dtype=object)
    for value in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == value))
        out[rows] = _by_position(np.arange(len(rows)), len(rows), ratios)
    return out.astype(str)


def _sortable(values) -> np.ndarray:
    """A time column as sortable numbers: dates parsed, else numbers, else the text itself."""
    import pandas as pd

    parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    if parsed.notna().mean() >= 0.95:
        return parsed.fillna(parsed.max()).to_numpy()
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().mean() >= 0.95:
        return numbers.fillna(numbers.max()).to_numpy()
    return values.astype(str).to_numpy()
