"""The request log: one JSON line per answered inference request, written by `kerakit serve`
and read back by `kerakit drift`. This module is the one place the record format lives.

    log = RequestLog("runs/demo/requests.jsonl")
    log.write("digits", "1", "v2", {"image": x}, {"probabilities": y}, seconds=0.002)
    series, predictions, described = read("runs/demo/requests.jsonl")

A record holds summary statistics, not raw data (raw inputs only with `raw=True`):

    {"time": "2025-01-01T12:00:00.000+00:00", "model": "digits", "version": "1",
     "protocol": "v2", "rows": 2, "latency_ms": 1.234,
     "inputs": {"image": {"mean": [..], "std": [..], "min": [..], "max": [..]}},   # one value per row
     #   a string input of one value per row (a table's text column) adds "category": [..], each row's
     #   `category_key`: a digest, not the text, which drift matches with the profile's frequent values
     "outputs": {"probabilities": {"class": [..], "score": [..]}}}                # or {"value": [..]}
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kerakit.errors import KerakitError

STATS = ("mean", "std", "min", "max")  # the keys of row_statistics, in record order


def row_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row mean, std, min, max of one input (any rank; first axis = rows)."""
    flat = np.asarray(x).reshape(len(x), -1)
    if flat.dtype.kind in "OUS":  # strings: statistics of their lengths, in characters whether bytes (tf.data) or str (serve)
        flat = np.frompyfunc(_characters, 1, 1)(flat)
    flat = flat.astype(np.float64)
    return {"mean": flat.mean(1), "std": flat.std(1), "min": flat.min(1), "max": flat.max(1)}


def strings_per_row(x: np.ndarray) -> list[str] | None:
    """The one string of each row of a string input that holds one per row (a table's text column), as text;
    None for any other input."""
    x = np.asarray(x)
    if x.dtype.kind not in "OUS" or x.size != len(x):
        return None
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in x.reshape(-1)]


def category_key(value: str) -> str:
    """What the log records of a category: a 64-bit digest of its text, so the log holds summaries, not the
    values users sent (a name, an e-mail), while drift can still count the training split's frequent values.

    >>> category_key("Dream")
    'f6a14652537f95a5'
    """
    return hashlib.blake2b(value.encode("utf-8"), digest_size=8).hexdigest()


def category_keys(x: np.ndarray) -> np.ndarray | None:
    """Each row's `category_key` of a string input of one value per row, else None."""
    strings = strings_per_row(x)
    return None if strings is None else np.array([category_key(v) for v in strings], dtype=str)


def _characters(value) -> int:
    return len(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)


def row_summary(x: np.ndarray, raw: bool = False) -> dict:
    """Per-row mean, std, min and max of one input (what `drift` compares with training data), and each row's
    category key for a string input of one value per row."""
    summary = {k: _json_numbers(np.round(v, 6)) for k, v in row_statistics(x).items()}
    keys = category_keys(x)
    if keys is not None:
        summary["category"] = keys.tolist()
    if raw:
        values = x.reshape(len(x), -1)
        summary["values"] = _json_numbers(values) if values.dtype.kind == "f" else values.tolist()
    return summary


