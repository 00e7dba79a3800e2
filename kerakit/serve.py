"""`kerakit serve`: an HTTP inference server speaking KServe v2 and TF Serving REST.

    kerakit serve runs/demo                       # the run's ONNX model, named after its recipe
    kerakit serve --model-dir runs/demo/export/triton

Protocols (clients written for Triton, KServe or TF Serving work unchanged):

- KServe v2 / Open Inference Protocol: GET /v2, /v2/health/{live,ready},
  /v2/models/NAME[/versions/V][/ready|/config], POST /v2/models/NAME[/versions/V]/infer
  with JSON tensors or the binary tensor data extension (what `tritonclient` sends).
- TF Serving REST: GET /v1/models/NAME[/versions/V][/metadata],
  POST /v1/models/NAME[/versions/V]:predict with `instances` (rows) or `inputs` (columns).
- GET /metrics: Prometheus text format.

Models are loaded once at start-up through `kerakit.runtime`; request paths
only look names up in that table, so no request can make the server read a file.
Every bad request is answered 4xx with `{"error": "..."}` naming the problem.
Inference runs on one thread per model, off the event loop; with
`max_batch > 1`, concurrent requests are merged into one batch (dynamic
batching, as Triton calls it) for up to `batch_wait_ms`.

Request log (JSON lines, for `kerakit drift`): per request the model, the row
count, latency, and per-row summary statistics of every input (mean, std, min,
max) and of the outputs (predicted class and its probability, or the value);
raw inputs only with `log_inputs=True`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import math
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import runs, runtime
from kerakit.drift import row_statistics
from kerakit.errors import KerakitError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION = "1"
HEADER_LENGTH = "inference-header-content-length"  # the binary tensor data extension
# KServe v2 datatypes <-> numpy dtype names.
V2_TYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
            "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
            "FP16": "float16", "FP32": "float32", "FP64": "float64"}
NUMPY_TO_V2 = {v: k for k, v in V2_TYPES.items()}
PLATFORMS = {"onnx": "onnxruntime_onnx", "savedmodel": "tensorflow_savedmodel",
             "tflite": "tensorflow_tflite", "keras": "keras"}
MODEL_FILES = ("model.onnx", "model.tflite", "model.keras", "saved_model.pb", "model.savedmodel")


class BadRequest(Exception):
    """A client error: answered with `status` and `{"error": message}`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ServeOptions:
    max_body_bytes: int = 4 * 1024 * 1024
    max_elements: int = 1_000_000  # numbers in one request, all inputs together
    max_batch: int = 1             # > 1 turns dynamic batching on
    batch_wait_ms: float = 1.0
    threads: int | None = None     # runtime threads (ONNX/LiteRT); None = the model's tuned default
    log_path: str | None = None
    log_inputs: bool = False


@dataclass
class ModelEntry:
    name: str
    path: str
    version: str = VERSION


# --------------------------------------------------------------------------- what to serve

def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise KerakitError(f"Invalid model name {name!r}: use letters, digits, '_', '-', '.' "
                           "(at most 128, not starting with '.' or '-').")
    return name


def resolve(source: "str | os.PathLike | None" = None, name: str | None = None,
            model_dir: "str | os.PathLike | None" = None) -> list[ModelEntry]:
    """The models to serve: one artifact or run, and/or every model of a repository directory.

    A run directory serves its exported ONNX model (`RUN/export/model.onnx`).
    A model directory is a Triton/TF Serving layout, NAME/VERSION/{model.onnx,
    model.tflite, saved_model.pb, ...}; the highest numeric version is served.
    """
    entries: list[ModelEntry] = []
    if source is not None:
        path = Path(source)
        if path.is_dir() and (path / runs.MANIFEST_FILE).exists():
            onnx = path / "export" / "model.onnx"
            if not onnx.exists():
                raise KerakitError(f"Run {str(path)!r} has no exported ONNX model ({onnx}). "
                                   f"Run `kerakit export {path} --target server` or pass an artifact path.")
            path = onnx
        runtime.detect_format(path)
        if name is None:
            run = runs.find_run(path)
            name = run.config.get("recipe") if run is not None else None
            name = name or (path.stem if path.suffix else path.name)
        entries.append(ModelEntry(_check_name(name), str(path)))
    elif name is not None:
        raise KerakitError("--name names the model given as ARTIFACT_OR_RUN; with --model-dir, names are directory names.")
    if model_dir is not None:
        entries += discover(model_dir)
    if not entries:
        raise KerakitError("Nothing to serve: pass an artifact or run directory, or --model-dir DIR.")
    seen = set()
    for e in entries:
        if e.name in seen:
            raise KerakitError(f"Two models are named {e.name!r}; rename one (--name).")
        seen.add(e.name)
    return entries


