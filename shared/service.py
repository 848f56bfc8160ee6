"""What every service's app has in common: request ids, access logs, auth, body limits, errors, metrics.

Each service's ``create_app(settings)`` calls ``build_app`` with its own lifespan and routers, so the
behaviour at the edge (401, 413, error shape, X-Request-ID) is one piece of code for all seven services.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.drain import Drainer
from shared.errors import ErrorReply, ErrorShapes, PayloadTooLarge, install_error_handlers
from shared.metrics import ServiceMetrics
from shared.request_context import (
    REQUEST_ID_HEADER,
    accept_request_id,
    reset_request_id,
    set_request_id,
)
from shared.runtime import freeze_loaded_heap, settle_after_startup

log = logging.getLogger("imgpod.access")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


# Keys of the ASGI scope's ``state`` (``request.state``): set by the edge, read by the app, and back.
KEY_ID = "key_id"
RESPONSE_HEADERS = "edge_response_headers"
KEY_ID_CHARS = 12


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def key_id(token: str) -> str:
    """A key's public name: the first hex characters of its SHA-256, for per-key settings, counts and logs.

    Not a secret (a hash prefix of a high-entropy key says nothing usable about the key), and stable across
    replicas and restarts, so limits shared through Redis and overrides in settings agree on it.
    """
    return _digest(token).hex()[:KEY_ID_CHARS]


class EdgeMiddleware:
    """One pure-ASGI middleware for the edge: cheaper than a stack of BaseHTTPMiddleware layers.

    Auth denies by default: every path needs a key unless it is in ``public_paths``. Every body it answers
    itself (401, 413, 503 while draining) carries the request id, like the app's own error bodies.

    The matched key's id goes to ``scope["state"][KEY_ID]`` (absent when no keys are configured: one open
    client), so per-key admission needs no lookup of its own; headers the app puts in
    ``scope["state"][RESPONSE_HEADERS]`` (a list of byte pairs) go out on whatever response follows.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Sequence[SecretStr],
        public_paths: Iterable[str],
        max_body_bytes: int,
        metrics: ServiceMetrics,
        max_json_bytes: int | None = None,
        drainer: Drainer | None = None,
        public_prefixes: Iterable[str] = (),
        error_shapes: ErrorShapes | None = None,
    ) -> None:
        self.app = app
        self.drainer = drainer
        self._in_flight = 0
        self._peak = 0
        # prometheus' .labels() costs a dict lookup and a lock per call: keep the children per label set.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.key_digests = [_digest(k.get_secret_value()) for k in keys]
        self.key_ids = [d.hex()[:KEY_ID_CHARS] for d in self.key_digests]
        # Liveness is asked by the kubelet, which holds no key.
        self.public_paths = frozenset(public_paths) | {LIVEZ_PATH}
        # Routes whose own query carries the credential (signed URLs): open to the edge, checked by the route.
        self.public_prefixes = tuple(public_prefixes)
        self.error_shapes = error_shapes or ErrorShapes()
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes or max_body_bytes
        self.metrics = metrics

    def _matched_key(self, headers: dict[bytes, bytes]) -> str | None:
        """The id of the key the request presents, or None when it presents none that is configured."""
        presented = None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        elif b"x-api-key" in headers:
            presented = headers[b"x-api-key"].decode("latin-1").strip()
        if not presented:
            return None
        digest = _digest(presented)
        # Compare against every key without short-circuiting, so the time an invalid key takes says nothing
        # about how close it came to any known one.
        matched = None
        for known, kid in zip(self.key_digests, self.key_ids, strict=True):
            if secrets.compare_digest(digest, known):
                matched = kid
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = accept_request_id(headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1"))
        token = set_request_id(request_id)
        started = time.perf_counter()
        status = 500
        started_response = False
        too_large = False
        left = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response, left
            if too_large:
                return  # the 413 went out already; drop whatever the app answers to its broken body
            if (
                counted
                and not left
                and message["type"] == "http.response.body"
                and not message.get("more_body")
            ):
                # Out of flight before the last byte can reach the client: a caller that holds a slot per
                # request (the interface's pools) may send its next one the moment it has this answer, and
                # that one must not find this one still counted (a soak saw an LLM with a budget of 4 at 6).
                left = True
                self._leave()
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                state = scope.get("state")
                extra = state.get(RESPONSE_HEADERS, ()) if state else ()
                message["headers"] = [
                    *message.get("headers", ()),
                    (_REQUEST_ID_BYTES, request_id.encode()),
                    *extra,
                ]
            await send(message)

        path = scope.get("path", "")
        counted = path not in _OPS_PATHS
        if counted:
            self._enter()
        try:
            if self.drainer is not None and self.drainer.draining and not _serves_while_draining(path):
                await self._refuse_draining(send_wrapper, request_id, path)
                return
            if (
                self.key_digests
                and path not in self.public_paths
                and not path.startswith(self.public_prefixes)
            ):
                matched = self._matched_key(headers)
                if matched is None:
                    await self._send_error(
                        send_wrapper,
                        path,
                        ErrorReply(401, "missing or invalid credentials", "unauthorized"),
                        request_id,
                        extra=[(b"www-authenticate", b"Bearer")],
                    )
                    return
                # uvicorn gives each request its own copy of the lifespan state: this stays per request.
                scope.setdefault("state", {})[KEY_ID] = matched
            # Only uploads (multipart) get the large limit: no valid JSON request here comes near a megabyte.
            multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
            limit = self.max_body_bytes if multipart else min(self.max_body_bytes, self.max_json_bytes)
            too_large_detail = f"request body is larger than {limit} bytes"
            too_large_reply = ErrorReply(413, too_large_detail, "payload_too_large")
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._send_error(send_wrapper, path, too_large_reply, request_id)
                return
            received = 0

            async def limited_receive() -> Message:
                # A chunked body has no Content-Length to refuse up front: count it as it arrives, answer
                # 413 ourselves the moment it passes the limit, and make the app's read fail (its own error
                # answer to that is dropped by send_wrapper).
                nonlocal received, too_large
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        if not started_response and not too_large:
                            await self._send_error(send_wrapper, path, too_large_reply, request_id)
                            too_large = True
                        raise PayloadTooLarge(too_large_detail)
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except PayloadTooLarge:
                if not too_large:
                    raise
        finally:
            if counted and not left:
                self._leave()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_label = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            key = (route_label, method, str(status))
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.metrics.http_requests.labels(*key),
                    self.metrics.http_latency.labels(route_label, method),
                )
            children[0].inc()
            children[1].observe(elapsed)
            if path not in _PROBE_PATHS:
                log.info(
                    "request",
                    extra={"method": method, "path": path, "status": status, "ms": round(elapsed * 1000, 1)},
                )
            reset_request_id(token)

    def _enter(self) -> None:
        if self.drainer is not None:
            self.drainer.enter()
        self._in_flight += 1
        self.metrics.http_in_flight.set(self._in_flight)
        if self._in_flight > self._peak:
            self._peak = self._in_flight
            self.metrics.http_in_flight_max.set(self._peak)

    def _leave(self) -> None:
        if self.drainer is not None:
            self.drainer.leave()
        self._in_flight -= 1
        self.metrics.http_in_flight.set(self._in_flight)

    async def _refuse_draining(self, send: Send, request_id: str, path: str) -> None:
        assert self.drainer is not None
        retry = str(max(1, round(self.drainer.retry_after_s))).encode()
        extra = [(b"retry-after", retry), (b"connection", b"close")]
        if path == "/healthz":
            body = json.dumps({"status": "draining", "request_id": request_id}).encode()
            await _send_json(send, 503, body, extra=extra)
            return
        reply = ErrorReply(503, "this server is shutting down; retry shortly", "draining")
        await self._send_error(send, path, reply, request_id, extra=extra)

    async def _send_error(
        self,
        send: Send,
        path: str,
        reply: ErrorReply,
        request_id: str,
        extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    ) -> None:
        status, body = self.error_shapes.render(path, reply, request_id)
        await _send_json(send, status, body, extra)


