"""KServe v2 / Open Inference Protocol over REST (what Triton and `tritonclient` speak).

    GET  /v2                                      server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/NAME[/versions/V]             model metadata
    GET  /v2/models/NAME[/versions/V]/ready
    GET  /v2/models/NAME[/versions/V]/config      Triton's model configuration, as JSON
    POST /v2/models/NAME[/versions/V]/infer       JSON tensors, or the binary tensor data extension

    inputs, context = decode(model, body, header_length=None, max_elements=10**6)
    content, headers = encode(model, context, await model.infer(inputs))

Every datatype of the protocol (BOOL, UINT8-64, INT8-64, FP16/32/64, BYTES) in JSON and
binary form, in and out; non-finite outputs in JSON as "NaN"/"Infinity"/"-Infinity"
(`kerakit.serve.tensors`); Triton's classification extension (`parameters.classification`
of an output: its top classes as "score:index:label" BYTES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version as package_version

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import kerakit.serve.images as images
import kerakit.serve.tables as tables
from kerakit.dtypes import NUMPY_TO_V2, TRITON_TYPES, V2_TYPES
from kerakit.serve.decoding import parse_json, require, to_array
from kerakit.serve.context import Protocol
from kerakit.serve.http import Context
from kerakit.serve.models import BadRequest, Model
from kerakit.serve.openapi import Fragment, get_operation, infer_operation, model_params, ref
from kerakit.serve.tensors import (check_parameters, classify, dumps, from_raw, json_values, strings, to_raw,
                                   v2_datatype)

PROTOCOL = "v2"  # its label in metrics and the request log
HEADER_LENGTH = "inference-header-content-length"  # the binary tensor data extension
EXTENSIONS = ["binary_tensor_data", "classification"]


# --------------------------------------------------------------------------- metadata

def tensor_metadata(specs) -> list[dict]:
    return [{"name": s.name, "datatype": NUMPY_TO_V2[s.dtype], "shape": [-1 if d is None else d for d in s.shape]}
            for s in specs.values()]


def model_metadata(model: Model) -> dict:
    """GET /v2/models/NAME."""
    return {"name": model.name, "versions": [model.version], "platform": model.platform,
            "inputs": tensor_metadata(model.inputs), "outputs": tensor_metadata(model.outputs)}


def model_config(model: Model) -> dict:
    """Triton's model configuration, as JSON (GET /v2/models/NAME/config); max_batch_size is what
    the server accepts per request (--max-batch-rows)."""
    def tensors(specs):
        return [{"name": s.name, "data_type": TRITON_TYPES[s.dtype],
                 "dims": [-1 if d is None else d for d in s.shape[1:]]} for s in specs.values()]

    return {"name": model.name, "platform": model.platform, "max_batch_size": model.max_rows,
            "input": tensors(model.inputs), "output": tensors(model.outputs)}


# --------------------------------------------------------------------------- requests and responses

@dataclass(frozen=True)
class Wanted:
    """One output the request asked for: as binary data, and/or classified (Triton's class_count)."""

    name: str
    binary: bool = False
    class_count: int = 0


def decode(model: Model, body: bytes, header_length: str | None, max_elements: int) -> tuple[dict, dict]:
    """A v2 infer request -> (checked inputs, {"id", "outputs": [Wanted]}); `header_length` is the
    Inference-Header-Content-Length header, present when binary tensors follow the JSON."""
    body, binary = _split(body, header_length)
    request = parse_json(body)
    if not isinstance(request, dict):
        raise BadRequest(f"The request must be a JSON object with 'inputs', got {type(request).__name__}.")
    items = require(request, "inputs", list, "request")
    params = check_parameters(request.get("parameters", {}), "request", {"binary_data_output": bool})
    if "id" in request and not isinstance(request["id"], str):
        raise BadRequest(f"'id' must be a string, got {type(request['id']).__name__}.")
    arrays: dict[str, np.ndarray] = {}
    offset, columns = 0, tables.columns_of(model)
    for i, item in enumerate(items):
        name = require(item, "name", str, f"inputs[{i}]")
        if name not in model.inputs:
            raise BadRequest(f"Unknown input {name[:100]!r}; model {model.name!r} takes {sorted(model.inputs)}.")
        if name in arrays:
            raise BadRequest(f"Input {name!r} is given twice.")
        where = f"input {name!r}"
        photos = images.photo_input(model, name) if item.get("datatype") == "BYTES" else None
        if photos is not None:  # encoded photos (JPEG, PNG, ...) for an image input
            arrays[name], offset = images.v2_tensor(item, photos, where, binary, offset, max_elements)
        else:
            arrays[name], offset = _tensor(item, model.inputs[name].dtype, where, binary, offset, max_elements,
                                           columns and columns.kind(name))
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input's binary_data_size.")
    wanted = wanted_outputs(request.get("outputs"), model, bool(params.get("binary_data_output", False)))
    return tables.check(model, arrays, max_elements), {"id": request.get("id"), "outputs": wanted}


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length[:30]!r} is not an integer.") from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes.")
    return body[:n], memoryview(body)[n:]


