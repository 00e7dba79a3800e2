"""Honest baselines beside a tabular score: would something simpler have done as well?

    rows = kerakit.baselines.baselines(data, "test")   # data: kerakit.data.Data; None for images, text, series
    rows["gradient_boosting"]["accuracy"]               # scikit-learn's HistGradientBoostingClassifier

Two baselines, each trained on the same training rows the model was and scored on the same split by
`kerakit.metrics.task_metrics` (the task metric every other figure uses):

- `majority` (classification: every row gets the training split's most frequent class) or `mean`
  (regression: every row gets the training labels' mean) -- what a model must beat to have learnt anything;
- `gradient_boosting`: scikit-learn's HistGradientBoostingClassifier / Regressor with its defaults and native
  categorical support (`categorical_features=`), the usual strong choice for a table.

Which rows: a recipe made from a table (`kerakit new --from table.csv`) gives its prepared dataset's raw
columns -- numbers as they were read (NaN where missing, which gradient boosting handles natively) and
categories as text, stripped and lowercased as the table recipe reads them, coded by their sorted training
values (a value training never saw is missing) -- without the columns the recipe leaves out (DROPPED:
identifiers, leaky and constant columns), dates and free text. A TFDS recipe with one flat float input gives
that feature vector as the recipe prepares it. Anything else (images, text, forecasts) has no baseline here.
The judged output (TASK's, the first of OUTPUTS) is the one compared.
"""

from __future__ import annotations

import numpy as np

from kerakit.metrics import task_metrics

MAX_CATEGORIES = 255  # HistGradientBoosting's limit (max_bins): beyond it the rarer training values are missing
TABLE_TYPES = ("number", "category", "boolean")  # the column types a baseline takes (a free text or date is left out)
SEED = 0  # gradient boosting's random_state (it matters only with early stopping, past 10,000 rows)


def baselines(data, split: str = "test") -> dict | None:
    """{"majority" | "mean": metrics, "gradient_boosting": metrics, "rows": how the rows were made} of the
    recipe's judged output on `split`, or None where the recipe is not tabular."""
    recipe = data.recipe
    if recipe.task not in ("classification", "regression"):
        return None
    rows = table_rows(data, "train"), table_rows(data, split)
    if rows[0] is None:
        return None
    (x_train, categorical, y_train, described), (x_eval, _, y_eval, _) = rows
    x_train, x_eval = encode_categories(x_train, x_eval, categorical)
    names = data.class_names
    simple = "majority" if recipe.task == "classification" else "mean"
    found = {simple: task_metrics(recipe.task, y_eval, _simple(recipe.task, y_train, len(y_eval), names), names),
             "gradient_boosting": task_metrics(recipe.task, y_eval,
                                               fit_gradient_boosting(recipe.task, x_train, y_train, categorical,
                                                                     x_eval, names), names)}
    for metrics in found.values():
        for key in ("per_class", "confusion_matrix", "class_names"):
            metrics.pop(key, None)
    return {**found, "rows": described, "train_examples": int(len(y_train))}


def table_rows(data, split: str) -> tuple[np.ndarray, list[bool], np.ndarray, str] | None:
    """(features as a float/object matrix, which columns are categories, the judged labels, how they were made)
    of one split, or None where the recipe has no table to give."""
    source = data.fingerprint.get("source") or {}
    if source.get("columns") and split in data.raw:
        return _source_rows(data, split, source)
    flat = [i for i in data.recipe.inputs if len(i.shape) == 1 and i.dtype.startswith("float")]
    if len(data.recipe.inputs) == 1 and flat:
        x, y = data.arrays(split)
        name = flat[0].name
        return (np.asarray(x[name], np.float64), [False] * x[name].shape[1], np.asarray(y),
                f"the recipe's feature vector `{name}` ({x[name].shape[1]} values)")
    return None


