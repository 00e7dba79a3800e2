"""What every HTTP protocol shares per request: the body (its limit and Content-Encoding), JSON
errors, compressed answers, and `Context.answer`, which runs `Serving.handle` for a request.
A protocol module builds its routes on a `Context`:

    async def predict(request):
        return await ctx.answer(request, "myprotocol", decode, encode)
    Route("/my/models/{name}", ctx.describe(lambda model: {"name": model.name}))
"""

from __future__ import annotations

import gzip
import zlib
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from kerakit.serve.context import RETRY_AFTER_S, Serving
from kerakit.serve.models import BadRequest, Model

# decode(model, body, request) -> (checked inputs, context for encode)
# encode(model, context, outputs) -> Response
Decode = Callable[[Model, bytes, Request], tuple]
Encode = Callable[[Model, object, dict], Response]
ENCODINGS = ("gzip", "deflate")  # Content-Encoding of requests, and of answers when Accept-Encoding asks
COMPRESS_ABOVE = 1024  # smaller answers go uncompressed: the header costs more than it saves
DRAIN_BYTES = 64 * 1024 * 1024  # an over-limit body is read and dropped up to this size before its 413


async def _drain(stream, read: int = 0) -> None:
    """Read and drop the rest of a request body stream, up to DRAIN_BYTES in all (see `Context.read_body`)."""
    try:
        async for chunk in stream:
            read += len(chunk)
            if read > DRAIN_BYTES:
                return
    except ClientDisconnect:
        return


def error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def busy_or_error(message: str, status: int) -> JSONResponse:
    """`error`, telling a client refused for a full queue (503) when to come back."""
    return error(message, status, {"retry-after": str(RETRY_AFTER_S)} if status == 503 else None)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate (zlib, or raw as some clients send it) body, refused once over `limit` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ENCODINGS:
        raise BadRequest(f"Content-Encoding {encoding[:30]!r} is not supported; use gzip, deflate or none.", 415)
    for wbits in ((31,) if encoding == "gzip" else (15, -15)):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            raise BadRequest(f"Decompressed request body is over the {limit}-byte limit (--max-body-mb).", 413)
        if not inflater.eof:
            raise BadRequest(f"The {encoding} request body is truncated.")
        return out
    raise BadRequest(f"The request body is not valid {encoding} data (Content-Encoding: {encoding}).")


def compressed(response: Response, request: Request) -> Response:
    """`response` gzip- or deflate-compressed when the client's Accept-Encoding asks for it."""
    accept = request.headers.get("accept-encoding")
    if not accept or len(response.body) < COMPRESS_ABOVE or "content-encoding" in response.headers:
        return response
    wanted = {}
    for item in accept.lower().split(","):
        name, _, q = item.strip().partition(";")
        try:
            weight = float(q.strip()[2:]) if q.strip().startswith("q=") else 1.0
        except ValueError:
            weight = 0.0
        wanted[name.strip()] = weight
    choice = max((e for e in ENCODINGS if wanted.get(e, wanted.get("*", 0)) > 0),
                 key=lambda e: wanted.get(e, 0), default=None)
    if choice is None:
        return response
    body = gzip.compress(response.body, 1) if choice == "gzip" else zlib.compress(response.body, 1)
    headers = {k: v for k, v in response.headers.items() if k not in ("content-length",)}
    return Response(body, status_code=response.status_code, headers={**headers, "content-encoding": choice,
                                                                      "vary": "Accept-Encoding"})


class Context(Serving):
    """The shared model table and limits, with what HTTP routes need on top."""

    async def read_body(self, request: Request) -> bytes:
        """The whole body, decompressed, refused with 413 once it is over the limit (declared or streamed).

        An over-limit body is still read (and dropped) up to DRAIN_BYTES before the 413 goes out: a client
        such as `requests` sends the whole body before it reads an answer, and a server that answers and
        closes mid-body leaves it with a broken pipe instead of the 413 (a 6 MB JSON body against a 4 MB
        limit did). Past DRAIN_BYTES the connection is closed: a client that large pays for it.
        """
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if int(declared) <= DRAIN_BYTES:
                await _drain(request.stream())
            raise BadRequest(f"Request body of {int(declared)} bytes is over the {limit}-byte limit "
                             "(--max-body-mb).", 413)
        chunks, size, stream = [], 0, request.stream()
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    chunks.clear()
                    await _drain(stream, size)
                    raise BadRequest(f"Request body is over the {limit}-byte limit (--max-body-mb).", 413)
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest("The client disconnected before sending the whole body.") from None
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding")
        return body if encoding is None else decompress(body, encoding, limit)

    async def answer(self, request: Request, protocol: str, decode: Decode, encode: Encode) -> Response:
        """One inference request over HTTP (see `Serving.handle`), its answer compressed if asked."""
        async def prepare(model: Model):
            return decode(model, await self.read_body(request), request)

        response = await self.handle(protocol, request.path_params["name"], request.path_params.get("version"),
                                     prepare, encode, busy_or_error)
        return compressed(response, request)

    def describe(self, fn: Callable[[Model], dict]):
        """A GET endpoint answering `fn(model)` as JSON for the model in the path (404 if none)."""
        async def endpoint(request: Request) -> Response:
            try:
                model = self.lookup(request.path_params["name"], request.path_params.get("version"))
                return JSONResponse(fn(model))
            except BadRequest as e:
                return error(str(e), e.status)
        return endpoint

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(self.models), headers={"content-type": CONTENT_TYPE_LATEST})


async def no_route(request: Request, exc: HTTPException) -> Response:
    """Starlette's 404/405 as JSON errors, like every other answer (a 405 keeps its Allow header)."""
    detail = exc.detail if exc.status_code != 404 else f"No route for {request.method} {request.url.path[:200]}."
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        detail = f"Method {request.method} is not allowed on {request.url.path[:200]}; allowed: {allow}."
    return error(detail, exc.status_code, exc.headers)


async def internal(request: Request, exc: Exception) -> Response:
    return error(f"Internal error: {type(exc).__name__}", 500)
