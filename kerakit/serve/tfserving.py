"""TF Serving's REST API (what TF Serving-style JSON clients send).

    GET  /v1/models/NAME[/versions/V]              model status
    GET  /v1/models/NAME[/versions/V]/metadata     the serving_default signature
    POST /v1/models/NAME[/versions/V]:predict      {"instances": rows} or {"inputs": columns}
    POST /v1/models/NAME[/versions/V]:classify     501 (and :regress): TF Serving verbs kerakit does not implement
    POST /v1/models/NAME[/versions/V]:VERB         400 for a verb TF Serving does not have; 404 for an unknown model

    inputs, kind = decode(model, b'{"instances": [[1, 2, 3]]}', max_elements=10**6)
    encode(await model.infer(inputs), kind)
    # -> {'predictions': [[0.1, 0.9]]}

Non-finite outputs are answered as "NaN", "Infinity", "-Infinity" (see `kerakit.serve.tensors`).
"""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from kerakit.dtypes import tf_type
import kerakit.serve.images as images
import kerakit.serve.tables as tables
from kerakit.serve.decoding import parse_json, to_array
from kerakit.serve.context import Protocol
from kerakit.serve.http import Context, error
from kerakit.serve.models import BadRequest, Model, rows
from kerakit.serve.openapi import Fragment, get_operation, infer_operation, json_body, model_params, ref
from kerakit.serve.tensors import dumps, json_values, strings

PROTOCOL = "tfserving"  # its label in metrics and the request log


# --------------------------------------------------------------------------- metadata