def table_columns(data, source: dict) -> dict[str, bool]:
    """{dataset feature: is a category} of the columns a baseline takes: the recipe's raw-column inputs where
    its inputs are the table's columns, else every number and category column the recipe does not drop."""
    dropped = set(getattr(data.recipe.module, "DROPPED", None) or ())
    columns = {name: about for name, about in source["columns"].items()
               if about["type"] in TABLE_TYPES and about["column"] not in dropped}
    inputs = [i.name for i in data.recipe.inputs]
    if set(inputs) <= set(source["columns"]):
        columns = {name: about for name, about in columns.items() if name in inputs}
    return {name: about["type"] != "number" for name, about in columns.items()}


def _source_rows(data, split: str, source: dict):
    columns = table_columns(data, source)
    key = data.recipe.label_key
    parts = {name: [] for name in [*columns, key]}
    for batch in data.raw[split].map(lambda e: {k: e[k] for k in parts}).batch(4096).as_numpy_iterator():
        for name, values in batch.items():
            parts[name].append(values)
    if not parts[key]:
        return np.zeros((0, len(columns))), list(columns.values()), np.zeros(0), ""
    matrix = np.empty((sum(len(v) for v in parts[key]), len(columns)), dtype=object)
    for j, (name, is_category) in enumerate(columns.items()):
        values = np.concatenate(parts[name])
        matrix[:, j] = ([v.decode("utf-8").strip().lower() for v in values] if is_category
                        else values.astype(np.float64))
    described = (f"{len(columns)} raw column(s) of the table ({', '.join(columns)}): numbers as read (missing as "
                 "missing), categories native")
    return matrix, list(columns.values()), np.concatenate(parts[key]), described


def encode_categories(train: np.ndarray, other: np.ndarray, categorical: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Float matrices: each category column coded by its sorted training values (at most MAX_CATEGORIES, the
    most frequent), "" (missing) and values training never saw as NaN, as OrdinalEncoder codes them."""
    out = [np.full(m.shape, np.nan) for m in (train, other)]
    for j, is_category in enumerate(categorical):
        if not is_category:
            for o, m in zip(out, (train, other)):
                o[:, j] = m[:, j].astype(np.float64)
            continue
        values, counts = np.unique([v for v in train[:, j] if v != ""], return_counts=True)
        if len(values) > MAX_CATEGORIES:
            values = np.sort(values[np.argsort(-counts, kind="stable")[:MAX_CATEGORIES]])
        code = {v: float(i) for i, v in enumerate(values)}
        for o, m in zip(out, (train, other)):
            o[:, j] = [code.get(v, np.nan) for v in m[:, j]]
    return out[0], out[1]


def fit_gradient_boosting(task: str, x_train, y_train, categorical: list[bool], x_eval, class_names=None):
    """HistGradientBoosting's predictions on `x_eval` (class probabilities over every class, or values)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    mask = np.array(categorical, bool) if any(categorical) else None
    if task == "regression":
        model = HistGradientBoostingRegressor(categorical_features=mask, random_state=SEED)
        return model.fit(x_train, np.asarray(y_train, np.float64).reshape(-1)).predict(x_eval)
    y_train = np.asarray(y_train).reshape(-1).astype(int)
    k = max(len(class_names or ()), int(y_train.max()) + 1)
    probabilities = np.zeros((len(x_eval), k))
    if len(np.unique(y_train)) < 2:  # one class in training: it is the only answer
        probabilities[:, y_train[0]] = 1.0
        return probabilities
    model = HistGradientBoostingClassifier(categorical_features=mask, random_state=SEED)
    model.fit(x_train, y_train)
    probabilities[:, model.classes_] = model.predict_proba(x_eval)
    return probabilities


def _simple(task: str, y_train, n: int, class_names=None) -> np.ndarray:
    """The majority class (as certain probabilities) or the training mean, for `n` rows."""
    y_train = np.asarray(y_train).reshape(-1)
    if task == "regression":
        return np.full(n, float(np.mean(y_train, dtype=np.float64)))
    counts = np.bincount(y_train.astype(int), minlength=len(class_names or ()))
    probabilities = np.zeros((n, len(counts)))
    probabilities[:, int(np.argmax(counts))] = 1.0
    return probabilities