def discover(model_dir: "str | os.PathLike") -> list[ModelEntry]:
    root = Path(model_dir)
    if not root.is_dir():
        raise KerakitError(f"Model directory {str(root)!r} does not exist.")
    root = root.resolve()
    entries = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or not NAME_PATTERN.fullmatch(child.name):
            continue
        versions = sorted((v for v in child.iterdir() if v.is_dir() and v.name.isdigit()), key=lambda v: int(v.name))
        for version in reversed(versions):
            found = [version / f for f in MODEL_FILES if (version / f).exists()]
            if found:
                model = version if found[0].name == "saved_model.pb" else found[0]
                if not model.resolve().is_relative_to(root):  # a symlink pointing out of the repository
                    raise KerakitError(f"Model {child.name!r} resolves outside {str(root)!r}; refusing to serve it.")
                entries.append(ModelEntry(child.name, str(model), version.name))
                break
    if not entries:
        raise KerakitError(f"No models in {str(root)!r}: expected NAME/VERSION/model.onnx (or model.tflite, "
                           "model.keras, saved_model.pb), e.g. an export's triton/ or tfserving/ directory.")
    return entries


# --------------------------------------------------------------------------- models at run time

class Model:
    """One loaded model: metadata, request decoding, inference (optionally batched)."""

    def __init__(self, entry: ModelEntry, options: ServeOptions):
        self.name, self.version, self.path = entry.name, entry.version, entry.path
        load_options = {} if options.threads is None else {"threads": options.threads}
        fmt = runtime.detect_format(entry.path)
        self.predictor = runtime.load(entry.path, **(load_options if fmt in ("onnx", "tflite") else {}))
        self.format = self.predictor.format
        self.inputs = {s.name: s for s in self.predictor.inputs}
        self.outputs = {s.name: s for s in self.predictor.outputs}
        self.max_batch = options.max_batch
        self.wait_s = options.batch_wait_ms / 1000
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{self.name}")
        self.queue: asyncio.Queue | None = None
        self.batch_sizes: list[int] = []  # rows per model call, when batching (for metrics)
        # Warm up: the first call of every runtime is slow.
        self.predictor.run({s.name: np.zeros((1, *[d or 1 for d in s.shape[1:]]), s.dtype)
                            for s in self.predictor.inputs})

    # metadata --------------------------------------------------------------
    def metadata(self) -> dict:
        def tensors(specs):
            return [{"name": s.name, "datatype": NUMPY_TO_V2.get(s.dtype, s.dtype.upper()),
                     "shape": [-1 if d is None else d for d in s.shape]} for s in specs.values()]

        return {"name": self.name, "versions": [self.version], "platform": PLATFORMS[self.format],
                "inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}

    def config(self) -> dict:
        """Triton's model configuration, as JSON (GET /v2/models/NAME/config)."""
        from kerakit.export.layouts import TRITON_TYPES

        def tensors(specs):
            return [{"name": s.name, "data_type": TRITON_TYPES.get(s.dtype, s.dtype),
                     "dims": [-1 if d is None else d for d in s.shape[1:]]} for s in specs.values()]

        return {"name": self.name, "platform": PLATFORMS[self.format], "max_batch_size": max(self.max_batch, 0),
                "input": tensors(self.inputs), "output": tensors(self.outputs)}

    # inference -------------------------------------------------------------
    def check(self, batch: dict[str, np.ndarray], max_elements: int) -> dict[str, np.ndarray]:
        total = sum(int(v.size) for v in batch.values())
        if total > max_elements:
            raise BadRequest(f"Request has {total} numbers; the limit is {max_elements} (--max-elements).", 413)
        try:
            checked = self.predictor.validate(batch)
        except KerakitError as e:
            raise BadRequest(str(e)) from None
        rows = {len(v) for v in checked.values()}
        if len(rows) > 1:
            raise BadRequest(f"Inputs have different batch sizes {sorted(rows)}; all inputs need the same first dimension.")
        if 0 in rows:
            raise BadRequest("The batch is empty (first dimension 0); send at least one row.")
        for k, v in checked.items():
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise BadRequest(f"Input {k!r} contains NaN or infinity (after conversion to {v.dtype}); "
                                 "this model takes finite numbers only.")
        return checked

    async def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if self.max_batch <= 1:
            return await loop.run_in_executor(self.executor, self.predictor.run, batch)
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._batcher = loop.create_task(self._batch_loop())
        future = loop.create_future()
        self.queue.put_nowait((batch, future))
        return await future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            items, rows = [first], _rows(first[0])
            deadline = loop.time() + self.wait_s
            while rows < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                if rows + _rows(item[0]) > self.max_batch or _trailing(item[0]) != _trailing(first[0]):
                    carry = item  # starts the next batch
                    break
                items.append(item)
                rows += _rows(item[0])
            await self._run_batch(loop, items)

    async def _run_batch(self, loop, items) -> None:
        names = list(items[0][0])
        merged = {k: np.concatenate([b[k] for b, _ in items]) if len(items) > 1 else items[0][0][k] for k in names}
        try:
            out = await loop.run_in_executor(self.executor, self.predictor.run, merged)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.batch_sizes.append(_rows(merged))
        start = 0
        for batch, fut in items:
            n = _rows(batch)
            if not fut.done():  # a client that went away leaves a cancelled future
                fut.set_result({k: v[start:start + n] for k, v in out.items()})
            start += n

    def close(self) -> None:
        self.executor.shutdown(wait=False)
        self.predictor.close()


def _rows(batch: dict) -> int:
    return len(next(iter(batch.values())))


def _trailing(batch: dict) -> tuple:
    return tuple((k, v.shape[1:], v.dtype.str) for k, v in batch.items())


# --------------------------------------------------------------------------- decoding requests

def parse_json(body: bytes) -> Any:
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


def _require(obj: Any, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise BadRequest(f"{where}: missing {key!r}.")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}.")
    return value


def decode_v2(model: Model, body: bytes, header_length: str | None, max_elements: int) -> tuple[dict, dict]:
    """A KServe v2 infer request -> (validated inputs, request JSON)."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer.") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes.")
        body, binary = body[:n], body[n:]
    request = parse_json(body)
    if not isinstance(request, dict):
        raise BadRequest(f"The request must be a JSON object with 'inputs', got {type(request).__name__}.")
    items = _require(request, "inputs", list, "request")
    if not isinstance(request.get("parameters", {}), dict):
        raise BadRequest("'parameters' of the request must be an object, e.g. {\"binary_data_output\": true}.")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(items):
        where = f"inputs[{i}]"
        name = _require(item, "name", str, where)
        if name not in model.inputs:
            raise BadRequest(f"Unknown input {name[:100]!r}; model {model.name!r} takes {sorted(model.inputs)}.")
        if name in arrays:
            raise BadRequest(f"Input {name!r} is given twice.")
        where = f"input {name!r}"
        shape = _require(item, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise BadRequest(f"{where}: shape must be a list of non-negative integers, got {str(shape)[:100]}.")
        count = math.prod(shape)
        if count > max_elements:
            raise BadRequest(f"{where}: shape {shape} has {count} elements; the limit is {max_elements} (--max-elements).", 413)
        datatype = _require(item, "datatype", str, where)
        expected = NUMPY_TO_V2.get(model.inputs[name].dtype, model.inputs[name].dtype)
        if datatype != expected:
            raise BadRequest(f"{where}: datatype {datatype[:20]!r} does not match the model's {expected}.")
        dtype = V2_TYPES[datatype]
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"{where}: 'parameters' must be an object.")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"{where}: binary_data_size must be a non-negative integer.")
            if offset + size > len(binary):
                raise BadRequest(f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of binary data.")
            itemsize = np.dtype(dtype).itemsize
            if size != count * itemsize:
                raise BadRequest(f"{where}: {size} bytes of binary data, but shape {shape} of {datatype} needs {count * itemsize}.")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            if "data" not in item:
                raise BadRequest(f"{where}: missing 'data' (or parameters.binary_data_size with binary data).")
            array = to_array(item["data"], dtype, where)
            if array.size != count:
                raise BadRequest(f"{where}: data has {array.size} elements but shape {shape} needs {count}.")
            array = array.reshape(shape)
        arrays[name] = array
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size.")
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list of {\"name\": ...} objects.")
        for i, out in enumerate(outputs):
            out_name = _require(out, "name", str, f"outputs[{i}]")
            if out_name not in model.outputs:
                raise BadRequest(f"Unknown output {out_name[:100]!r}; model {model.name!r} has {sorted(model.outputs)}.")
    return model.check(arrays, max_elements), request


def encode_v2(model: Model, request: dict, result: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The v2 response body and headers; binary outputs where the request asked for them."""
    wanted = request.get("outputs") or [{"name": n} for n in model.outputs]
    default_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    outputs, chunks = [], []
    for out in wanted:
        value = result[out["name"]]
        entry = {"name": out["name"], "datatype": NUMPY_TO_V2.get(value.dtype.name, value.dtype.name.upper()),
                 "shape": list(value.shape)}
        params = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
        if params.get("binary_data", default_binary):
            raw = np.ascontiguousarray(value).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = value.ravel().tolist()
        outputs.append(entry)
    response = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if "id" in request and isinstance(request["id"], str):
        response["id"] = request["id"]
    header = json.dumps(response).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(header))}


