"""App factory of the interface: the only public entry of the stack."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from services.interface.admission import ClientGone, build_queues
from services.interface.flows import Flows, Pools
from services.interface.pools import PoolConfig, Worker, WorkerPool, pool_metrics
from services.interface.routes import chat, health, profile
from services.interface.settings import InterfaceSettings
from shared.http_client import ClientLimits, make_async_client
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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Keep-alive connections for every call that can be in flight at once, so none pays a new connect.
        image_urls = (
            settings.profile_worker_urls,
            settings.chat1to1_worker_urls,
            settings.shorts_worker_urls,
            settings.scenes_worker_urls,
            settings.text2img_worker_urls,
        )
        slots = (
            settings.per_worker_concurrency * sum(map(len, image_urls))
            + settings.selfie_concurrency * len(settings.selfie_feature_worker_urls)
            + settings.llm_concurrency * len(settings.llm_urls)
        )
        client = make_async_client(
            ClientLimits(
                default_timeout_s=max(settings.generate_timeout_s, 60.0), max_keepalive=max(8, slots + 8)
            )
        )
        pm = pool_metrics(metrics)
        registry: dict[str, Worker] = {}

        def pool(name: str, urls: list[str], concurrency: int) -> WorkerPool:
            config = PoolConfig(
                per_worker_concurrency=concurrency,
                eject_after=settings.eject_after_failures,
                cooldown_s=settings.eject_cooldown_s,
                health_interval_s=settings.health_interval_s,
                health_timeout_s=settings.health_timeout_s,
            )
            return WorkerPool(
                name,
                urls,
                client=client,
                token=token,
                config=config,
                metrics=metrics,
                pool_metrics=pm,
                registry=registry,
            )

        c = settings.per_worker_concurrency
        pools = Pools(
            profile=pool("profile", settings.profile_worker_urls, c),
            selfie=pool("selfie_feature", settings.selfie_feature_worker_urls, settings.selfie_concurrency),
            chat1to1=pool("chat1to1", settings.chat1to1_worker_urls, c),
            shorts=pool("shorts", settings.shorts_worker_urls, c),
            scenes=pool("scenes", settings.scenes_worker_urls, c),
            text2img=pool("text2img", settings.text2img_worker_urls, c),
            llm=pool("llm", settings.llm_urls, settings.llm_concurrency),
        )
        # Probe once before serving, so the first requests see the real pool state.
        for p in pools.all():
            await p.probe_all()
        queues = build_queues(
            settings,
            metrics,
            {
                "profile": [pools.selfie, pools.profile],
                "text2img": [pools.text2img],
                "chat1to1": [pools.llm, pools.chat1to1],
                "shorts": [pools.llm, pools.shorts],
                "scenes": [pools.llm, pools.scenes],
                "private": [pools.chat1to1],
                "reply": [pools.llm],
            },
        )
        for p in pools.all():
            p.start_polling()
        app.state.pools = pools
        app.state.queues = queues
        app.state.flows = Flows(pools, settings)
        try:
            yield
        finally:
            for q in queues.values():
                await q.close()
            for p in pools.all():
                await p.close()
            await client.aclose()

    app = build_app(
        title="img_pod interface",
        version=VERSION,
        lifespan=lifespan,
        routers=[health.router, profile.router, chat.router],
        metrics=metrics,
        keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        public_paths=PUBLIC_PATHS,
        docs=True,
        drain_timeout_s=settings.drain_timeout_s,
    )
    app.state.settings = settings

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, __: ClientGone) -> Response:
        # Nobody is listening; 499 is nginx's "client closed request", for the access log.
        return Response(status_code=499)

    return app
