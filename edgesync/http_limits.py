"""How long a daemon's HTTP server waits for a slow client.

aiohttp's server closes an idle kept-alive connection (`keepalive_timeout`)
but does not bound a request that arrives slowly: a client sending a header
byte every few seconds, or a body that trickles in, holds its connection —
and for a body, a handler, a staging file and an import lock — for as long
as it likes (slowloris). Every edgesync server (the hub's API, each agent's
data endpoint) runs through `guarded_runner`, which adds the missing bounds:

* `header_s`: a request's headers must be complete within this long of the
  connection opening, or of their first byte on a kept-alive connection;
  otherwise the connection is closed without an answer (nothing was asked).
* `body_s`: while a handler waits for more of a request body, the next bytes
  must come within this long; otherwise the read raises `RequestTimeout`
  (answered 408) and the connection is closed after the answer. A handler
  that is busy writing what it read (the client held back by TCP flow
  control) is not waiting, so a slow store never counts against a client.
* `idle_s`: aiohttp's `keepalive_timeout`, an idle connection's life.

A refused body (past its declared size, over a limit, a 408) is answered at
once; aiohttp then reads and discards the rest for `LINGER_S` at most before
closing, so the client can read the answer before the socket goes.

This is the one module that reaches into aiohttp's server internals
(`RequestHandler.data_received` and its queue of parsed requests, the body
`StreamReader`'s wait timer); `tests/integration/test_slow_clients.py` pins
what it relies on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.helpers import BaseTimerContext
from aiohttp.streams import EmptyStreamReader, StreamReader
from aiohttp.web_protocol import RequestHandler

from edgesync.config import ReadTimeouts
from edgesync.errors import RequestTimeout

log = logging.getLogger(__name__)

# aiohttp's default is 10 s of reading a refused body's rest: at LAN speeds
# gigabytes nobody wants. Long enough for the answer to reach the client.
LINGER_S = 2.0


def guarded_runner(app: web.Application, timeouts: ReadTimeouts, **kwargs: Any) -> web.AppRunner:
    """An AppRunner whose connections obey `timeouts` (kwargs as AppRunner's)."""
    return _GuardedAppRunner(app, timeouts, keepalive_timeout=timeouts.idle_s, lingering_time=LINGER_S,
                             **kwargs)


class _GuardedAppRunner(web.AppRunner):
    def __init__(self, app: web.Application, timeouts: ReadTimeouts, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._timeouts = timeouts

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The server is the sites' protocol factory: make it build guarded handlers.
        server.__class__ = _GuardedServer
        server.read_timeouts = self._timeouts  # type: ignore[attr-defined]
        return server


class _GuardedServer(web.Server):
    read_timeouts: ReadTimeouts

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, self.read_timeouts, loop=self._loop, **self._kwargs)


class _GuardedHandler(RequestHandler):
    def __init__(self, manager: web.Server, timeouts: ReadTimeouts, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._timeouts = timeouts
        self._header_deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the last request's body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed_before = self._request_count
        super().data_received(data)
        new = self._request_count - parsed_before
        if new > 0:  # headers complete: their deadline is met
            self._disarm_header_deadline()
            for _, payload in list(self._messages)[-new:]:
                self._watch_body(payload)
        elif data and not self._reading_body():
            self._arm_header_deadline()  # the first bytes of the next request's headers

    @property
    def handling_request(self) -> bool:
        return self._request_in_progress

    def _reading_body(self) -> bool:
        return self._body is not None and not self._body.is_eof()

    def _watch_body(self, payload: StreamReader) -> None:
        if isinstance(payload, EmptyStreamReader) or not isinstance(payload, StreamReader):
            return
        self._body = payload
        payload._timer = _BodyDeadline(self, payload, self._timeouts.body_s)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None and self._timeouts.header_s > 0:
            self._header_deadline = self._loop.call_later(self._timeouts.header_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("closing a connection from %s: its request headers were not complete within %.0f s",
                 peer, self._timeouts.header_s)
        self.force_close()


class _BodyDeadline(BaseTimerContext):
    """The body StreamReader's timer: aiohttp enters it around each wait for
    more body bytes, so each wait gets `seconds`, however long the body."""

    def __init__(self, handler: _GuardedHandler, body: StreamReader, seconds: float) -> None:
        self._handler, self._body, self._seconds = handler, body, seconds
        self._expiry: asyncio.TimerHandle | None = None

    def __enter__(self) -> BaseTimerContext:
        if self._seconds > 0:
            self._expiry = asyncio.get_running_loop().call_later(self._seconds, self._expired)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def assert_timeout(self) -> None:
        """Part of aiohttp's timer protocol; the deadline acts through the reader instead."""

    def _expired(self) -> None:
        self._expiry = None
        if not self._handler.handling_request:
            # aiohttp reading a refused body's rest after the answer: just close.
            self._handler.force_close()
            return
        # Answer (the handler sees the exception), then close: no more of this
        # body is parsed, and the rest is never read as a next request.
        self._handler.close()
        self._body.set_exception(RequestTimeout(
            f"no request body bytes arrived for {self._seconds:.0f} s; send the body without pauses "
            "that long (or raise body_timeout_s)"))
        self._body.feed_eof()
