"""KServe v2 / Open Inference Protocol over REST (what Triton and `tritonclient` speak).

    GET  /v2                                      server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/NAME[/versions/V]             model metadata
    GET  /v2/models/NAME[/versions/V]/ready
    GET  /v2/models/NAME[/versions/V]/config      Triton's model configuration, as JSON
    POST /v2/models/NAME[/versions/V]/infer       JSON tensors, or the binary tensor data extension

    inputs, request = decode(model, body, header_length=None, max_elements=10**6)
    content, headers = encode(model, request, await model.infer(inputs))
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version as package_version

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kerakit.dtypes import NUMPY_TO_V2, TRITON_TYPES, V2_TYPES
from kerakit.serve.decoding import parse_json, require, to_array
from kerakit.serve.http import Context
from kerakit.serve.models import BadRequest, Model

TITLE = "KServe v2"
PROTOCOL = "v2"  # its label in metrics and the request log
HEADER_LENGTH = "inference-header-content-length"  # the binary tensor data extension


def infer_url(url: str, name: str) -> str:
    return f"{url}/v2/models/{name}/infer"


# --------------------------------------------------------------------------- metadata

def model_metadata(model: Model) -> dict:
    """GET /v2/models/NAME."""
    def tensors(specs):
        return [{"name": s.name, "datatype": NUMPY_TO_V2.get(s.dtype, s.dtype.upper()),
                 "shape": [-1 if d is None else d for d in s.shape]} for s in specs.values()]

    return {"name": model.name, "versions": [model.version], "platform": model.platform,
            "inputs": tensors(model.inputs), "outputs": tensors(model.outputs)}


def model_config(model: Model) -> dict:
    """Triton's model configuration, as JSON (GET /v2/models/NAME/config)."""
    def tensors(specs):
        return [{"name": s.name, "data_type": TRITON_TYPES.get(s.dtype, s.dtype),
                 "dims": [-1 if d is None else d for d in s.shape[1:]]} for s in specs.values()]

    return {"name": model.name, "platform": model.platform, "max_batch_size": max(model.max_batch, 0),
            "input": tensors(model.inputs), "output": tensors(model.outputs)}


# --------------------------------------------------------------------------- requests and responses

def decode(model: Model, body: bytes, header_length: str | None, max_elements: int) -> tuple[dict, dict]:
    """A v2 infer request -> (checked inputs, request JSON); `header_length` is the
    Inference-Header-Content-Length header, present when binary tensors follow the JSON."""
    body, binary = _split(body, header_length)
    request = parse_json(body)
    if not isinstance(request, dict):
        raise BadRequest(f"The request must be a JSON object with 'inputs', got {type(request).__name__}.")
    items = require(request, "inputs", list, "request")
    if not isinstance(request.get("parameters", {}), dict):
        raise BadRequest("'parameters' of the request must be an object, e.g. {\"binary_data_output\": true}.")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(items):
        name = require(item, "name", str, f"inputs[{i}]")
        if name not in model.inputs:
            raise BadRequest(f"Unknown input {name[:100]!r}; model {model.name!r} takes {sorted(model.inputs)}.")
        if name in arrays:
            raise BadRequest(f"Input {name!r} is given twice.")
        arrays[name], offset = _tensor(item, model.inputs[name].dtype, f"input {name!r}", binary, offset, max_elements)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size.")
    _check_outputs(request, model)
    return model.check(arrays, max_elements), request


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer.") from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes.")
    return body[:n], body[n:]


def _tensor(item: dict, model_dtype: str, where: str, binary: bytes, offset: int,
            max_elements: int) -> tuple[np.ndarray, int]:
    """One request input as an array, and the binary data offset after it."""
    shape = require(item, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of non-negative integers, got {str(shape)[:100]}.")
    count = math.prod(shape)
    if count > max_elements:
        raise BadRequest(f"{where}: shape {shape} has {count} elements; the limit is {max_elements} (--max-elements).", 413)
    datatype = require(item, "datatype", str, where)
    expected = NUMPY_TO_V2.get(model_dtype, model_dtype)
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
        return np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape), offset + size
    if "data" not in item:
        raise BadRequest(f"{where}: missing 'data' (or parameters.binary_data_size with binary data).")
    array = to_array(item["data"], dtype, where)
    if array.size != count:
        raise BadRequest(f"{where}: data has {array.size} elements but shape {shape} needs {count}.")
    return array.reshape(shape), offset


def _check_outputs(request: dict, model: Model) -> None:
    outputs = request.get("outputs")
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects.")
    for i, out in enumerate(outputs):
        out_name = require(out, "name", str, f"outputs[{i}]")
        if out_name not in model.outputs:
            raise BadRequest(f"Unknown output {out_name[:100]!r}; model {model.name!r} has {sorted(model.outputs)}.")


def encode(model: Model, request: dict, result: dict[str, np.ndarray]) -> tuple[bytes, dict]:
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
                                       HEADER_LENGTH: str(len(header))}


# --------------------------------------------------------------------------- routes

def routes(ctx: Context) -> list[Route]:
    def decode_request(model: Model, body: bytes, request: Request):
        return decode(model, body, request.headers.get(HEADER_LENGTH), ctx.options.max_elements)

    def encode_response(model: Model, request_json: dict, outputs: dict) -> Response:
        content, headers = encode(model, request_json, outputs)
        return Response(content, headers=headers)

    async def infer(request: Request) -> Response:
        return await ctx.answer(request, PROTOCOL, decode_request, encode_response)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "kerakit", "version": package_version("kerakit"),
                             "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True, "models": sorted(ctx.models)})

    table = [Route("/v2", server_metadata), Route("/v2/health/live", live), Route("/v2/health/ready", ready)]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        table += [Route(prefix, ctx.describe(model_metadata)),
                  Route(prefix + "/ready", ctx.describe(lambda m: {"name": m.name, "ready": True})),
                  Route(prefix + "/config", ctx.describe(model_config)),
                  Route(prefix + "/infer", infer, methods=["POST"])]
    return table
