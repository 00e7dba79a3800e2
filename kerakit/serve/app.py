"""The ASGI app (every protocol's routes over one model table) and `serve`, which runs it."""

from __future__ import annotations

import json
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import asdict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

import kerakit.serve.kserve_v2 as kserve_v2
import kerakit.serve.tfserving as tfserving
from kerakit import runtime
from kerakit.errors import KerakitError
from kerakit.request_log import RequestLog
from kerakit.serve.http import Context, internal, no_route
from kerakit.serve.models import Model, ModelEntry, ServeOptions

# Each protocol module has routes(ctx) -> [Route], and TITLE and infer_url(url, name) for the banner.
PROTOCOLS = (kserve_v2, tfserving)
CONFIG_ENV = "KERAKIT_SERVE_CONFIG"  # how `--workers N` hands the model list to each worker process


def create_app(entries: list[ModelEntry], options: ServeOptions | None = None) -> Starlette:
    """The Starlette app serving `entries` (loaded now, before the first request)."""
    options = options or ServeOptions()
    models = {e.name: Model(e, options) for e in entries}
    log = RequestLog(options.log_path, options.log_inputs) if options.log_path else None
    ctx = Context(models, options, log)

    @asynccontextmanager
    async def lifespan(app):
        yield
        for model in models.values():
            model.close()
        if log is not None:
            log.close()

    routes = [Route("/metrics", ctx.metrics_endpoint)]
    for protocol in PROTOCOLS:
        routes += protocol.routes(ctx)
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: no_route, Exception: internal})
    app.state.models = models
    return app


def app_from_env() -> Starlette:
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
    width = max(len(p.TITLE) for p in PROTOCOLS) + 1
    for e in entries:
        lines.append(f"  {e.name} (version {e.version}): {e.path}")
        lines += [f"    {p.TITLE + ':':<{width}} POST {p.infer_url(url, e.name)}" for p in PROTOCOLS]
    lines.append(f"  metrics: {url}/metrics" + (f"   request log: {options.log_path}" if options.log_path else ""))
    return "\n".join(lines)