def decode_tfserving(model: Model, body: bytes, max_elements: int) -> tuple[dict, str]:
    """A TF Serving :predict request -> (validated inputs, "row" or "columnar")."""
    request = parse_json(body)
    if not isinstance(request, dict):
        raise BadRequest(f"The request must be a JSON object with 'instances' or 'inputs', got {type(request).__name__}.")
    signature = request.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise BadRequest(f"Unknown signature_name {str(signature)[:100]!r}; this model has 'serving_default'.")
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest("Send exactly one of 'instances' (row format) or 'inputs' (columnar format).")
    names = list(model.inputs)
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list of rows.")
        if all(isinstance(row, dict) for row in instances):
            for i, row in enumerate(instances):
                if set(row) != set(names):
                    raise BadRequest(f"instances[{i}] has keys {sorted(map(str, row))[:10]}; the model's inputs are {sorted(names)}.")
            columns = {n: [row[n] for row in instances] for n in names}
        elif len(names) == 1 and not any(isinstance(row, dict) for row in instances):
            columns = {names[0]: instances}
        else:
            raise BadRequest(f"Each instance must be an object keyed by input name {sorted(names)}.")
        kind = "row"
    else:
        inputs = request["inputs"]
        if isinstance(inputs, dict):
            unknown = set(inputs) - set(names)
            if unknown or set(inputs) != set(names):
                raise BadRequest(f"'inputs' has keys {sorted(map(str, inputs))[:10]}; the model's inputs are {sorted(names)}.")
            columns = inputs
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise BadRequest(f"'inputs' must be an object keyed by input name {sorted(names)}.")
        kind = "columnar"
    arrays = {n: to_array(columns[n], model.inputs[n].dtype, f"input {n!r}") for n in names}
    return model.check(arrays, max_elements), kind


