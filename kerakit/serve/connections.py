"""HTTP connections that cannot hold the server up: idle, half-sent and surplus ones are closed, saying why.

uvicorn (0.54, httptools) leaves three holes that its settings do not close. Its keep-alive timeout is
armed only after a complete response, so a connection that sends nothing, part of its headers or part
of its body stays open for ever (0 of 1,000 such sockets were closed after 12 s). `limit_concurrency`
answers 503 only once a request's headers are in, and the sockets that never send them still hold file
descriptors until accept() fails: 1,100 idle sockets under `ulimit -n 1024` made the server reset every
new connection. `GuardedHTTP` is uvicorn's httptools protocol with:

- a header deadline: a request's headers must be whole within `header_timeout_s` of the connection
  opening (or of the request's first byte on a kept-alive connection): 408 and closed if part came,
  closed if nothing did;
- a body deadline: at most `body_timeout_s` between two reads of a request body (nginx's
  client_body_timeout rule: a slow upload that keeps moving is fine): 408 and closed;
- a connection cap: past `max_connections` open connections a new one is answered 503 with
  Retry-After at once and closed, before it can hold a file descriptor, so the connections already
  open keep being served (with 1,100 idle sockets under `ulimit -n 1024`: 20 of 20 new requests got
  the 503, and were served again once the header deadline had closed the idle ones).

    uvicorn.run(app, http=protocol(Limits(10, 10, connection_cap(None, listeners=2))), ...)
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kerakit.errors import KerakitError
from kerakit.serve.context import RETRY_AFTER_S

DEFAULT_MAX_CONNECTIONS = 1000  # per listener, where the file descriptor limit allows it
FD_RESERVE = 128  # descriptors the server holds besides connections: model files, libraries, the log, epoll, pipes


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int


def protocol(limits: Limits):
    """The protocol factory to pass as uvicorn's `http` (a partial, so `--workers N` can pickle it)."""
    return functools.partial(GuardedHTTP, limits=limits)


def connection_cap(requested: int | None, listeners: int) -> int:
    """--max-connections per listener (HTTP, and gRPC when served), checked against the file descriptors
    this process may open, whose soft limit is raised towards the hard one where that makes room.
    Not given: DEFAULT_MAX_CONNECTIONS, or what fits. More than fits: one line saying what does."""
    import resource

    want = requested or DEFAULT_MAX_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = want * listeners + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(hard, need), hard))
        except (ValueError, OSError):  # above the kernel's own ceiling (fs.nr_open): keep what there is
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fits = want if soft == resource.RLIM_INFINITY else (soft - FD_RESERVE) // listeners
    if requested is not None and requested > fits:
        raise KerakitError(f"--max-connections {requested} needs about {need} file descriptors ({listeners} "
                           f"listener{'s' if listeners > 1 else ''} and {FD_RESERVE} for the server itself); this "
                           f"process may open {soft} (ulimit -n). Raise ulimit -n, or pass --max-connections "
                           f"{max(fits, 1)} or less.")
    return max(1, min(want, fits))


def _answer(status: int, reason: str, message: str, headers: str = "") -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{headers}\r\n").encode() + body


class GuardedHTTP(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the cap in this module's docstring.

    A connection waits for one thing at a time: a request's headers, then its body, then nothing while
    the app answers (uvicorn's keep-alive timeout takes over once the answer is sent). Moving on only
    writes down the new deadline; the one timer, when it fires, acts on the deadline then in force or
    sleeps until it, so no timer is made or cancelled per request: server CPU per REST request of a
    small model at concurrency 16 was plain uvicorn's within this machine's noise (median of 4
    alternating rounds of 12,000 requests: 169 us both).
    """

    def __init__(self, config, server_state, app_state, _loop=None, *, limits: Limits):
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None  # "headers", "body" or None
        self._deadline = 0.0
        self._in_message = False  # a request's bytes have begun and it is not yet whole
        self._refused = False  # past the cap: answered 503, what else comes is dropped

    # ---------------------------------------------------------------- the deadline

    def _wait_for(self, what: str | None, seconds: float = 0.0) -> None:
        self._waiting_for = what
        if what is None:
            return  # a pending timer finds nothing to do when it fires
        self._deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiting_for is None or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline:  # moved on (and is waiting again) since the timer was set
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        elif self._waiting_for == "headers":
            self._headers_late()
        else:
            self._body_late()

    def _close(self, answer: bytes | None = None) -> None:
        self._waiting_for = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.transport.is_closing():
            if answer is not None:
                self.transport.write(answer)
            self.transport.close()

    def _headers_late(self) -> None:
        between_answers = self.cycle is None or self.cycle.response_complete  # nothing of ours is being written
        if self._in_message and between_answers:
            seconds = self.limits.header_timeout_s
            self._close(_answer(408, "Request Timeout", f"The request headers did not arrive whole within {seconds:g} s "
                                                        "(--header-timeout-s); the connection is closed."))
        else:
            self._close()

    def _body_late(self) -> None:
        if self.flow is not None and self.flow.read_paused:  # the app has not read what came: not the client's wait
            self._wait_for("body", self.limits.body_timeout_s)
            return
        started = self.cycle is not None and self.cycle.response_started
        seconds = self.limits.body_timeout_s
        self._close(None if started else _answer(
            408, "Request Timeout", f"No request body bytes arrived for {seconds:g} s (--body-timeout-s); "
                                    "the connection is closed."))

    def _refuse(self) -> None:
        self._refused = True
        cap = self.limits.max_connections
        self._close(_answer(503, "Service Unavailable",
                            f"Server busy: {cap} connections are open, the most it takes (--max-connections "
                            f"{cap}); retry in {RETRY_AFTER_S} s.", f"retry-after: {RETRY_AFTER_S}\r\n"))

    # ---------------------------------------------------------------- uvicorn's protocol, guarded

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse()
        else:
            self._wait_for("headers", self.limits.header_timeout_s)

    def connection_lost(self, exc) -> None:
        self._close()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if (self._waiting_for is None and not self._in_message and self.timeout_keep_alive_task is None
                and (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()):
            # Bytes that begin no request (blank lines) stopped the keep-alive timer: the header deadline instead.
            self._wait_for("headers", self.limits.header_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        if self._waiting_for is None:  # a kept-alive connection's next request: its deadline runs from its first byte
            self._wait_for("headers", self.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._wait_for("body", self.limits.body_timeout_s)  # until on_message_complete

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._deadline = self.loop.time() + self.limits.body_timeout_s  # the gap between reads, not the whole body

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_message = False
        self._wait_for(None)
        # Answered before its body was whole (a 405, a 413): the body's bytes stopped uvicorn's keep-alive timer.
        if (self.cycle is not None and self.cycle.response_complete and self.timeout_keep_alive_task is None
                and not self.pipeline and not self.transport.is_closing()):
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
