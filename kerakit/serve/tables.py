"""Raw table rows in, for table models: a row as the table has it, in every protocol.

The model `kerakit new NAME --from table.csv` writes takes one input per kept column, shape [n, 1]: a number
column as float32 with NaN where the value is missing, a category column as a string with "" where it is missing
(what the prepared dataset stores for "", "NA", "." and the other missing spellings: `kerakit.sources.prepare`),
and does its own preprocessing. The run's copy of the recipe names those columns (NUMBERS, CATEGORIES: read,
never run). For such a model the server takes:

    TF Serving, rows     {"instances": [{"island": "Biscoe", "bill_mm": 39.1, "observer": null}]}
    TF Serving, columns  {"inputs": {"island": ["Biscoe"], "bill_mm": [39.1], "observer": [null]}}
    KServe v2            one tensor per column, BYTES for a category and the number's datatype (FP32) for a number,
                         shape [n, 1] (or [n]); in JSON, as binary tensor data, or over gRPC

A missing value is null in JSON, either kind; a number may also be NaN (the string "NaN" in JSON, the float in
binary and gRPC). The model then gets what training gave it for a missing cell: NaN for a number, "" for a
category. A string where a number is expected, a number where a category is expected, an unknown column or a
missing one is a 400 naming the column and what it takes:

    columns_of(model)                         # Columns(numbers={'bill_mm'}, categories={'island', ...}), or None
    from_json([39.1, None], "float32", "input 'bill_mm'", "number")   # array([39.1, nan], dtype=float32)
    check(model, arrays, max_elements)        # model.check, with [n] columns as [n, 1] and NaN as missing
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np

from kerakit import runs
from kerakit.errors import KerakitError
from kerakit.serve.decoding import to_array
from kerakit.serve.models import BadRequest, Model

MISSING_NUMBER = "NaN"  # the one string a number column takes: protobuf's JSON spelling of NaN, as answers use it


@dataclass(frozen=True)
class Columns:
    """A table model's raw columns: number inputs (NaN is missing) and category inputs (null is "")."""

    numbers: frozenset
    categories: frozenset

    def kind(self, name: str) -> str | None:
        return "number" if name in self.numbers else "category" if name in self.categories else None


_COLUMNS: "WeakKeyDictionary[Model, Columns | None]" = WeakKeyDictionary()


def columns_of(model: Model) -> Columns | None:
    """The raw columns of a table model, or None for any other model."""
    if model not in _COLUMNS:
        _COLUMNS[model] = _columns(model)
    return _COLUMNS[model]


def prepare(models) -> None:
    """At start-up: each model's columns read from its run's recipe, so a recipe the server cannot read fails
    the start, not a request."""
    for model in models:
        columns_of(model)


def _columns(model: Model) -> Columns | None:
    """The recipe's NUMBERS and CATEGORIES that are this model's column inputs (shape [n, 1], of their kind)."""
    listed = recorded_columns(model.path)
    if listed is None:
        return None

    def column(name: str, kinds: str) -> bool:
        spec = model.inputs.get(name)
        return (spec is not None and len(spec.shape) == 2 and spec.shape[1] == 1
                and np.dtype(spec.dtype).kind in kinds)

    numbers = frozenset(n for n in listed["NUMBERS"] if column(n, "f"))
    categories = frozenset(n for n in listed["CATEGORIES"] if column(n, "O"))
    return Columns(numbers, categories) if numbers or categories else None


def recorded_columns(path: "str | Path") -> dict[str, list[str]] | None:
    """NUMBERS and CATEGORIES of the table recipe the model at `path` was trained by (the run's copy), or None
    where it has no run or its recipe is not a table recipe. Read with ast: no recipe code runs in a server."""
    run = runs.find_run(path)
    found = {} if run is None else run.recipe_assignments(("NUMBERS", "CATEGORIES"))
    listed = {name: _names(node, run.recipe_path) for name, node in found.items()}
    return listed if set(listed) == {"NUMBERS", "CATEGORIES"} else None


def _names(node: ast.Assign, path: Path) -> list[str]:
    try:
        value = ast.literal_eval(node.value)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KerakitError(f"{path}:{node.lineno}: NUMBERS and CATEGORIES must be lists of column names written "
                           "out (string literals), which the server reads to take raw rows.")
    return value


# --------------------------------------------------------------------------- decoding

def from_json(value, dtype: str, where: str, kind: str) -> np.ndarray:
    """A column's JSON values (flat or nested) as the model's array: null (and "NaN" for a number) -> missing."""
    try:
        array = np.array(value, dtype=object)
    except ValueError:
        raise BadRequest(f"{where}: data is ragged (nested lists must be rectangular).") from None
    flat = array.reshape(-1)
    if kind == "category":
        for i, v in enumerate(flat):
            if v is None:
                flat[i] = ""  # what the prepared dataset holds for a missing category
            elif not isinstance(v, str):
                raise BadRequest(f"{where}: expected text (a category, as the table has it), got {_shown(v)}; "
                                 "send it as a JSON string, or null where the value is missing.")
        return array
    for i, v in enumerate(flat):
        if v is None or v == MISSING_NUMBER:
            flat[i] = np.nan
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(f"{where}: expected a number, got {_shown(v)}; send a JSON number, or null (or "
                             f"\"{MISSING_NUMBER}\") where the value is missing.")
    return to_array(array.astype(np.float64), dtype, where)


def _shown(value) -> str:
    """A JSON value as a message names it: the string '39,1', true, 3, an array."""
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (bool, int, float)):
        return str(value).lower() if isinstance(value, bool) else repr(value)[:40]
    return {"list": "an array", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def check(model: Model, arrays: dict[str, np.ndarray], max_elements: int) -> dict[str, np.ndarray]:
    """`model.check` of a decoded request; for a table model, a column sent flat ([n]) is its [n, 1], and NaN
    in a number column is a missing value, as in training."""
    columns = columns_of(model)
    if columns is None:
        return model.check(arrays, max_elements)
    shaped = {name: a.reshape(-1, 1) if a.ndim == 1 and columns.kind(name) else a for name, a in arrays.items()}
    return model.check(shaped, max_elements, missing=columns.numbers)
