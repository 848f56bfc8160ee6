"""App factory of the LLM service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.llm_service.engine import LlmEngine
from services.llm_service.routes import chat, health, openai
from services.llm_service.settings import LlmSettings
from shared.logging_config import configure_logging
from shared.metrics import ServiceMetrics
from shared.service import build_app

VERSION = "0.1.0"


def create_app(settings: LlmSettings | None = None) -> FastAPI:
    settings = settings or LlmSettings()
    configure_logging("llm_service", settings.log_level)
    metrics = ServiceMetrics("llm_service")
    engine = LlmEngine(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers 503 "loading" while a 15 GB model comes up.
        loader = asyncio.create_task(engine.start(), name="llm-load")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await engine.stop()

    app = build_app(
        title="img_pod LLM service",
        version=VERSION,
        lifespan=lifespan,
        routers=[health.router, chat.router, openai.router],
        metrics=metrics,
        keys=[settings.internal_token] if settings.internal_token else [],
        max_body_bytes=settings.max_body_bytes,
    )
    app.state.settings = settings
    app.state.engine = engine
    return app