_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()
# Liveness: 200 whenever the event loop answers, also while the model loads or the service drains, so a
# kubelet restarts only a process that is really stuck. Readiness is /healthz (503 loading or draining).
LIVEZ_PATH = "/livez"
# Operational routes: never counted as work in flight (a drain must not wait on a health probe).
_OPS_PATHS = frozenset({"/healthz", "/metrics", LIVEZ_PATH})
# Asked every few seconds by the pools and the kubelet: not worth an access-log line each.
_PROBE_PATHS = frozenset({"/healthz", LIVEZ_PATH})


def _serves_while_draining(path: str) -> bool:
    # Metrics stay readable, liveness stays true (a draining pod is alive: restarting it would cut the
    # requests it is finishing), and test hooks (present only with test_hooks on) must be able to release
    # requests parked during a drain.
    return path in (LIVEZ_PATH, "/metrics") or path.startswith("/v1/test/")


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_app(
    *,
    title: str,
    version: str,
    lifespan: Lifespan,
    routers: Sequence[APIRouter],
    metrics: ServiceMetrics,
    keys: Sequence[SecretStr],
    max_body_bytes: int,
    max_json_bytes: int | None = None,
    public_paths: Iterable[str] = ("/healthz",),
    docs: bool = False,
    drain_timeout_s: float | None = None,
    public_prefixes: Iterable[str] = (),
    error_shapes: ErrorShapes | None = None,
) -> FastAPI:
    drainer = Drainer(drain_timeout_s) if drain_timeout_s else None

    @contextlib.asynccontextmanager
    async def draining_lifespan(app: FastAPI) -> AsyncIterator[Any]:
        # SIGTERM is taken over only while the app serves, from inside the server's own signal capture.
        undo = drainer.install_sigterm() if drainer is not None else None
        try:
            async with lifespan(app) as state:
                # Started: freeze the start-up heap out of the GC's way, once per process (shared/runtime.py).
                settle_after_startup()
                yield state
        finally:
            if undo is not None:
                undo()

    app = FastAPI(
        title=title,
        version=version,
        lifespan=draining_lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.metrics = metrics
    app.state.drainer = drainer
    install_error_handlers(app, error_shapes)
    for router in routers:
        app.include_router(router)

    @app.get(LIVEZ_PATH, include_in_schema=False)
    async def livez_route() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(
        EdgeMiddleware,
        keys=list(keys),
        public_paths=public_paths,
        max_body_bytes=max_body_bytes,
        max_json_bytes=max_json_bytes,
        metrics=metrics,
        drainer=drainer,
        public_prefixes=public_prefixes,
        error_shapes=error_shapes,
    )
    return app


def loading_in_background(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]], name: str
) -> Lifespan:
    """A lifespan that loads the model in a background task and serves at once.

    Serving during the load lets /healthz answer 503 "loading" while a multi-GB model comes up, instead of
    refusing connections; ``start`` must record its own failure rather than raise.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            await start()
            # The model's objects live as long as the process: out of the collector's way too.
            await asyncio.to_thread(freeze_loaded_heap)

        loader = asyncio.create_task(load(), name=name)
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await stop()

    return lifespan


def internal_keys(token: SecretStr | None) -> list[SecretStr]:
    """The keys a worker accepts: the internal token when one is configured, else none (open)."""
    return [token] if token else []
