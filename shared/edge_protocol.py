"""uvicorn's httptools protocol with the bounds it lacks: header and body read timeouts, a header size
limit, a connection cap.

uvicorn bounds only the idle time between requests (``--timeout-keep-alive``). A connection that never
finishes its headers, or trickles a body after its ``Content-Length``, is kept for ever, and headers of any
size are parsed. This subclass adds those bounds where the bytes arrive, before the app (and its API-key
check) ever sees the request, at the cost of a few attribute updates per read and one timer per request.

One timer per connection, re-armed lazily: data arriving only records the time, and the timer, when it
fires, compares the recorded times with the limits and either closes the connection or sleeps until the next
deadline. So a fast request never touches the timer wheel beyond one ``call_at`` and one ``cancel``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.edge_limits import EdgeLimits

log = logging.getLogger("imgpod.edge")


class Phase(Enum):
    IDLE = "idle"  # between requests: uvicorn's keep-alive timer bounds it
    HEADERS = "headers"  # a request has begun (or the connection is new) and its headers are not complete
    BODY = "body"  # headers complete, body still arriving
    HANDLING = "handling"  # the whole request is in; the app's own timeouts bound the rest


@dataclass
class EdgeStats:
    """Process-wide counts, read by /metrics (shared/metrics.py) and the tests."""

    open_connections: int = 0
    closed: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1


STATS = EdgeStats()


def _response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n",
            extra,
            b"\r\n",
            body,
        )
    )


# No request id exists yet (the app assigns it), so these bodies carry the code only.
TIMEOUT_408 = _response(b"408 Request Timeout", b'{"detail":"request not received in time","code":"timeout"}')
HEADERS_431 = _response(
    b"431 Request Header Fields Too Large",
    b'{"detail":"request headers too large","code":"headers_too_large"}',
)
FULL_503 = _response(
    b"503 Service Unavailable",
    b'{"detail":"too many open connections","code":"overloaded"}',
    b"retry-after: 1\r\n",
)


class _HeadersTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn builds one instance per connection; the limits are read from the environment once per process.

    A module-level class, not one made per launch: ``--reload`` hands the config to a child process by import.
    """

    limits: ClassVar[EdgeLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self).limits is None:
            type(self).limits = EdgeLimits()
        self.limits: EdgeLimits = type(self).limits  # type: ignore[misc,assignment]
        self._phase = Phase.HEADERS
        self._raw_header_bytes = 0
        self._parsed_header_bytes = 0
        self._header_deadline = 0.0
        self._body_started = 0.0
        self._last_body_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False

    # --- connection ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # Refused before any byte is read: a 503 the client can act on, then close.
            self._refuse(FULL_503, "connections")
            return
        STATS.open_connections += 1
        self._counted = True
        self._begin_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._counted:
            STATS.open_connections -= 1
            self._counted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is Phase.IDLE:
            # First byte of the next request on a kept-alive connection: the header clock starts now.
            self._begin_headers()
            phase = Phase.HEADERS
        elif phase is Phase.BODY:
            self._last_body_data = self.loop.time()
        if phase is Phase.HEADERS:
            self._raw_header_bytes += len(data)
        # uvicorn's data_received, with the parser error that means "headers too large" told apart.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # Our own callback's _HeadersTooLarge arrives wrapped in HttpParserCallbackError.
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._refuse(HEADERS_431, "header_size")
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Headers still incomplete after all that was read (a trickle, or one huge header): httptools holds
        # the partial header in memory, so this bounds it by the limit plus one read (256 kB with uvloop).
        if self._phase is Phase.HEADERS and self._raw_header_bytes > self.limits.max_header_bytes:
            self._refuse(HEADERS_431, "header_size")

    # --- parser callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_header_bytes = 0
        if self._phase is not Phase.HEADERS:
            # A pipelined request begins in the same read as the previous one ended.
            self._begin_headers()

    # Parsed sizes, exact whatever the reads were: one read may carry the whole header and a body after it.
    def on_url(self, url: bytes) -> None:
        self._add_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._add_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _add_header_bytes(self, n: int) -> None:
        self._parsed_header_bytes += n
        if self._parsed_header_bytes > self.limits.max_header_bytes:
            # Raised inside the parser, so no app ever sees the request; surfaces from feed_data below.
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        now = self.loop.time()
        self._phase = Phase.BODY
        self._body_started = now
        self._last_body_data = now
        self._arm(now + self.limits.body_idle_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The app may have answered before the body ended (a 401 or 413 that never reads it): then the
        # connection is already between requests.
        answered = self.cycle is not None and self.cycle.response_complete
        self._phase = Phase.IDLE if answered else Phase.HANDLING
        self._cancel_timer()

    def on_response_complete(self) -> None:
        if self._phase is Phase.HANDLING:
            self._phase = Phase.IDLE
        super().on_response_complete()

    # --- timer -----------------------------------------------------------------------------------------
    def _begin_headers(self) -> None:
        self._phase = Phase.HEADERS
        self._raw_header_bytes = 0
        self._header_deadline = self.loop.time() + self.limits.header_timeout_s
        self._arm(self._header_deadline)

    def _arm(self, when: float) -> None:
        # Fast path: a timer already set to fire no later than needed is left alone; firing early only costs
        # one check that sleeps again.
        if self._timer is not None and self._timer.when() <= when:
            return
        self._cancel_timer()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase is Phase.HEADERS:
            if now >= self._header_deadline:
                self._refuse(TIMEOUT_408, "header_timeout")
            else:
                self._arm(self._header_deadline)
        elif self._phase is Phase.BODY:
            if self.flow.read_paused:
                # The app is not reading (its buffer is full): the client is not the slow one. Its idle clock
                # restarts when reading resumes; until then look again one idle period later (re-arming at a
                # total deadline already past would spin the loop).
                self._last_body_data = now
                self._arm(now + self.limits.body_idle_timeout_s)
                return
            idle_deadline = self._last_body_data + self.limits.body_idle_timeout_s
            total_deadline = self._body_started + self.limits.body_timeout_s
            if now >= total_deadline:
                self._refuse(TIMEOUT_408, "body_timeout")
            elif now >= idle_deadline:
                self._refuse(TIMEOUT_408, "body_idle_timeout")
            else:
                self._arm(min(idle_deadline, total_deadline))

    def _refuse(self, response: bytes, reason: str) -> None:
        STATS.count(reason)
        log.info("connection closed by the edge", extra={"reason": reason, "client": self.client})
        # While headers arrive no response is under way (pipelining aside); in a body the app may have
        # answered already (a 401 that never read it), and a second status line would corrupt the stream.
        if self._phase is not Phase.BODY or self.cycle is None or not self.cycle.response_started:
            self.transport.write(response)
        self._phase = Phase.HANDLING
        self._cancel_timer()
        self.transport.close()
