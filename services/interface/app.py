"""App factory of the interface: the only public entry of the stack."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from services.interface.admission import ClientGone, build_queues
from services.interface.flows import Flows
from services.interface.guard import Guard
from services.interface.openai_images import OPENAI_PREFIXES
from services.interface.openai_images import router as openai_router
from services.interface.openai_images.output_store import FILES_PATH, OutputStore
from services.interface.pool_set import build_pools, client_limits
from services.interface.rate_limits import RateLimiter
from services.interface.routes import chat, health, profile
from services.interface.settings import InterfaceSettings
from shared.errors import ErrorShapes, openai_shape
from shared.http_client import make_async_client
from shared.logging_config import configure_logging
from shared.metrics import ServiceMetrics
from shared.service import build_app

VERSION = "0.1.0"
PUBLIC_PATHS = ("/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect")


def create_app(settings: InterfaceSettings | None = None) -> FastAPI:
    settings = settings or InterfaceSettings()
    configure_logging("interface", settings.log_level)
    metrics = ServiceMetrics("interface")
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    # Built here, not in the lifespan: an override naming no configured key fails the start at once.
    rate_limiter = RateLimiter.from_settings(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_async_client(client_limits(settings))
        pools = build_pools(settings, client, token, metrics)
        # Probe once before serving, so the first requests see the real pool state.
        for p in pools.all():
            await p.probe_all()
        queues = build_queues(settings, metrics, pools.for_queues())
        for p in pools.all():
            p.start_polling()
        app.state.pools = pools
        app.state.queues = queues
        app.state.flows = Flows(pools, settings, Guard(pools.llm, settings, metrics))
        try:
            yield
        finally:
            for q in queues.values():
                await q.close()
            for p in pools.all():
                await p.close()
            await client.aclose()
            if rate_limiter is not None:
                await rate_limiter.close()

    app = build_app(
        title="img_pod interface",
        version=VERSION,
        lifespan=lifespan,
        routers=[health.router, profile.router, chat.router, openai_router],
        metrics=metrics,
        keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        public_paths=PUBLIC_PATHS,
        docs=True,
        drain_timeout_s=settings.drain_timeout_s,
        # A signed output URL is its own credential: OpenAI clients fetch it with no key.
        public_prefixes=(FILES_PATH + "/",),
        error_shapes=ErrorShapes([(prefix, openai_shape) for prefix in OPENAI_PREFIXES]),
    )
    app.state.settings = settings
    app.state.rate_limiter = rate_limiter
    secret = settings.openai_url_secret
    app.state.openai_outputs = OutputStore(
        ttl_s=settings.openai_url_ttl_s,
        max_items=settings.openai_url_max_items,
        max_bytes=settings.openai_url_max_bytes,
        secret=secret.get_secret_value().encode() if secret else None,
    )

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, __: ClientGone) -> Response:
        # Nobody is listening; 499 is nginx's "client closed request", for the access log.
        return Response(status_code=499)

    return app
