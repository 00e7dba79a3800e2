"""Which examples train and which are held out in fold k of K: the splits of `kerakit cv`.

The examples are the recipe's train and val splits together (the test split
is never touched, so the cross-validated figure can stand beside the test
figure). Classification folds are stratified by label, regression folds are
shuffled, both seeded; a time series is cut into K+1 contiguous blocks in time
order and fold k trains on blocks 1..k and holds out block k+1 (forward
chaining: the model never sees the future of what it is scored on).

>>> train, held_out = fold_masks("forecasting", 10, Fold(index=0, folds=4, seed=0))
>>> train.nonzero()[0].tolist(), held_out.nonzero()[0].tolist()
([0, 1], [2, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerakit.errors import KerakitError

SCHEMES = {"classification": "stratified", "regression": "shuffled", "forecasting": "forward-chaining"}


@dataclass(frozen=True)
class Fold:
    """Fold `index` (0-based) of `folds`, with the seed of the shuffled assignments."""

    index: int
    folds: int
    seed: int

    def to_dict(self, task: str) -> dict:
        return {"index": self.index + 1, "folds": self.folds, "seed": self.seed, "scheme": SCHEMES[task]}


def from_record(record: dict | None) -> Fold | None:
    """The Fold a fold run recorded in its config.json (`fold`, as `Fold.to_dict` wrote it), or None."""
    if not record:
        return None
    return Fold(index=int(record["index"]) - 1, folds=int(record["folds"]), seed=int(record["seed"]))


def check_folds(folds: int, n: int | None = None) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise KerakitError(f"Invalid folds={folds!r}. Expected an integer >= 2 (5 is usual).")
    if n is not None and n < folds + 1:
        raise KerakitError(f"Invalid folds={folds}: the train and val splits hold only {n} examples.")
    return folds


def fold_masks(task: str, n: int, fold: Fold, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train mask, held-out mask) over the `n` pooled examples, in their order."""
    check_folds(fold.folds, n)
    train, held_out = np.zeros(n, bool), np.zeros(n, bool)
    if task == "forecasting":
        blocks = np.array_split(np.arange(n), fold.folds + 1)
        train[np.concatenate(blocks[: fold.index + 1])] = True
        held_out[blocks[fold.index + 1]] = True
        return train, held_out
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "classification":
        counts = np.bincount(np.asarray(labels, int))
        if counts[counts > 0].min() < fold.folds:
            raise KerakitError(f"Invalid folds={fold.folds}: a class has only {counts[counts > 0].min()} examples, "
                               "fewer than the folds (stratified folds need one per class per fold).")
        splitter = StratifiedKFold(fold.folds, shuffle=True, random_state=fold.seed)
    else:
        splitter = KFold(fold.folds, shuffle=True, random_state=fold.seed)
    train_index, held_index = list(splitter.split(np.zeros(n), labels))[fold.index]
    train[train_index], held_out[held_index] = True, True
    return train, held_out
