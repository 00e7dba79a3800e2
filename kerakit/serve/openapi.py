"""The OpenAPI 3 document of kerakit's HTTP API, served at GET /openapi.json.

    document(["digits_cnn"])["paths"]["/v2/models/{name}/infer"]["post"]

The KServe v2 schemas follow the Open Inference Protocol's REST specification
(inference request and response, metadata, health), the TF Serving ones its
REST API's request forms (row `instances`, columnar `inputs`). Model names in
paths list the served models; any other name is answered 404, as documented.
Every error answer is `{"error": "..."}`. Data in JSON answers are numbers,
booleans or strings (BYTES, and "NaN"/"Infinity"/"-Infinity" for non-finite
floats, see `kerakit.serve.tensors`).
"""

from __future__ import annotations

from kerakit.dtypes import V2_TYPES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "A bad request, named in `error`")
SCALAR = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Parameters": {"type": "object", "additionalProperties": SCALAR},
    "TensorData": {"type": "array", "items": {"anyOf": [SCALAR, {"type": "array"}]}},
    "Datatype": {"type": "string", "enum": list(V2_TYPES)},
    "RequestInput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": _ref("Datatype"), "parameters": _ref("Parameters"), "data": _ref("TensorData")}},
    "RequestOutput": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": _ref("Parameters")}},
    "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": _ref("Parameters"),
        "inputs": {"type": "array", "items": _ref("RequestInput")},
        "outputs": {"type": "array", "items": _ref("RequestOutput")}}},
    "ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": _ref("Datatype"), "parameters": _ref("Parameters"), "data": _ref("TensorData")}},
    "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": _ref("Parameters"), "outputs": {"type": "array", "items": _ref("ResponseOutput")}}},
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": _ref("Datatype"),
        "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}}},
    "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": _ref("TensorMetadata")},
        "outputs": {"type": "array", "items": _ref("TensorMetadata")}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "ModelConfig": {"type": "object", "required": ["name", "max_batch_size", "input", "output"], "properties": {
        "name": {"type": "string"}, "platform": {"type": "string"},
        "max_batch_size": {"type": "integer", "minimum": 0},
        "input": {"type": "array", "items": {"type": "object"}}, "output": {"type": "array", "items": {"type": "object"}}}},
    "PredictRequest": {"type": "object", "properties": {
        "signature_name": {"type": "string"}, "instances": {"type": "array"},
        "inputs": {"anyOf": [{"type": "object"}, {"type": "array"}]}}},
    "PredictResponse": {"type": "object", "properties": {
        "predictions": {"type": "array"}, "outputs": {"anyOf": [{"type": "object"}, {"type": "array"}]}}},
    "ModelStatus": {"type": "object", "required": ["model_version_status"],
                    "properties": {"model_version_status": {"type": "array", "items": {"type": "object"}}}},
}


def _model_params(names: list[str], versioned: bool) -> list[dict]:
    params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": names}}]
    if versioned:
        params.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
    return params


def _get(schema: str, summary: str, params: list | None = None, missing: bool = True) -> dict:
    responses = {"200": _json(_ref(schema), summary)}
    if missing:
        responses["404"] = ERROR
    return {"get": {"summary": summary, **({"parameters": params} if params else {}), "responses": responses}}


def _infer(params: list[dict], request: str, response: str, summary: str) -> dict:
    body = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    answers = {"200": _json(_ref(response), "The outputs"), "400": ERROR, "404": ERROR, "413": ERROR, "415": ERROR}
    if request == "InferenceRequest":  # binary outputs when asked (the binary tensor data extension)
        answers["200"]["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"post": {"summary": summary, "parameters": params, "requestBody": body, "responses": answers}}


def _model_paths(names: list[str]) -> dict:
    paths = {}
    for suffix, versioned in (("", False), ("/versions/{version}", True)):
        params = _model_params(names, versioned)
        v2, v1 = f"/v2/models/{{name}}{suffix}", f"/v1/models/{{name}}{suffix}"
        paths[v2] = _get("ModelMetadata", "KServe v2 model metadata", params)
        paths[v2 + "/ready"] = _get("ModelReady", "Whether the model is ready", params)
        paths[v2 + "/config"] = _get("ModelConfig", "Triton's model configuration", params)
        paths[v2 + "/infer"] = _infer(params, "InferenceRequest", "InferenceResponse", "KServe v2 inference")
        paths[v1] = _get("ModelStatus", "TF Serving model status", params)
        paths[v1 + "/metadata"] = _get("SignatureMetadata", "TF Serving signature metadata", params)
        paths[v1 + ":predict"] = _infer(params, "PredictRequest", "PredictResponse", "TF Serving predict")
        for verb in ("classify", "regress"):
            paths[f"{v1}:{verb}"] = {"post": {"summary": f"TF Serving :{verb} (not supported)", "parameters": params,
                                              "responses": {"501": _json(_ref("Error"), "Names what is served")}}}
    return paths


def document(model_names: list[str]) -> dict:
    """The OpenAPI document for a server serving `model_names`."""
    schemas = {**SCHEMAS,
               "ModelReady": {"type": "object", "required": ["ready"], "properties": {
                   "name": {"type": "string"}, "ready": {"type": "boolean"}}},
               "Health": {"type": "object", "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"},
                                                           "models": {"type": "array", "items": {"type": "string"}}}},
               "SignatureMetadata": {"type": "object", "required": ["model_spec", "metadata"]}}
    paths = {
        "/v2": _get("ServerMetadata", "KServe v2 server metadata", missing=False),
        "/v2/health/live": _get("Health", "Liveness", missing=False),
        "/v2/health/ready": _get("Health", "Readiness (and the served models)", missing=False),
        **_model_paths(model_names),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
    }
    return {"openapi": "3.0.3",
            "info": {"title": "kerakit serve", "version": "1",
                     "description": "KServe v2 (Open Inference Protocol) REST and TF Serving REST; "
                                    "the KServe v2 gRPC service runs beside it (--grpc-port)."},
            "paths": paths, "components": {"schemas": schemas}}
