"""App factory of the LLM service."""

from __future__ import annotations

from fastapi import FastAPI

from services.llm_service.engine import LlmEngine
from services.llm_service.routes import chat, health, moderate, openai, personas
from services.llm_service.settings import LlmSettings
from shared.logging_config import configure_logging
from shared.metrics import ServiceMetrics
from shared.service import build_app, internal_keys, loading_in_background

VERSION = "0.1.0"


def create_app(settings: LlmSettings | None = None) -> FastAPI:
    settings = settings or LlmSettings()
    configure_logging("llm_service", settings.log_level)
    metrics = ServiceMetrics("llm_service")
    engine = LlmEngine(settings, metrics)

    # Load in the background so /healthz answers 503 "loading" while a multi-GB model comes up.
    lifespan = loading_in_background(engine.start, engine.stop, name="llm-load")

    app = build_app(
        title="img_pod LLM service",
        version=VERSION,
        lifespan=lifespan,
        routers=[health.router, chat.router, moderate.router, openai.router, personas.router],
        metrics=metrics,
        keys=internal_keys(settings.internal_token),
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        drain_timeout_s=settings.drain_timeout_s,
    )
    app.state.settings = settings
    app.state.engine = engine
    return app