def model_status(model: Model) -> dict:
    """GET /v1/models/NAME."""
    return {"model_version_status": [{"version": model.version, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def model_metadata(model: Model) -> dict:
    """GET /v1/models/NAME/metadata: one signature, serving_default."""
    def tensors(specs):
        return {s.name: {"dtype": tf_type(s.dtype),
                         "tensor_shape": {"dim": [{"size": str(-1 if d is None else d)} for d in s.shape]},
                         "name": s.name} for s in specs.values()}

    signature = {"inputs": tensors(model.inputs), "outputs": tensors(model.outputs),
                 "method_name": "tensorflow/serving/predict"}
    return {"model_spec": {"name": model.name, "version": model.version, "signature_name": ""},
            "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}


# --------------------------------------------------------------------------- requests and responses

def decode(model: Model, body: bytes, max_elements: int) -> tuple[dict, str]:
    """A :predict request -> (checked inputs, "row" or "columnar": the format to answer in)."""
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
        columns, kind = _columns_of_rows(request["instances"], names), "row"
    else:
        columns, kind = _columns(request["inputs"], names), "columnar"
    arrays = {n: images.b64_column(model, n, columns[n], max_elements) for n in names}  # {"b64": ...}: photos
    arrays.update({n: _array(model, n, columns[n]) for n in names if arrays[n] is None})
    return tables.check(model, arrays, max_elements), kind


def _array(model: Model, name: str, value) -> np.ndarray:
    """One input's JSON values as an array; a table model's column takes null (and a number "NaN") as missing."""
    where, dtype = f"input {name!r}", model.inputs[name].dtype
    column = tables.columns_of(model)
    if column is not None and column.kind(name):
        return tables.from_json(value, dtype, where, column.kind(name))
    return strings(value, where) if dtype == "object" else to_array(value, dtype, where)


def _columns_of_rows(instances, names: list[str]) -> dict:
    """The row format: a list of rows, each keyed by input name (a bare value for one input)."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of rows.")
    if len(names) == 1 and images.b64_rows(instances):
        return {names[0]: instances}
    if all(isinstance(row, dict) for row in instances):
        for i, row in enumerate(instances):
            if set(row) != set(names):
                raise BadRequest(f"instances[{i}] has keys {sorted(map(str, row))[:10]}; the model's inputs are "
                                 f"{sorted(names)}{_difference(row, names)}.")
        return {n: [row[n] for row in instances] for n in names}
    if len(names) == 1 and not any(isinstance(row, dict) for row in instances):
        return {names[0]: instances}
    raise BadRequest(f"Each instance must be an object keyed by input name {sorted(names)}.")


def _columns(inputs, names: list[str]) -> dict:
    """The columnar format: whole inputs keyed by name (a bare value for one input)."""
    if isinstance(inputs, dict):
        if set(inputs) != set(names):
            raise BadRequest(f"'inputs' has keys {sorted(map(str, inputs))[:10]}; the model's inputs are "
                             f"{sorted(names)}{_difference(inputs, names)}.")
        return inputs
    if len(names) == 1:
        return {names[0]: inputs}
    raise BadRequest(f"'inputs' must be an object keyed by input name {sorted(names)}.")


def _difference(keys, names: list[str]) -> str:
    """What a row or 'inputs' object lacks and what it has too many of, named (a table's rows have many keys)."""
    missing, unknown = sorted(set(names) - set(keys)), sorted(map(str, set(keys) - set(names)))
    return "".join(f"; {what} {', '.join(repr(k[:100]) for k in found[:10])}"
                   for what, found in (("missing", missing), ("unknown", unknown)) if found)


def encode(result: dict[str, np.ndarray], kind: str) -> dict:
    """The response JSON, in the format the request came in."""
    if kind == "row":
        if len(result) == 1:
            return {"predictions": json_values(next(iter(result.values())))}
        return {"predictions": [{k: json_values(v[i]) for k, v in result.items()} for i in range(rows(result))]}
    if len(result) == 1:
        return {"outputs": json_values(next(iter(result.values())))}
    return {"outputs": {k: json_values(v) for k, v in result.items()}}


# --------------------------------------------------------------------------- the protocol: routes and their OpenAPI

SCHEMAS = {  # the REST API's request forms: row `instances`, columnar `inputs`
    "PredictRequest": {"type": "object", "properties": {
        "signature_name": {"type": "string"}, "instances": {"type": "array"},
        "inputs": {"anyOf": [{"type": "object"}, {"type": "array"}]}}},
    "PredictResponse": {"type": "object", "properties": {
        "predictions": {"type": "array"}, "outputs": {"anyOf": [{"type": "object"}, {"type": "array"}]}}},
    "ModelStatus": {"type": "object", "required": ["model_version_status"],
                    "properties": {"model_version_status": {"type": "array", "items": {"type": "object"}}}},
    "SignatureMetadata": {"type": "object", "required": ["model_spec", "metadata"]},
}
MODEL_PREFIXES = (("/v1/models/{name}", False), ("/v1/models/{name}/versions/{version}", True))
UNSUPPORTED = ["classify", "regress"]  # TF Serving's other verbs: 501; a verb TF Serving lacks is a client's 400


class _NoVerbRoute(Route):
    """A route whose path parameters hold no ':': `/v1/models/m:predict` is a verb on model m, not the
    status of a model called 'm:predict', so a GET or PUT there is answered by the verb routes' 405."""

    def matches(self, scope):
        match, child = super().matches(scope)
        if match is not Match.NONE and any(":" in str(v) for v in child["path_params"].values()):
            return Match.NONE, {}
        return match, child


class TFServingREST(Protocol):
    """The routes listed at the top of this module, and their OpenAPI paths."""

    title = "TF Serving"

    def infer_url(self, url: str, name: str) -> str:
        return f"{url}/v1/models/{name}:predict"

    def routes(self, ctx: Context) -> list[Route]:
        def decode_request(model: Model, body: bytes, request: Request):
            return decode(model, body, ctx.options.max_elements)

        def encode_response(model: Model, kind: str, outputs: dict) -> Response:
            return Response(dumps(encode(outputs, kind)), media_type="application/json")

        async def predict(request: Request) -> Response:
            return await ctx.answer(request, PROTOCOL, decode_request, encode_response)

        async def other_verb(request: Request) -> Response:
            verb = request.path_params["verb"]
            if verb not in UNSUPPORTED:
                return error(f"Unknown verb :{verb[:30]}; TF Serving's REST API has :predict (answered here), "
                             f":{', :'.join(UNSUPPORTED)}.", 400)
            try:
                ctx.lookup(request.path_params["name"], request.path_params.get("version"))
            except BadRequest as e:
                return error(str(e), e.status)
            return error(f"TF Serving's :{verb} is not implemented by this server; it answers :predict "
                         f"(POST /v1/models/NAME:predict with 'instances' or 'inputs').", 501)

        table = []
        for prefix, _ in MODEL_PREFIXES:  # the verb routes first: a GET or PUT on them is their 405
            table += [Route(prefix + ":predict", predict, methods=["POST"]),
                      Route(prefix + ":{verb}", other_verb, methods=["POST"]),
                      _NoVerbRoute(prefix, ctx.describe(model_status)),
                      _NoVerbRoute(prefix + "/metadata", ctx.describe(model_metadata))]
        return table

    def openapi(self, model_names: list[str]) -> Fragment:
        paths = {}
        for prefix, versioned in MODEL_PREFIXES:
            # TF Serving's versions are int64 (its own route regex takes only digits); a version holding ':'
            # would read as a verb, e.g. GET /v1/models/m/versions/1:x is :x on version 1, a POST-only route.
            params = model_params(model_names, versioned, version_pattern=r"^[0-9]+$")
            paths[prefix] = get_operation("ModelStatus", "TF Serving model status", params)
            paths[prefix + "/metadata"] = get_operation("SignatureMetadata", "TF Serving signature metadata", params)
            paths[prefix + ":predict"] = infer_operation(params, "PredictRequest", "PredictResponse",
                                                         "TF Serving predict")
            verb = {"name": "verb", "in": "path", "required": True, "schema": {"type": "string", "enum": UNSUPPORTED}}
            paths[prefix + ":{verb}"] = {"post": {
                "summary": "TF Serving :classify and :regress: not implemented (501, naming :predict)",
                "parameters": [*params, verb],
                "responses": {"501": json_body(ref("Error"), "Names what is served"),
                              "400": json_body(ref("Error"), "A verb TF Serving does not have"),
                              "404": json_body(ref("Error"), "Unknown model or version")}}}
        return Fragment(paths, SCHEMAS)
