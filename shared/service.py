"""What every service's app has in common: request ids, access logs, auth, body limits, errors, metrics.

Each service's ``create_app(settings)`` calls ``build_app`` with its own lifespan and routers, so the
behaviour at the edge (401, 413, error shape, X-Request-ID) is one piece of code for all seven services.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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

from shared.errors import PayloadTooLarge, install_error_handlers
from shared.metrics import ServiceMetrics
from shared.request_context import (
    REQUEST_ID_HEADER,
    accept_request_id,
    reset_request_id,
    set_request_id,
)

log = logging.getLogger("imgpod.access")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class EdgeMiddleware:
    """One pure-ASGI middleware for the edge: cheaper than a stack of BaseHTTPMiddleware layers.

    Auth denies by default: every path needs a key unless it is in ``public_paths``.
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
    ) -> None:
        self.app = app
        self.key_digests = [_digest(k.get_secret_value()) for k in keys]
        self.public_paths = frozenset(public_paths)
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes or max_body_bytes
        self.metrics = metrics

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        if not self.key_digests:
            return True
        presented = None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        elif b"x-api-key" in headers:
            presented = headers[b"x-api-key"].decode("latin-1").strip()
        if not presented:
            return False
        digest = _digest(presented)
        # Compare against every key without short-circuiting, so timing does not tell which key matched.
        ok = False
        for known in self.key_digests:
            ok |= secrets.compare_digest(digest, known)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = accept_request_id(headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1"))
        token = set_request_id(request_id)
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            path = scope.get("path", "")
            if path not in self.public_paths and not self._authorised(headers):
                await _send_json(
                    send_wrapper,
                    401,
                    b'{"detail":"missing or invalid credentials","code":"unauthorized"}',
                    extra=[(b"www-authenticate", b"Bearer")],
                )
                return
            # Only uploads (multipart) get the large limit: no valid JSON request here comes near a megabyte.
            multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
            limit = self.max_body_bytes if multipart else min(self.max_body_bytes, self.max_json_bytes)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _send_json(
                    send_wrapper,
                    413,
                    b'{"detail":"request body is larger than %d bytes","code":"payload_too_large"}' % limit,
                )
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
                return message

            await self.app(scope, limited_receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_label = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            status = status_holder["status"]
            self.metrics.http_requests.labels(route_label, method, str(status)).inc()
            self.metrics.http_latency.labels(route_label, method).observe(elapsed)
            if path != "/healthz":
                log.info(
                    "request",
                    extra={"method": method, "path": path, "status": status, "ms": round(elapsed * 1000, 1)},
                )
            reset_request_id(token)


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
) -> FastAPI:
    app = FastAPI(
        title=title,
        version=version,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in routers:
        app.include_router(router)

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
        loader = asyncio.create_task(start(), name=name)
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
