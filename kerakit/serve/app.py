"""The ASGI app (every protocol's routes over one model table, and the gRPC service beside it)
and `serve`, which runs it under uvicorn."""

from __future__ import annotations

import json
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import asdict, replace

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Route

import kerakit.serve.images as images
import kerakit.serve.kserve_v2 as kserve_v2
import kerakit.serve.tables as tables
import kerakit.serve.tfserving as tfserving
from kerakit import runtime
from kerakit.errors import KerakitError
from kerakit.request_log import RequestLog
from kerakit.serve.context import Protocol
from kerakit.serve.http import Context, internal, no_route
from kerakit.serve.models import Model, ModelEntry, ServeOptions, check_threads
from kerakit.serve.openapi import Fragment, document, json_body

CONFIG_ENV = "KERAKIT_SERVE_CONFIG"  # how `--workers N` hands the model list to each worker process


class ServerEndpoints(Protocol):
    """The server's own routes, beside the protocols': GET /metrics and GET /openapi.json."""

    def routes(self, ctx: Context) -> list[Route]:
        async def openapi_json(request):
            return JSONResponse(request.app.state.openapi)

        return [Route("/metrics", ctx.metrics_endpoint), Route("/openapi.json", openapi_json)]

    def openapi(self, model_names: list[str]) -> Fragment:
        text = {"description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        return Fragment(paths={
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": text}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": json_body({"type": "object"}, "OpenAPI 3")}}}})


def protocols(options: ServeOptions) -> list[Protocol]:
    """The protocol table: every way the app serves its models, HTTP (routes and OpenAPI) and gRPC
    (started and stopped in the app's lifespan, when `options.grpc_address` asks for it)."""
    table = [kserve_v2.KServeV2REST(), tfserving.TFServingREST(), ServerEndpoints()]
    if options.grpc_address:
        import kerakit.serve.grpc_v2 as grpc_v2  # grpc (0.15 s to import) only where it is served

        table.append(grpc_v2.KServeV2GRPC(options.grpc_address))
    return table


def create_app(entries: list[ModelEntry], options: ServeOptions | None = None,
               table: list[Protocol] | None = None) -> Starlette:
    """The Starlette app serving `entries` (loaded now, before the first request) through every
    protocol of `table` (default `protocols(options)`): their routes, /openapi.json merged from
    their fragments, and a lifespan that starts them, then stops them (last first) and the models."""
    options = options or ServeOptions()
    table = protocols(options) if table is None else table
    models = {e.name: Model(e, options) for e in entries}
    images.prepare(models.values())  # image inputs also take encoded photos: their fit rule, TF's resize loaded
    tables.prepare(models.values())  # a table model's raw columns, from its run's recipe
    log = RequestLog(options.log_path, options.log_inputs) if options.log_path else None
    ctx = Context(models, options, log)

    @asynccontextmanager
    async def lifespan(app):
        started = []
        try:
            for protocol in table:
                await protocol.start(ctx)
                started.append(protocol)
            yield
        finally:
            for protocol in reversed(started):
                await protocol.stop()
            for model in models.values():
                model.close()
            if log is not None:
                log.close()

    routes = [route for protocol in table for route in protocol.routes(ctx)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: no_route, Exception: internal})
    app.state.models = models
    app.state.openapi = document([protocol.openapi(sorted(models)) for protocol in table])
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes (`--workers N`)."""
    config = json.loads(os.environ[CONFIG_ENV])
    return create_app([ModelEntry(**e) for e in config["entries"]], ServeOptions(**config["options"]))


def check_port(host: str, port: int, option: str = "--port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise KerakitError(f"Cannot listen on {host}:{port}: {e.strerror}. Pass another {option} or --host.") from None


def check_options(options: ServeOptions) -> None:
    """Refuse settings the machine cannot honour, before any model is loaded."""
    cores = runtime.cores()
    if options.threads is not None and options.threads > cores:
        raise KerakitError(f"--threads {options.threads} is more than the {cores} cores available to this process; "
                           f"pass at most {cores} (or 0 for the runtime's own choice).")
    if options.max_batch > options.max_batch_rows:
        raise KerakitError(f"--max-batch {options.max_batch} is above --max-batch-rows {options.max_batch_rows}; "
                           "a merged batch cannot be larger than what one request may carry.")


def serve(entries: list[ModelEntry], options: ServeOptions, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, announce=print, keep_alive_s: float = 5.0) -> None:
    """Load the models, then serve until interrupted (gRPC too, when `options.grpc_address` is set);
    idle HTTP connections are closed after `keep_alive_s`, and those that send too slowly or come past
    `options.max_connections` as `kerakit.serve.connections` says."""
    import uvicorn

    import kerakit.serve.connections as connections

    check_options(options)
    options = replace(options, max_connections=connections.connection_cap(options.max_connections,
                                                                        2 if options.grpc_address else 1))
    check_threads(entries, options.threads)  # here, once, rather than in every worker
    check_port(host, port)
    if options.grpc_address:
        grpc_host, _, grpc_port = options.grpc_address.rpartition(":")
        check_port(grpc_host.strip("[]"), int(grpc_port), "--grpc-port")
    if options.log_path:
        RequestLog(options.log_path).close()  # one clear line now if it cannot be written, not one per worker
    limits = connections.Limits(options.header_timeout_s, options.body_timeout_s, options.max_connections)
    common = dict(host=host, port=port, log_level="warning", access_log=False, loop="uvloop",
                  http=connections.protocol(limits), timeout_graceful_shutdown=5, timeout_keep_alive=keep_alive_s)
    if workers > 1:
        os.environ[CONFIG_ENV] = json.dumps({"entries": [asdict(e) for e in entries], "options": asdict(options)})
        announce(banner(entries, host, port, workers, options))
        uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=workers, **common)
        return
    app = create_app(entries, options)
    announce(banner(entries, host, port, workers, options))
    uvicorn.run(app, **common)


def banner(entries: list[ModelEntry], host: str, port: int, workers: int, options: ServeOptions) -> str:
    """What `kerakit serve` prints once the models are loaded: where to send what."""
    url = f"http://{host}:{port}"
    lines = [f"kerakit serve: {url}  ({workers} worker{'s' if workers > 1 else ''}"
             + (f", dynamic batching up to {options.max_batch} rows / {options.batch_wait_ms} ms" if options.max_batch > 1 else "")
             + ")"]
    table = protocols(options)
    for e in entries:
        lines.append(f"  {e.name} (version {e.version}): {e.path}")
        urls = [(p.title, p.infer_url(url, e.name)) for p in table]
        urls = [(title, infer) for title, infer in urls if infer]
        width = max(len(title) for title, _ in urls) + 1
        lines += [f"    {title + ':':<{width}} POST {infer}" for title, infer in urls]
    lines += [f"  {line}" for line in (p.listening() for p in table) if line]
    lines.append(f"  metrics: {url}/metrics   OpenAPI: {url}/openapi.json"
                 + (f"   request log: {options.log_path}" if options.log_path else ""))
    if options.max_connections is not None:
        lines.append(f"  limits: headers in {options.header_timeout_s:g} s, body gaps {options.body_timeout_s:g} s, "
                     f"{options.max_connections} connections per listener, {options.max_queue} requests queued"
                     + (f", {options.max_concurrent_rpcs} gRPC calls" if options.grpc_address else "")
                     + (" (per worker)" if workers > 1 else ""))
    return "\n".join(lines)