def encode_tfserving(result: dict[str, np.ndarray], kind: str) -> dict:
    if kind == "row":
        if len(result) == 1:
            return {"predictions": next(iter(result.values())).tolist()}
        n = _rows(result)
        return {"predictions": [{k: v[i].tolist() for k, v in result.items()} for i in range(n)]}
    if len(result) == 1:
        return {"outputs": next(iter(result.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in result.items()}}


# --------------------------------------------------------------------------- request log

class RequestLog:
    """Appends one JSON line per answered inference request (summary statistics, not raw data)."""

    def __init__(self, path: str, raw: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered, O_APPEND: each record is one write, whole lines even with several workers.
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self.raw = raw

    def write(self, model: Model, protocol: str, inputs: dict, outputs: dict, seconds: float) -> None:
        record = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                  "model": model.name, "version": model.version, "protocol": protocol,
                  "rows": _rows(inputs), "latency_ms": round(seconds * 1000, 3),
                  "inputs": {k: row_summary(v, self.raw) for k, v in inputs.items()},
                  "outputs": {k: output_summary(v) for k, v in outputs.items()}}
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def row_summary(x: np.ndarray, raw: bool = False) -> dict:
    """Per-row mean, std, min and max of one input (what `drift` compares with training data)."""
    summary = {k: np.round(v, 6).tolist() for k, v in row_statistics(x).items()}
    if raw:
        summary["values"] = x.reshape(len(x), -1).tolist()
    return summary


def output_summary(y: np.ndarray) -> dict:
    flat = y.reshape(len(y), -1).astype(np.float64)
    if flat.shape[1] > 1:
        return {"class": flat.argmax(1).tolist(), "score": np.round(flat.max(1), 6).tolist()}
    return {"value": np.round(flat[:, 0], 6).tolist()}


# --------------------------------------------------------------------------- the ASGI app

def create_app(entries: list[ModelEntry], options: ServeOptions | None = None):
    """The Starlette app serving `entries` (loaded now, before the first request)."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Histogram,
        disable_created_metrics,
        generate_latest,
    )
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    options = options or ServeOptions()
    models = {e.name: Model(e, options) for e in entries}
    log = RequestLog(options.log_path, options.log_inputs) if options.log_path else None

    disable_created_metrics()  # no *_created series: only the counts and the histogram
    registry = CollectorRegistry()
    requests_total = Counter("kerakit_requests", "Inference requests answered, by HTTP status.",
                             ["model", "protocol", "code"], registry=registry)
    errors_total = Counter("kerakit_request_errors", "Inference requests answered with an error (4xx/5xx).",
                           ["model", "protocol", "code"], registry=registry)
    latency = Histogram("kerakit_request_seconds", "Inference request latency, body read to response.",
                        ["model", "protocol"], registry=registry,
                        buckets=(.0002, .0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
    rows_total = Counter("kerakit_inference_rows", "Rows (examples) inferred.", ["model"], registry=registry)
    batch_rows = Histogram("kerakit_model_batch_rows", "Rows per model call (dynamic batching merges requests).",
                           ["model"], registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def lookup(request: Request) -> Model:
        name = request.path_params["name"]
        model = models.get(name)
        if model is None:
            shown = name[:100] + ("..." if len(name) > 100 else "")
            raise BadRequest(f"Unknown model {shown!r}. Served models: {', '.join(sorted(models))}.", 404)
        version = request.path_params.get("version")
        if version is not None and version != model.version:
            raise BadRequest(f"Model {name!r} has no version {version[:20]!r}; served version: {model.version}.", 404)
        return model

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > options.max_body_bytes:
            raise BadRequest(f"Request body of {int(declared)} bytes is over the {options.max_body_bytes}-byte limit "
                             "(--max-body-mb).", 413)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > options.max_body_bytes:
                    raise BadRequest(f"Request body is over the {options.max_body_bytes}-byte limit (--max-body-mb).", 413)
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest("The client disconnected before sending the whole body.") from None
        return b"".join(chunks)

    async def answer(request: Request, protocol: str, decode, encode) -> Response:
        start = time.perf_counter()
        label = ""
        try:
            model = lookup(request)
            label = model.name
            body = await read_body(request)
            inputs, context = decode(model, body, request)
            outputs = await model.infer(inputs)
            response = encode(model, context, outputs)
            code = 200
        except BadRequest as e:
            response, code = error(str(e), e.status), e.status
        except Exception as e:  # noqa: BLE001 - a bug of ours: logged, answered 500, server stays up
            import traceback

            traceback.print_exc()
            response, code = error(f"Internal error: {type(e).__name__}: {str(e)[:200]}", 500), 500
        elapsed = time.perf_counter() - start
        requests_total.labels(label, protocol, code).inc()
        latency.labels(label, protocol).observe(elapsed)
        if code != 200:
            errors_total.labels(label, protocol, code).inc()
        else:
            rows_total.labels(label).inc(_rows(inputs))
            if log is not None:
                log.write(model, protocol, inputs, outputs, elapsed)
        return response

    # KServe v2 -------------------------------------------------------------
    def v2_decode(model, body, request):
        return decode_v2(model, body, request.headers.get(HEADER_LENGTH), options.max_elements)

    def v2_encode(model, request_json, outputs):
        content, headers = encode_v2(model, request_json, outputs)
        return Response(content, headers=headers)

    async def v2_infer(request: Request) -> Response:
        return await answer(request, "v2", v2_decode, v2_encode)

    async def v2_server(request: Request) -> Response:
        from importlib.metadata import version

        return JSONResponse({"name": "kerakit", "version": version("kerakit"), "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True, "models": sorted(models)})

    def guarded(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(fn(lookup(request)))
            except BadRequest as e:
                return error(str(e), e.status)
        return endpoint

    # TF Serving REST -------------------------------------------------------
    def tf_decode(model, body, request):
        return decode_tfserving(model, body, options.max_elements)

    def tf_encode(model, kind, outputs):
        return JSONResponse(encode_tfserving(outputs, kind))

    async def tf_predict(request: Request) -> Response:
        return await answer(request, "tfserving", tf_decode, tf_encode)

    def tf_status(model: Model) -> dict:
        return {"model_version_status": [{"version": model.version, "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}

    def tf_metadata(model: Model) -> dict:
        def tensors(specs):
            return {s.name: {"dtype": "DT_" + s.dtype.upper().replace("FLOAT32", "FLOAT").replace("FLOAT64", "DOUBLE"),
                             "tensor_shape": {"dim": [{"size": str(-1 if d is None else d)} for d in s.shape]},
                             "name": s.name} for s in specs.values()}

        signature = {"inputs": tensors(model.inputs), "outputs": tensors(model.outputs), "method_name": "tensorflow/serving/predict"}
        return {"model_spec": {"name": model.name, "version": model.version, "signature_name": ""},
                "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}

    async def metrics(request: Request) -> Response:
        for model in models.values():
            sizes, model.batch_sizes = model.batch_sizes, []
            for n in sizes:
                batch_rows.labels(model.name).observe(n)
        return Response(generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST})

    async def not_found(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if exc.status_code != 404 else f"No route for {request.method} {request.url.path[:200]}."
        return error(detail, exc.status_code)

    async def internal(request: Request, exc: Exception) -> Response:
        return error(f"Internal error: {type(exc).__name__}", 500)

    v = "/versions/{version}"
    routes = [
        Route("/v2", v2_server), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/metrics", metrics),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}" + v):
        routes += [Route(prefix, guarded(Model.metadata)),
                   Route(prefix + "/ready", guarded(lambda m: {"name": m.name, "ready": True})),
                   Route(prefix + "/config", guarded(Model.config)),
                   Route(prefix + "/infer", v2_infer, methods=["POST"])]
    for prefix in ("/v1/models/{name}", "/v1/models/{name}" + v):
        routes += [Route(prefix, guarded(tf_status)), Route(prefix + "/metadata", guarded(tf_metadata)),
                   Route(prefix + ":predict", tf_predict, methods=["POST"])]

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        for model in models.values():
            model.close()
        if log is not None:
            log.close()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found, Exception: internal})
    app.state.models = models
    return app


# --------------------------------------------------------------------------- running it

CONFIG_ENV = "KERAKIT_SERVE_CONFIG"  # how `--workers N` hands the model list to each worker process


def app_from_env():
    """uvicorn factory for worker processes (`--workers N`)."""
    config = json.loads(os.environ[CONFIG_ENV])
    return create_app([ModelEntry(**e) for e in config["entries"]], ServeOptions(**config["options"]))


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise KerakitError(f"Cannot listen on {host}:{port}: {e.strerror}. Pass another --port or --host.") from None


def serve(entries: list[ModelEntry], options: ServeOptions, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, announce=print) -> None:
    """Load the models, then serve until interrupted."""
    import uvicorn

    check_port(host, port)
    common = dict(host=host, port=port, log_level="warning", access_log=False, loop="uvloop", http="httptools",
                  timeout_graceful_shutdown=5)
    if workers > 1:
        for e in entries:  # fail here, once, rather than in every worker
            runtime.detect_format(e.path)
        os.environ[CONFIG_ENV] = json.dumps({"entries": [asdict(e) for e in entries], "options": asdict(options)})
        announce(_banner(entries, host, port, workers, options))
        uvicorn.run("kerakit.serve:app_from_env", factory=True, workers=workers, **common)
        return
    app = create_app(entries, options)
    announce(_banner(entries, host, port, workers, options))
    uvicorn.run(app, **common)


def _banner(entries, host, port, workers, options) -> str:
    url = f"http://{host}:{port}"
    lines = [f"kerakit serve: {url}  ({workers} worker{'s' if workers > 1 else ''}"
             + (f", dynamic batching up to {options.max_batch} rows / {options.batch_wait_ms} ms" if options.max_batch > 1 else "")
             + ")"]
    for e in entries:
        lines.append(f"  {e.name} (version {e.version}): {e.path}")
        lines.append(f"    KServe v2:  POST {url}/v2/models/{e.name}/infer")
        lines.append(f"    TF Serving: POST {url}/v1/models/{e.name}:predict")
    lines.append(f"  metrics: {url}/metrics" + (f"   request log: {options.log_path}" if options.log_path else ""))
    return "\n".join(lines)
