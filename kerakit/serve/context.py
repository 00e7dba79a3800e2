"""What every protocol shares per request, HTTP or gRPC: the model table, limits, metrics and the
request log, and `Serving.handle`, one inference request from model lookup to the logged answer.

    response = await serving.handle("myprotocol", name, version, prepare, encode, error)

`prepare(model)` reads and decodes the request into checked inputs (and a context for
`encode`), `encode(model, context, outputs)` builds the protocol's answer and
`error(message, status)` its error answer; a `BadRequest` anywhere becomes
`error(...)` with its HTTP status, which gRPC maps to its own codes.

`Protocol` is one entry of the app's protocol table (see `kerakit.serve.app.protocols`).
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from typing import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from kerakit.request_log import RequestLog
from kerakit.serve.models import BadRequest, Model, ServeOptions, rows
from kerakit.serve.openapi import Fragment

WARN_EVERY_S = 60.0  # at most one warning line a minute about an unwritable request log
RETRY_AFTER_S = 1  # what a request refused for a full queue is told to wait (HTTP's Retry-After)


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
        self._series: dict[tuple, tuple] = {}
        self.log_errors = Counter("kerakit_request_log_errors", "Request log lines dropped: the log could not be written.",
                                  registry=registry)

    def count(self, model: str, protocol: str, code: int, seconds: float, rows: int) -> None:
        series = self._series.get((model, protocol, code))
        if series is None:  # labels() takes a lock and builds a key: once per label set, not per request
            series = self._series[(model, protocol, code)] = (
                self.requests.labels(model, protocol, code), self.latency.labels(model, protocol),
                self.errors.labels(model, protocol, code) if code != 200 else self.rows.labels(model))
        requests, latency, errors_or_rows = series
        requests.inc()
        latency.observe(seconds)
        errors_or_rows.inc(1 if code != 200 else rows)

    def exposition(self, models: dict[str, Model]) -> bytes:
        """The text format, after taking the batch sizes the models recorded since last time."""
        for model in models.values():
            sizes, model.batch_sizes = model.batch_sizes, []
            for n in sizes:
                self.batch_rows.labels(model.name).observe(n)
        return generate_latest(self.registry)


class Serving:
    """The model table, limits, metrics and request log that every protocol's endpoints share."""

    def __init__(self, models: dict[str, Model], options: ServeOptions, log: RequestLog | None = None,
                 warn: Callable[[str], None] | None = None):
        self.models, self.options, self.log = models, options, log
        self.metrics = Metrics()
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._warned_at = -WARN_EVERY_S
        self.queued = 0  # inference requests decoded and not yet answered: waiting for their model, or in it

    def lookup(self, name: str, version: str | None = None) -> Model:
        """The model called `name` (at `version`, if given), or a 404 BadRequest naming the served ones."""
        model = self.models.get(name)
        if model is None:
            shown = name[:100] + ("..." if len(name) > 100 else "")
            raise BadRequest(f"Unknown model {shown!r}. Served models: {', '.join(sorted(self.models))}.", 404)
        if version and version != model.version:
            raise BadRequest(f"Model {name!r} has no version {version[:20]!r}; served version: {model.version}.", 404)
        return model

    async def handle(self, protocol: str, name: str, version: str | None,
                     prepare: Callable[[Model], Awaitable[tuple]], encode: Callable, error: Callable):
        """One inference request: look up, decode, infer, encode; counted, timed, then logged."""
        start = time.perf_counter()
        label, code = "", 200
        try:
            model = self.lookup(name, version)
            label = model.name
            inputs, context = await prepare(model)
            outputs = await self._infer(model, inputs)
            response = encode(model, context, outputs)
        except BadRequest as e:
            response, code = error(str(e), e.status), e.status
        except Exception as e:  # noqa: BLE001 - a bug of ours: logged, answered 500, server stays up
            traceback.print_exc()
            response, code = error(f"Internal error: {type(e).__name__}: {str(e)[:200]}", 500), 500
        elapsed = time.perf_counter() - start
        self.metrics.count(label, protocol, code, elapsed, rows(inputs) if code == 200 else 0)
        if code == 200 and self.log is not None:
            # After the answer is on its way; a log that cannot be written never fails the request.
            asyncio.get_running_loop().call_soon(self.write_log, model, protocol, inputs, outputs, elapsed)
        return response

    async def _infer(self, model: Model, inputs: dict):
        """`model.infer(inputs)`, or a 503 once --max-queue requests are already waiting or running: a
        client told to come back (Retry-After) rather than one whose answer comes too late to use."""
        limit = self.options.max_queue
        if self.queued >= limit:
            raise BadRequest(f"Server busy: {limit} inference requests are already queued or running "
                             f"(--max-queue {limit}); retry in {RETRY_AFTER_S} s.", 503)
        self.queued += 1
        try:
            return await model.infer(inputs)
        finally:
            self.queued -= 1

    def write_log(self, model: Model, protocol: str, inputs: dict, outputs: dict, elapsed: float) -> None:
        try:
            self.log.write(model.name, model.version, protocol, inputs, outputs, elapsed)
        except Exception as e:  # noqa: BLE001 - full disk, read-only remount, odd values: the line is dropped
            self.metrics.log_errors.inc()
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_S:
                self._warned_at = now
                self.warn(f"warning: request log {self.log.path} not written ({type(e).__name__}: {str(e)[:120]}); "
                          "requests are still answered, dropped lines are counted in kerakit_request_log_errors_total "
                          "(this warning at most once a minute)")


class Protocol:
    """One way to reach the model table, as one module in kerakit/serve brings it: its HTTP routes
    with the OpenAPI fragment that documents them (a test holds the two to the same set), its line
    per model in the start-up banner, and `start`/`stop` for a server of its own beside the app
    (gRPC's), which the app's lifespan calls after the models are loaded and before they are closed.

        class MyProtocol(Protocol):
            title = "My protocol"
            def routes(self, ctx):
                return [Route("/my/models/{name}", ctx.describe(lambda model: {"name": model.name}))]
            def openapi(self, model_names):
                return Fragment(paths={"/my/models/{name}": openapi.get_operation("MyModel", "Metadata", ...)})
    """

    title = ""  # in the banner

    def routes(self, ctx) -> list:
        """Starlette routes on `ctx` (a `kerakit.serve.http.Context`)."""
        return []

    def openapi(self, model_names: list[str]) -> Fragment:
        """The OpenAPI paths (and their schemas) of exactly the routes `routes` returns."""
        return Fragment()

    def infer_url(self, url: str, name: str) -> str | None:
        """Where to POST model `name`'s inference requests, on the HTTP server at `url`."""
        return None

    def listening(self) -> str | None:
        """Its banner line when it listens on an address of its own."""
        return None

    async def start(self, serving: Serving) -> None:
        """Start serving `serving`'s models beside the HTTP app, in the app's event loop."""

    async def stop(self) -> None:
        """Stop what `start` started, letting requests in flight finish."""
