"""A data-quality view of a tabular input: one row per feature, for the report's Data section.

    rows = feature_quality(x_train, x_test, ["age", "sex", ...])
    rows[0]  # {'feature': 'age', 'missing': 0, 'min': ..., 'median': ..., 'max': ..., 'psi': ..., 'ks': ...,
             #  'flags': ['constant'] or [] ...}

Per feature, on the training split: missing values (NaN or infinite), min,
median and max; flags for a constant feature (one value in train), a
duplicate (the same column as an earlier feature) and a shift (the test
split's distribution differs from train's by the PSI or KS thresholds of
`kerakit drift`, whose statistics these are: `kerakit.stats`).
"""

from __future__ import annotations

import numpy as np

from kerakit import stats


def feature_quality(train: np.ndarray, test: np.ndarray, names: list[str] | None = None,
                    psi_threshold: float = 0.2, ks_threshold: float = 0.2) -> list[dict]:
    """Per-feature summary and flags of a rank-2 (rows x features) input, train against test."""
    train, test = np.asarray(train, dtype=np.float64), np.asarray(test, dtype=np.float64)
    names = list(names) if names else [str(i) for i in range(train.shape[1])]
    rows = []
    for i, name in enumerate(names):
        column, finite = train[:, i], np.isfinite(train[:, i])
        values = column[finite]
        flags = []
        if len(np.unique(values)) <= 1:
            flags.append("constant")
        twin = next((names[j] for j in range(i) if np.array_equal(train[:, j], column, equal_nan=True)), None)
        if twin is not None:
            flags.append(f"duplicate of {twin}")
        row = {"feature": name, "missing": int((~finite).sum()),
               "min": float(values.min()) if len(values) else float("nan"),
               "median": float(np.median(values)) if len(values) else float("nan"),
               "max": float(values.max()) if len(values) else float("nan"), "psi": None, "ks": None}
        test_values = test[:, i][np.isfinite(test[:, i])]
        if len(values) and len(test_values):
            shift = stats.compare_series(stats.summarize(values), test_values, psi_threshold, ks_threshold)
            row.update(psi=shift["psi"], ks=shift["ks"])
            if shift["drift"] and "constant" not in flags:
                flags.append("train/test shift")
        rows.append({**row, "flags": flags})
    return rows