def check_shape(shape, where: str, max_elements: int) -> int:
    """The element count of a request tensor's shape (400 if not a shape, 413 over the limit)."""
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of non-negative integers, got {str(shape)[:100]}.")
    count = math.prod(shape)
    if count > max_elements:
        raise BadRequest(f"{where}: shape {shape} has {count} elements; the limit is {max_elements} (--max-elements).", 413)
    return count


def check_datatype(datatype: str, model_dtype: str, where: str) -> str:
    expected = NUMPY_TO_V2[model_dtype]
    if datatype != expected:
        known = "" if datatype in V2_TYPES else f" (datatypes: {', '.join(V2_TYPES)})"
        raise BadRequest(f"{where}: datatype {datatype[:20]!r} does not match the model's {expected}{known}.")
    return datatype


def _tensor(item: dict, model_dtype: str, where: str, binary, offset: int,
            max_elements: int, column: str | None = None) -> tuple[np.ndarray, int]:
    """One request input as an array, and the binary data offset after it; `column`, a table model's column
    kind ("number", "category": `kerakit.serve.tables`), takes null in JSON data as a missing value."""
    shape = require(item, "shape", list, where)
    count = check_shape(shape, where, max_elements)
    datatype = check_datatype(require(item, "datatype", str, where), model_dtype, where)
    params = check_parameters(item.get("parameters", {}), where, {"binary_data_size": int})
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if offset + size > len(binary):
            raise BadRequest(f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of binary data.")
        return from_raw(binary[offset:offset + size], datatype, shape, where), offset + size
    if "data" not in item:
        raise BadRequest(f"{where}: missing 'data' (or parameters.binary_data_size with binary data).")
    if column:
        array = tables.from_json(item["data"], V2_TYPES[datatype], where, column)
    else:
        array = strings(item["data"], where) if datatype == "BYTES" else to_array(item["data"], V2_TYPES[datatype], where)
    if array.size != count:
        raise BadRequest(f"{where}: data has {array.size} elements but shape {shape} needs {count}.")
    return array.reshape(shape), offset


def wanted_outputs(outputs, model: Model, default_binary: bool) -> list[Wanted]:
    """The request's `outputs` (every output of the model when absent), checked."""
    if outputs is None:
        return [Wanted(n, default_binary) for n in model.outputs]
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects.")
    wanted = []
    for i, out in enumerate(outputs):
        name = require(out, "name", str, f"outputs[{i}]")
        if name not in model.outputs:
            raise BadRequest(f"Unknown output {name[:100]!r}; model {model.name!r} has {sorted(model.outputs)}.")
        params = check_parameters(out.get("parameters", {}), f"outputs[{i}]",
                                  {"binary_data": bool, "classification": int})
        wanted.append(Wanted(name, params.get("binary_data", default_binary), params.get("classification", 0)))
    return wanted


def output_array(model: Model, want: Wanted, result: dict[str, np.ndarray]) -> np.ndarray:
    """An output as answered: the model's array, or its top classes when classification was asked."""
    value = result[want.name]
    return classify(value, want.class_count, model.labels, f"output {want.name!r}") if want.class_count else value


def encode(model: Model, context: dict, result: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The v2 response body and headers; binary outputs where the request asked for them."""
    outputs, chunks = [], []
    for want in context["outputs"]:
        value = output_array(model, want, result)
        entry = {"name": want.name, "datatype": v2_datatype(value), "shape": list(value.shape)}
        if want.binary:
            raw = to_raw(value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_values(value.ravel())
        outputs.append(entry)
    response = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if context.get("id") is not None:
        response["id"] = context["id"]
    header = dumps(response)
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}


# --------------------------------------------------------------------------- the protocol: routes and their OpenAPI

SCALAR = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 0}}
# The Open Inference Protocol's REST schemas: inference request and response, metadata, health.
SCHEMAS = {
    "Parameters": {"type": "object", "additionalProperties": SCALAR},
    "TensorData": {"type": "array", "items": {"anyOf": [SCALAR, {"type": "array"}]}},
    "Datatype": {"type": "string", "enum": list(V2_TYPES)},
    "RequestInput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": SHAPE, "datatype": ref("Datatype"), "parameters": ref("Parameters"),
        "data": ref("TensorData")}},
    "RequestOutput": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": ref("Parameters")}},
    "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": ref("Parameters"),
        "inputs": {"type": "array", "items": ref("RequestInput")},
        "outputs": {"type": "array", "items": ref("RequestOutput")}}},
    "ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": SHAPE, "datatype": ref("Datatype"), "parameters": ref("Parameters"),
        "data": ref("TensorData")}},
    "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": ref("Parameters"), "outputs": {"type": "array", "items": ref("ResponseOutput")}}},
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": ref("Datatype"),
        "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}}},
    "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": ref("TensorMetadata")},
        "outputs": {"type": "array", "items": ref("TensorMetadata")}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "ModelConfig": {"type": "object", "required": ["name", "max_batch_size", "input", "output"], "properties": {
        "name": {"type": "string"}, "platform": {"type": "string"},
        "max_batch_size": {"type": "integer", "minimum": 0},
        "input": {"type": "array", "items": {"type": "object"}}, "output": {"type": "array", "items": {"type": "object"}}}},
    "ModelReady": {"type": "object", "required": ["ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "Health": {"type": "object", "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"},
                                                "models": {"type": "array", "items": {"type": "string"}}}},
}
MODEL_PREFIXES = (("/v2/models/{name}", False), ("/v2/models/{name}/versions/{version}", True))


class KServeV2REST(Protocol):
    """The routes listed at the top of this module, and their OpenAPI paths."""

    title = "KServe v2"

    def infer_url(self, url: str, name: str) -> str:
        return f"{url}/v2/models/{name}/infer"

    def routes(self, ctx: Context) -> list[Route]:
        def decode_request(model: Model, body: bytes, request: Request):
            return decode(model, body, request.headers.get(HEADER_LENGTH), ctx.options.max_elements)

        def encode_response(model: Model, context: dict, outputs: dict) -> Response:
            content, headers = encode(model, context, outputs)
            return Response(content, headers=headers)

        async def infer(request: Request) -> Response:
            return await ctx.answer(request, PROTOCOL, decode_request, encode_response)

        async def server_metadata(request: Request) -> Response:
            return JSONResponse({"name": "kerakit", "version": package_version("kerakit"),
                                 "extensions": EXTENSIONS})

        async def live(request: Request) -> Response:
            return JSONResponse({"live": True})

        async def ready(request: Request) -> Response:
            return JSONResponse({"ready": True, "models": sorted(ctx.models)})

        table = [Route("/v2", server_metadata), Route("/v2/health/live", live), Route("/v2/health/ready", ready)]
        for prefix, _ in MODEL_PREFIXES:
            table += [Route(prefix, ctx.describe(model_metadata)),
                      Route(prefix + "/ready", ctx.describe(lambda m: {"name": m.name, "ready": True})),
                      Route(prefix + "/config", ctx.describe(model_config)),
                      Route(prefix + "/infer", infer, methods=["POST"])]
        return table

    def openapi(self, model_names: list[str]) -> Fragment:
        paths = {"/v2": get_operation("ServerMetadata", "KServe v2 server metadata", missing=False),
                 "/v2/health/live": get_operation("Health", "Liveness", missing=False),
                 "/v2/health/ready": get_operation("Health", "Readiness (and the served models)", missing=False)}
        for prefix, versioned in MODEL_PREFIXES:
            params = model_params(model_names, versioned)
            paths[prefix] = get_operation("ModelMetadata", "KServe v2 model metadata", params)
            paths[prefix + "/ready"] = get_operation("ModelReady", "Whether the model is ready", params)
            paths[prefix + "/config"] = get_operation("ModelConfig", "Triton's model configuration", params)
            infer_op = infer_operation(params, "InferenceRequest", "InferenceResponse", "KServe v2 inference")
            # Binary outputs when asked (the binary tensor data extension).
            infer_op["post"]["responses"]["200"]["content"]["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"}}
            paths[prefix + "/infer"] = infer_op
        return Fragment(paths, SCHEMAS)