def _json_numbers(x: np.ndarray) -> list:
    """Floats as JSON has them: a missing number (NaN, a table's empty cell sent as null) is null, never the
    bare NaN Python's json writes and strict readers (jq, JavaScript, Go) refuse; `read` takes null back as NaN."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(x), x, None).tolist() if not np.isfinite(x).all() else x.tolist()


def output_summary(y: np.ndarray) -> dict:
    """Per row: the predicted class and its score for a vector output, else the value (text for strings)."""
    if y.dtype.kind in "OUS":
        return {"text": [str(v)[:100] for v in y.reshape(len(y), -1)[:, 0]]}
    flat = y.reshape(len(y), -1).astype(np.float64)
    if flat.shape[1] > 1:
        return {"class": flat.argmax(1).tolist(), "score": _json_numbers(np.round(flat.max(1), 6))}
    return {"value": _json_numbers(np.round(flat[:, 0], 6))}


class RequestLog:
    """Appends one JSON line per answered inference request (summary statistics, not raw data).

    Each record is one `write(2)` on an O_APPEND descriptor, so several workers
    never interleave lines. A write that fails (a full disk) raises OSError; one
    that stops part-way leaves a torn line, which the next record starts after a
    newline, so `read` can skip it and keep every whole record.
    """

    def __init__(self, path: str, raw: bool = False):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise KerakitError(f"Cannot write the request log {str(self.path)!r}: {e.strerror}. "
                               "Pass --log with a writable file, or --no-log.") from None
        self.raw = raw
        self._torn = False

    def write(self, model: str, version: str, protocol: str, inputs: dict[str, np.ndarray],
              outputs: dict[str, np.ndarray], seconds: float) -> None:
        record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                  "model": model, "version": version, "protocol": protocol,
                  "rows": len(next(iter(inputs.values()))), "latency_ms": round(seconds * 1000, 3),
                  "inputs": {k: row_summary(v, self.raw) for k, v in inputs.items()},
                  "outputs": {k: output_summary(v) for k, v in outputs.items()}}
        line = ("\n" if self._torn else "") + json.dumps(record, allow_nan=False) + "\n"
        data = line.encode()
        written = os.write(self._fd, data)
        self._torn = written < len(data)
        if self._torn:
            raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")

    def close(self) -> None:
        os.close(self._fd)


def read(path: "str | Path", max_features: int = 64) -> tuple[dict, dict, str]:
    """A request log as (series, predictions, description), for `kerakit drift`.

    series: "INPUT.STAT" -> every row's value of that statistic; "INPUT.category" -> every row's
    `category_key` (strings) for a string input of one value per row; with raw values
    logged, also "INPUT[i]" -> feature i of a rank-1 input of at most `max_features`.
    predictions: {"classes": [...]} or {"values": [...]} from each record's first output.
    Torn lines (not JSON: a write cut short by a full disk or a kill) are skipped and
    counted in the description; a JSON line that is not a record is an error.
    """
    series: dict[str, list] = {}
    predictions: dict[str, list] = {}
    records = torn = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                torn += 1
                continue
            try:
                _add(record, series, predictions, max_features)
            except (ValueError, KeyError, TypeError, AttributeError, StopIteration, IndexError):
                raise KerakitError(f"{str(path)}:{number} is not a `kerakit serve` request log record.") from None
            records += 1
    if not records:
        raise KerakitError(f"{str(path)} holds no `kerakit serve` request log records"
                           + (f" ({torn} unreadable lines)." if torn else "."))
    rows = len(next(iter(series.values()), []))
    skipped = f" (skipped {torn} torn line{'s' if torn != 1 else ''})" if torn else ""
    return ({k: np.asarray(v, dtype=str if k.endswith(".category") else np.float64) for k, v in series.items()},
            {k: np.asarray(v) for k, v in predictions.items()}, f"{rows} rows from {records} logged requests{skipped}")


def _add(record: dict, series: dict, predictions: dict, max_features: int) -> None:
    for name, summary in record["inputs"].items():
        for stat in STATS:
            series.setdefault(f"{name}.{stat}", []).extend(summary[stat])
        if "category" in summary:
            series.setdefault(f"{name}.category", []).extend(map(str, summary["category"]))
        if "values" in summary:
            values = np.asarray(summary["values"])
            for i in range(values.shape[1] if values.ndim == 2 and values.shape[1] <= max_features else 0):
                series.setdefault(f"{name}[{i}]", []).extend(values[:, i].tolist())
    output = next(iter(record["outputs"].values()))
    if "text" in output:  # a string output: nothing to compare
        return
    key = "classes" if "class" in output else "values"
    predictions.setdefault(key, []).extend(output["class" if key == "classes" else "value"])
