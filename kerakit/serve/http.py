"""What every protocol shares per request: model lookup, the body and its limits, JSON errors,
metrics and the request log. A protocol module builds its routes on a `Context`:

    async def predict(request):
        return await ctx.answer(request, "myprotocol", decode, encode)
    Route("/my/models/{name}", ctx.describe(lambda model: {"name": model.name}))
"""

from __future__ import annotations

import time
import traceback
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from kerakit.request_log import RequestLog
from kerakit.serve.models import BadRequest, Model, ServeOptions, rows

# decode(model, body, request) -> (checked inputs, context for encode)
# encode(model, context, outputs) -> Response
Decode = Callable[[Model, bytes, Request], tuple]
Encode = Callable[[Model, object, dict], Response]


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Metrics:
    """The Prometheus series of one app (its own registry, so several apps never share counts)."""

    def __init__(self):
        disable_created_metrics()  # no *_created series: only the counts and the histogram
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("kerakit_requests", "Inference requests answered, by HTTP status.",
                                ["model", "protocol", "code"], registry=registry)
        self.errors = Counter("kerakit_request_errors", "Inference requests answered with an error (4xx/5xx).",
                              ["model", "protocol", "code"], registry=registry)
        self.latency = Histogram("kerakit_request_seconds", "Inference request latency, body read to response.",
                                 ["model", "protocol"], registry=registry,
                                 buckets=(.0002, .0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.rows = Counter("kerakit_inference_rows", "Rows (examples) inferred.", ["model"], registry=registry)
        self.batch_rows = Histogram("kerakit_model_batch_rows", "Rows per model call (dynamic batching merges requests).",
                                    ["model"], registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

    def count(self, model: str, protocol: str, code: int, seconds: float, rows: int) -> None:
        self.requests.labels(model, protocol, code).inc()
        self.latency.labels(model, protocol).observe(seconds)
        if code != 200:
            self.errors.labels(model, protocol, code).inc()
        else:
            self.rows.labels(model).inc(rows)

    def exposition(self, models: dict[str, Model]) -> Response:
        """GET /metrics: the text format, after taking the batch sizes the models recorded since last time."""
        for model in models.values():
            sizes, model.batch_sizes = model.batch_sizes, []
            for n in sizes:
                self.batch_rows.labels(model.name).observe(n)
        return Response(generate_latest(self.registry), headers={"content-type": CONTENT_TYPE_LATEST})


class Context:
    """The model table, limits, metrics and request log that every protocol's routes share."""

    def __init__(self, models: dict[str, Model], options: ServeOptions, log: RequestLog | None = None):
        self.models, self.options, self.log = models, options, log
        self.metrics = Metrics()

    def lookup(self, request: Request) -> Model:
        """The model named by the path's {name} (and {version}, if given), or a 404."""
        name = request.path_params["name"]
        model = self.models.get(name)
        if model is None:
            shown = name[:100] + ("..." if len(name) > 100 else "")
            raise BadRequest(f"Unknown model {shown!r}. Served models: {', '.join(sorted(self.models))}.", 404)
        version = request.path_params.get("version")
        if version is not None and version != model.version:
            raise BadRequest(f"Model {name!r} has no version {version[:20]!r}; served version: {model.version}.", 404)
        return model

    async def read_body(self, request: Request) -> bytes:
        """The whole body, refused with 413 as soon as it is over the limit (declared or streamed)."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(f"Request body of {int(declared)} bytes is over the {limit}-byte limit "
                             "(--max-body-mb).", 413)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"Request body is over the {limit}-byte limit (--max-body-mb).", 413)
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest("The client disconnected before sending the whole body.") from None
        return b"".join(chunks)

    async def answer(self, request: Request, protocol: str, decode: Decode, encode: Encode) -> Response:
        """One inference request: look up, read, decode, infer, encode; counted, timed and logged."""
        start = time.perf_counter()
        label = ""
        try:
            model = self.lookup(request)
            label = model.name
            body = await self.read_body(request)
            inputs, context = decode(model, body, request)
            outputs = await model.infer(inputs)
            response = encode(model, context, outputs)
            code = 200
        except BadRequest as e:
            response, code = error(str(e), e.status), e.status
        except Exception as e:  # noqa: BLE001 - a bug of ours: logged, answered 500, server stays up
            traceback.print_exc()
            response, code = error(f"Internal error: {type(e).__name__}: {str(e)[:200]}", 500), 500
        elapsed = time.perf_counter() - start
        self.metrics.count(label, protocol, code, elapsed, rows(inputs) if code == 200 else 0)
        if code == 200 and self.log is not None:
            self.log.write(model.name, model.version, protocol, inputs, outputs, elapsed)
        return response

    def describe(self, fn: Callable[[Model], dict]):
        """A GET endpoint answering `fn(model)` as JSON for the model in the path (404 if none)."""
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(fn(self.lookup(request)))
            except BadRequest as e:
                return error(str(e), e.status)
        return endpoint

    async def metrics_endpoint(self, request: Request) -> Response:
        return self.metrics.exposition(self.models)


async def no_route(request: Request, exc: HTTPException) -> Response:
    """Starlette's 404/405 as JSON errors, like every other answer."""
    detail = exc.detail if exc.status_code != 404 else f"No route for {request.method} {request.url.path[:200]}."
    return error(detail, exc.status_code)


async def internal(request: Request, exc: Exception) -> Response:
    return error(f"Internal error: {type(exc).__name__}", 500)
