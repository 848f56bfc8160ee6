"""App factory of the interface: the only public entry of the stack."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from services.interface.admission import ClientGone, build_queues
from services.interface.flows import Flows
from services.interface.guard import Guard
from services.interface.job_kinds import build_work
from services.interface.jobs.dispatch import Dispatcher, LocalDispatcher
from services.interface.jobs.manager import JobConfig, JobManager
from services.interface.jobs.records import JobRecord
from services.interface.jobs.redis_dispatch import RedisDispatcher
from services.interface.jobs.redis_store import RedisJobStore
from services.interface.jobs.redis_store import connect as redis_connect
from services.interface.jobs.routes import router as jobs_router
from services.interface.jobs.store import JobStore, SqliteJobStore
from services.interface.jobs.webhooks import (
    AllowList,
    WebhookConfig,
    WebhookSender,
    check_target,
    webhook_client,
)
from services.interface.openai_images import OPENAI_PREFIXES
from services.interface.openai_images import router as openai_router
from services.interface.openai_images.output_urls import FILES_PATH, OutputUrls, url_key
from services.interface.personas.access import build_persona_store, close_persona_store
from services.interface.personas.generate import router as persona_generate_router
from services.interface.personas.routes import router as personas_router
from services.interface.personas.store import PersonaStore
from services.interface.pool_set import build_pools, client_limits
from services.interface.rate_limits import RateLimiter
from services.interface.routes import chat, health, profile
from services.interface.settings import InterfaceSettings
from shared.errors import ErrorShapes, ImgPodError, ModelUnavailable, openai_shape
from shared.http_client import make_async_client
from shared.logging_config import configure_logging
from shared.metrics import ServiceMetrics
from shared.queue_manager import BoundedQueue
from shared.service import build_app

VERSION = "0.1.0"
PUBLIC_PATHS = ("/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect")


class JobStoreUnavailable(ModelUnavailable):
    """Redis, holding the jobs of every replica, did not answer: 503, retry."""

    code = "job_store_unavailable"


def webhook_config(settings: InterfaceSettings) -> WebhookConfig:
    secret = settings.jobs_webhook_secret
    return WebhookConfig(
        secret=secret.get_secret_value().encode() if secret else None,
        allow=AllowList.parse(settings.jobs_webhook_allow),
        timeout_s=settings.jobs_webhook_timeout_s,
        retry_for_s=settings.jobs_webhook_retry_for_s,
        retry_base_s=settings.jobs_webhook_retry_base_s,
        retry_max_delay_s=settings.jobs_webhook_retry_max_delay_s,
        progress_interval_s=settings.jobs_webhook_progress_interval_ms / 1000,
        max_concurrent=settings.jobs_webhook_max_concurrent,
        close_timeout_s=settings.jobs_webhook_close_timeout_s,
    )


def build_jobs(
    settings: InterfaceSettings,
    queues: dict[str, BoundedQueue],
    flows: Flows,
    metrics: ServiceMetrics,
    webhooks: WebhookSender | None = None,
    personas: PersonaStore | None = None,
) -> JobManager:
    store: JobStore
    dispatcher: Dispatcher
    if settings.jobs_redis_url is not None:
        client = redis_connect(settings.jobs_redis_url.get_secret_value())
        store = RedisJobStore(
            client, prefix=settings.jobs_redis_prefix, record_ttl_s=settings.jobs_redis_record_ttl_s
        )
        # New for every process, never a setting: a restarted process that took its old id would find its
        # dead self's running units and pending entries as its own.
        replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        dispatcher = RedisDispatcher(
            client,
            queues,
            replica=replica,
            prefix=settings.jobs_redis_prefix,
            heartbeat_s=settings.jobs_redis_heartbeat_s,
            claim_idle_s=settings.jobs_redis_claim_idle_s,
            drain_s=settings.jobs_redis_drain_s,
        )
    else:
        store = SqliteJobStore(settings.jobs_sqlite_path)
        dispatcher = LocalDispatcher(queues)

    async def rebuild(record: JobRecord, blob: bytes | None) -> Any:
        return await build_work(flows, record.route, record.spec, blob, owner=record.owner, personas=personas)

    config = JobConfig(
        output_ttl_s=settings.jobs_output_ttl_s,
        sweep_interval_s=settings.jobs_sweep_interval_s,
        cancel_wait_s=settings.jobs_cancel_wait_s,
    )
    notify = webhooks.notify if webhooks is not None else None
    return JobManager(store, dispatcher, rebuild, config, metrics, notify=notify)


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
        flows = Flows(pools, settings, Guard(pools.llm, settings, metrics), metrics)
        app.state.flows = flows
        hooks = webhook_config(settings)
        sender = WebhookSender(hooks, webhook_client(hooks), metrics) if hooks.secret else None
        if sender is not None:
            app.state.check_webhook = functools.partial(check_target, config=hooks)
        personas = build_persona_store(settings)
        await personas.start()
        app.state.personas = personas
        jobs = build_jobs(settings, queues, flows, metrics, sender, personas)
        await jobs.start()
        app.state.jobs = jobs
        try:
            yield
        finally:
            # Closing first: the jobs the queues' consumers are running when they stop are left to run again
            # (a restart, another replica), not marked cancelled.
            await jobs.dispatcher.close()
            for q in queues.values():
                await q.close()
            await jobs.close()
            if isinstance(jobs.store, RedisJobStore):
                await jobs.store.redis.aclose()
            await close_persona_store(personas)
            if sender is not None:
                await sender.close()
                await sender.client.aclose()
            for p in pools.all():
                await p.close()
            await client.aclose()
            if rate_limiter is not None:
                await rate_limiter.close()

    app = build_app(
        title="img_pod interface",
        version=VERSION,
        lifespan=lifespan,
        routers=[
            health.router,
            profile.router,
            chat.router,
            jobs_router,
            persona_generate_router,
            personas_router,
            openai_router,
        ],
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
    url_secret = settings.openai_url_secret
    app.state.openai_urls = OutputUrls(url_key(url_secret.get_secret_value() if url_secret else None, token))

    @app.exception_handler(RedisError)
    async def _store_down(request: Request, exc: RedisError) -> Response:
        failure = JobStoreUnavailable("the job store is unavailable; retry shortly", stage="jobs")
        failure.__cause__ = exc
        return await app.exception_handlers[ImgPodError](request, failure)

    @app.exception_handler(ClientGone)
    async def _client_gone(_: Request, __: ClientGone) -> Response:
        # Nobody is listening; 499 is nginx's "client closed request", for the access log.
        return Response(status_code=499)

    return app
