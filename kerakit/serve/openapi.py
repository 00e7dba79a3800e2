"""The OpenAPI 3 document of kerakit's HTTP API, served at GET /openapi.json, merged from the
fragments of the app's protocol table: each protocol module documents the routes it adds.

    fragment = Fragment(paths={"/my/models/{name}": get_operation("MyModel", "My metadata", model_params(names))},
                        schemas={"MyModel": {"type": "object"}})
    document([fragment, ...])["paths"]["/my/models/{name}"]["get"]

The helpers here are what fragments share: `ref`, `json_body`, the `Error` answer, the model
name parameter (an enum of the served models; any other name is answered 404, as documented),
and GET and inference operations. Every error answer is `{"error": "..."}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Fragment:
    """What one protocol adds to the document: its paths and the component schemas they use."""

    paths: dict = field(default_factory=dict)
    schemas: dict = field(default_factory=dict)


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = json_body(ref("Error"), "A bad request, named in `error`")
SCHEMAS = {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}
TITLE = "kerakit serve"
DESCRIPTION = ("KServe v2 (Open Inference Protocol) REST and TF Serving REST; "
               "the KServe v2 gRPC service runs beside it (--grpc-port).")


def model_params(names: list[str], versioned: bool, version_pattern: str | None = None) -> list[dict]:
    """The path parameters `name` (one of `names`) and, if `versioned`, `version` (matching
    `version_pattern` where the protocol restricts it)."""
    params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": names}}]
    if versioned:
        schema = {"type": "string", **({"pattern": version_pattern} if version_pattern else {})}
        params.append({"name": "version", "in": "path", "required": True, "schema": schema})
    return params


def get_operation(schema: str, summary: str, params: list | None = None, missing: bool = True) -> dict:
    """A GET answering `schema` as JSON, and 404 when `missing` (an unknown model or version)."""
    responses = {"200": json_body(ref(schema), summary)}
    if missing:
        responses["404"] = ERROR
    return {"get": {"summary": summary, **({"parameters": params} if params else {}), "responses": responses}}


def infer_operation(params: list[dict], request: str, response: str, summary: str) -> dict:
    """A POST taking `request` as JSON, answering `response` or the errors every inference route can give."""
    body = {"required": True, "content": {"application/json": {"schema": ref(request)}}}
    answers = {"200": json_body(ref(response), "The outputs"), "400": ERROR, "404": ERROR, "413": ERROR, "415": ERROR}
    return {"post": {"summary": summary, "parameters": params, "requestBody": body, "responses": answers}}


def document(fragments: list[Fragment]) -> dict:
    """The OpenAPI document of `fragments`; two that claim one path, or one schema name for two
    schemas, are a bug in a protocol module, named here rather than one silently replacing the other."""
    paths, schemas = {}, dict(SCHEMAS)
    for fragment in fragments:
        for path, item in fragment.paths.items():
            if path in paths:
                raise ValueError(f"OpenAPI path {path!r} is documented by two protocols.")
            paths[path] = item
        for name, schema in fragment.schemas.items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"OpenAPI schema {name!r} is defined twice, differently.")
    return {"openapi": "3.0.3", "info": {"title": TITLE, "version": "1", "description": DESCRIPTION},
            "paths": paths, "components": {"schemas": schemas}}
