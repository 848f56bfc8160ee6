"""App factory of the image workers: one engine, four roles chosen by a setting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from services.image_worker.engine import ImageEngine
from services.image_worker.routes import generate, health
from services.image_worker.settings import ImageSettings, Role
from shared.logging_config import configure_logging
from shared.metrics import ServiceMetrics
from shared.service import build_app, internal_keys, loading_in_background
from shared.test_hooks import Gate, gate_router

VERSION = "0.1.0"


def create_app(settings: ImageSettings | None = None, *, role: Role | None = None) -> FastAPI:
    if settings is None:
        settings = ImageSettings(role=role) if role else ImageSettings()
    elif role and settings.role != role:
        settings = settings.model_copy(update={"role": role})
    configure_logging(f"image_worker:{settings.role}", settings.log_level)
    metrics = ServiceMetrics(f"image_{settings.role}")
    metrics.watch_gpu_memory()
    engine = ImageEngine(settings, metrics)

    # Load in the background so /healthz answers 503 "loading" while a multi-GB model comes up.
    lifespan = loading_in_background(engine.start, engine.stop, name="image-engine-load")
    routers = [health.router, *generate.ROLE_ROUTERS[settings.role]]
    if settings.test_hooks:
        engine.gate = Gate()
        routers.append(gate_router())

    app = build_app(
        title=f"img_pod image worker ({settings.role})",
        version=VERSION,
        lifespan=lifespan,
        routers=routers,
        metrics=metrics,
        keys=internal_keys(settings.internal_token),
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        drain_timeout_s=settings.drain_timeout_s,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.gate = engine.gate
    return app


def role_entrypoint(role: Role | None) -> tuple[Callable[..., FastAPI], Callable[[str], Any]]:
    """``create_app`` and a module ``__getattr__`` for one role's ``main.py``.

    The module ``__getattr__`` makes ``services.<role>_worker.main:app`` work for plain
    ``uvicorn module:app`` while building nothing at import time.
    """

    def factory(settings: ImageSettings | None = None) -> FastAPI:
        return create_app(settings, role=role)

    def module_getattr(name: str) -> Any:
        if name == "app":
            return factory()
        raise AttributeError(name)

    return factory, module_getattr
