"""Tensors in the wire forms every protocol shares: JSON values, raw bytes, and Triton's classification.

The rule for values JSON cannot hold (one rule for every JSON answer, KServe v2 and
TF Serving alike): a NaN or infinite float is written as the string "NaN",
"Infinity" or "-Infinity", the spelling of protobuf's JSON mapping. Every JSON
parser accepts that, and numpy reads it back as the float when the dtype is given
(which `tritonclient` and the kserve SDK do with the answer's datatype):

>>> json_values(np.array([1.5, np.nan, -np.inf], np.float32))
[1.5, 'NaN', '-Infinity']
>>> np.array([1.5, 'NaN', '-Infinity'], np.float32)
array([ 1.5,  nan, -inf], dtype=float32)

JSON answers are written by orjson, arrays directly from numpy (a float32 in the shortest
form that reads back as the same float32):

>>> dumps({"data": json_values(np.array([0.1, 2.0], np.float32))})
b'{"data":[0.1,2.0]}'

Binary forms (the binary tensor data extension, gRPC's raw contents) carry the
bytes unchanged. BYTES tensors are numpy object arrays of text; in raw form each
element is its UTF-8 bytes after a 4-byte little-endian length, as Triton lays them out:

>>> to_raw(np.array(["ab", "c"], object))
b'\\x02\\x00\\x00\\x00ab\\x01\\x00\\x00\\x00c'
>>> from_raw(b'\\x02\\x00\\x00\\x00ab\\x01\\x00\\x00\\x00c', "BYTES", [2], "input 's'")
array(['ab', 'c'], dtype=object)
"""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson

from kerakit.dtypes import NUMPY_TO_V2, V2_TYPES
from kerakit.serve.models import BadRequest

NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_V2_OF = {np.dtype(name): v2 for name, v2 in NUMPY_TO_V2.items() if name != "object"}  # dtype.name is slow per call


def v2_datatype(array: np.ndarray) -> str:
    """The KServe v2 datatype of an output array (str and bytes arrays are BYTES)."""
    return "BYTES" if array.dtype.kind in "OUS" else _V2_OF.get(array.dtype) or NUMPY_TO_V2[array.dtype.name]


def dumps(value) -> bytes:
    """The JSON bytes of an answer; numpy arrays in it are written by orjson without a Python list."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_values(array: np.ndarray):
    """An array as a value for `dumps`: the array itself when it is finite numbers in native byte
    order, else (nested) lists with non-finite floats as strings and BYTES as text."""
    if array.ndim == 0:
        return json_values(array.reshape(1))[0]
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = array.astype(np.float64).astype(object)
        for value, text in ((np.nan, "NaN"), (np.inf, "Infinity"), (-np.inf, "-Infinity")):
            values[np.isnan(array) if value != value else array == value] = text
        return values.tolist()
    if array.dtype.kind in "OS":
        return np.frompyfunc(_text, 1, 1)(array).tolist() if array.size else array.tolist()
    return array if array.dtype.isnative else array.tolist()


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def strings(value, where: str) -> np.ndarray:
    """JSON data of a BYTES tensor (strings, nested or flat) as an object array of text."""
    try:
        array = np.array(value, dtype=object)
    except ValueError:
        raise BadRequest(f"{where}: data is ragged (nested lists must be rectangular).") from None
    bad = next((v for v in array.flat if not isinstance(v, str)), None) if array.size else None
    if bad is not None or (array.ndim == 0 and not isinstance(value, str)):
        raise BadRequest(f"{where}: BYTES data must be strings, got {type(bad if bad is not None else value).__name__}.")
    return array


def to_raw(array: np.ndarray) -> bytes:
    """The raw (binary) form of an array: little-endian elements, BYTES length-prefixed."""
    if array.dtype.kind in "OUS":
        parts = []
        for value in array.flat:
            data = value if isinstance(value, bytes) else str(value).encode()
            parts += [struct.pack("<I", len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def from_raw(raw: "bytes | memoryview", datatype: str, shape: list[int], where: str) -> np.ndarray:
    """The array a tensor's raw bytes hold (a view, not a copy, for numeric types)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _raw_strings(bytes(raw), count, where).reshape(shape)
    dtype = np.dtype(V2_TYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{where}: {len(raw)} bytes of binary data, but shape {shape} of {datatype} "
                         f"needs {count * dtype.itemsize}.")
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def raw_elements(raw: "bytes | memoryview", where: str) -> list[bytes]:
    """The elements of a BYTES tensor's raw form (each after its 4-byte little-endian length), as bytes."""
    raw, values, offset = bytes(raw), [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: BYTES data ends inside an element's 4-byte length.")
        (n,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + n > len(raw):
            raise BadRequest(f"{where}: BYTES element {len(values)} claims {n} bytes; only {len(raw) - offset - 4} remain.")
        values.append(raw[offset + 4:offset + 4 + n])
        offset += 4 + n
    return values


def _raw_strings(raw: bytes, count: int, where: str) -> np.ndarray:
    values = []
    for element in raw_elements(raw, where):
        try:
            values.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: BYTES element {len(values)} is not UTF-8 text; the model takes strings.") from None
    if len(values) != count:
        raise BadRequest(f"{where}: BYTES data holds {len(values)} elements but the shape needs {count}.")
    array = np.empty(count, dtype=object)
    array[:] = values
    return array


def classify(array: np.ndarray, count: int, labels: list[str] | None, where: str) -> np.ndarray:
    """Triton's classification extension: each row's top `count` values as "score:index[:label]" (BYTES)."""
    if array.dtype.kind not in "biuf":
        raise BadRequest(f"{where}: classification needs a numeric output, not {v2_datatype(array)}.")
    flat = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(1, -1)
    k = min(count, flat.shape[1])
    top = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(flat, top, 1)
    out = np.empty((len(flat), k), dtype=object)
    for r in range(len(flat)):
        for c in range(k):
            i = int(top[r, c])
            out[r, c] = f"{float(scores[r, c]):f}:{i}" + (f":{labels[i]}" if labels and i < len(labels) else "")
    return out if array.ndim > 1 else out[0]


def check_parameters(params, where: str, known: dict[str, type]) -> dict:
    """A parameters object: scalar values only (the protocol's $parameter), known keys of their type.
    Pass `{}` where the request has none: `null` is refused like any other non-object."""
    if not isinstance(params, dict):
        got = "null" if params is None else type(params).__name__
        raise BadRequest(f"{where}: 'parameters' must be an object, got {got}.")
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)):
            raise BadRequest(f"{where}: parameter {key[:50]!r} must be a string, number or boolean, "
                             f"got {type(value).__name__}.")
        kind = known.get(key)
        if kind is bool and not isinstance(value, bool):
            raise BadRequest(f"{where}: {key} must be true or false, got {str(value)[:20]}.")
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise BadRequest(f"{where}: {key} must be a non-negative integer, got {str(value)[:20]}.")
    return params
