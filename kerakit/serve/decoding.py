"""JSON request bodies to arrays, for every protocol: strict, and every refusal a BadRequest.

>>> to_array([[1, 2]], "float32", "input 'x'")
array([[1., 2.]], dtype=float32)
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson

from kerakit.serve.models import BadRequest

LONG_DIGITS = re.compile(rb"\d{19}")  # |n| >= 2**63 needs 19 digits; a double's repr has at most 17


def parse_json(body: bytes) -> Any:
    """The body as JSON, refusing NaN and Infinity (not JSON, though Python writes them).

    orjson parses it; a body orjson refuses (1e400, lone surrogates, anything malformed) goes
    through the standard library, whose reading and messages are the rule, and so does a
    body with a run of 19 or more digits: orjson reads integers beyond 64 bits as floats,
    where the standard library keeps them exact (and `to_array` says they are out of range).
    """
    if not LONG_DIGITS.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass

    def reject_constant(token):
        raise BadRequest(f"Malformed JSON: {token} is not a JSON number; send finite numbers.")

    try:
        return json.loads(body, parse_constant=reject_constant)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"Malformed JSON: {str(e)[:200]}.") from None


def to_array(value: Any, dtype: str, what: str) -> np.ndarray:
    """JSON numbers (nested lists or flat) -> an array of `dtype`, refusing anything non-numeric."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{what}: data is ragged or not numeric (nested lists must be rectangular).") from None
    kind = np.dtype(dtype).kind
    if kind in "iu" and array.dtype.kind in "fO":
        array = _big_integers(value, array)
    allowed = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}.get(kind, "")
    if array.dtype.kind not in allowed:
        found = {"U": "strings", "S": "bytes", "O": "mixed, null or out-of-range values", "b": "booleans",
                 "f": "fractional numbers"}.get(array.dtype.kind, str(array.dtype))
        raise BadRequest(f"{what}: expected {dtype} numbers, got {found}.")
    if kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"{what}: values outside the {dtype} range [{info.min}, {info.max}].")
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype, copy=False)


def _big_integers(value: Any, array: np.ndarray) -> np.ndarray:
    """Integers numpy could not hold in one dtype (uint64 beyond int64, with small ones) as exact uint64."""
    try:
        exact = np.array(value, dtype=object)
    except ValueError:
        return array
    flat = list(exact.flat)
    if not flat or not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        return array
    if min(flat) < 0 or max(flat) > np.iinfo(np.uint64).max:
        return np.array(value, dtype=object)  # refused below as out of range
    return exact.astype(np.uint64)


def require(obj: Any, key: str, kind: type, where: str):
    """`obj[key]`, which must be a `kind` (never a bool standing in for an int)."""
    if not isinstance(obj, dict) or key not in obj:
        raise BadRequest(f"{where}: missing {key!r}.")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}.")
    return value
