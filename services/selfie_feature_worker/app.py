"""The selfie feature worker: face detection, quality signals and VLM appearance features for one selfie."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from services.selfie_feature_worker.admission import Admission
from services.selfie_feature_worker.detection import build_detector
from services.selfie_feature_worker.identity import IdentityComparer, build_comparer
from services.selfie_feature_worker.pipeline import SelfieAnalyzer
from services.selfie_feature_worker.routes import analyze, health, identity
from services.selfie_feature_worker.settings import SelfieSettings
from services.selfie_feature_worker.vlm import QwenVlDescriber
from shared.logging_config import configure_logging
from shared.metrics import ServiceMetrics
from shared.pixel_budget import PixelBudget
from shared.public_names import public_model_id
from shared.service import build_app, internal_keys
from shared.test_hooks import Gate, gate_router

SERVICE = "selfie_feature_worker"
log = logging.getLogger(__name__)


@dataclass
class ModelState:
    """What /healthz and the routes read: the analyzer once loaded, or why it is not."""

    analyzer: SelfieAnalyzer | None = None
    # None while loading, with identity_embedder "off", or when it failed to load (identity_error says so).
    identity: IdentityComparer | None = None
    identity_error: str | None = None
    error: str | None = None
    loading: bool = True
    info: dict[str, str] = field(default_factory=dict)


def load_analyzer(settings: SelfieSettings) -> SelfieAnalyzer:
    detector = build_detector(settings)
    vlm = QwenVlDescriber(settings)
    analyzer = SelfieAnalyzer(settings, detector, vlm)
    analyzer.warm_up()
    return analyzer


def load_identity(
    settings: SelfieSettings, analyzer: SelfieAnalyzer
) -> tuple[IdentityComparer | None, str | None]:
    """The identity comparer on the analyzer's models, or why there is none. An embedder that fails to
    load takes the identity route down (503), never the analyses: the score is a side measurement."""
    try:
        return build_comparer(settings, analyzer.detector, analyzer.vlm, analyzer.budget), None
    except Exception as exc:
        log.warning("identity embedder failed to load; /v1/identity/compare answers 503", exc_info=exc)
        return None, f"the identity embedder failed to load ({type(exc).__name__}); see the service log"


def identity_name(settings: SelfieSettings, state: ModelState) -> str:
    """Public: the embedder's name, "off" as configured, or "unavailable" after a failed load."""
    if state.identity is not None:
        return state.identity.embedder.name
    return "off" if settings.identity_embedder == "off" else "unavailable"


def create_app(settings: SelfieSettings | None = None) -> FastAPI:
    settings = settings or SelfieSettings()
    configure_logging(SERVICE, settings.log_level)
    metrics = ServiceMetrics(SERVICE)
    metrics.watch_gpu_memory()
    stage_seconds = metrics.histogram("imgpod_selfie_stage_seconds", "Time per analysis stage", ("stage",))
    unparsed = metrics.counter("imgpod_vlm_unparsed_total", "VLM answers that gave no usable features")
    analyses = metrics.counter("imgpod_selfie_analyses_total", "Selfies analysed", ("face",))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ModelState()
        app.state.models = state

        async def load() -> None:
            try:
                analyzer = await asyncio.to_thread(load_analyzer, settings)
                vlm = analyzer.vlm
                state.identity, state.identity_error = await asyncio.to_thread(
                    load_identity, settings, analyzer
                )
                # Last: a loaded analyzer is what makes /healthz ok and the routes serve.
                state.analyzer = analyzer
                # /healthz is unauthenticated: a model configured as a local path is named, not located.
                state.info = {
                    "model": public_model_id(vlm.model_id),
                    "device": vlm.device,
                    "dtype": vlm.dtype_name,
                    "detector": analyzer.detector.name,
                    "detector_weights": analyzer.detector.weights,
                    "identity_embedder": identity_name(settings, state),
                }
                # The log is private: it may name the real location.
                log.info("models loaded", extra={**state.info, "model_id": vlm.model_id})
            except Exception as exc:
                # Keep serving: /healthz says why, and the routes answer 503 instead of crashing. The type
                # only: a library's message names files on the pod; the traceback goes to the log.
                state.error = f"model load failed ({type(exc).__name__}); see the service log"
                log.exception("model load failed")
            finally:
                state.loading = False

        task = asyncio.create_task(load())
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
            state.analyzer = None
            state.identity = None

    routers = [health.router, analyze.router, identity.router]
    gate: Gate | None = None
    if settings.test_hooks:
        gate = Gate()
        routers.append(gate_router())

    app = build_app(
        title="img_pod selfie feature worker",
        version="0.1.0",
        lifespan=lifespan,
        routers=routers,
        metrics=metrics,
        keys=internal_keys(settings.internal_token),
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        drain_timeout_s=settings.drain_timeout_s,
    )
    app.state.settings = settings

    def budget_gauge(name: str, doc: str, read: Callable[[PixelBudget], int]) -> None:
        # Read from the loaded analyzer's budget at scrape time (0 while loading): no second copy of state.
        def value() -> float:
            models: ModelState | None = getattr(app.state, "models", None)
            return read(models.analyzer.budget) if models and models.analyzer else 0

        metrics.gauge(name, doc).set_function(value)

    budget_gauge("imgpod_decode_pixels_in_use", "Pixels held by uploads being decoded", lambda b: b.in_use_px)
    budget_gauge("imgpod_decode_waiting", "Decodes waiting for room in the pixel budget", lambda b: b.waiting)
    app.state.service = SERVICE
    app.state.stage_seconds = stage_seconds
    app.state.vlm_unparsed = unparsed
    app.state.analyses = analyses
    app.state.identity_scores = metrics.counter(
        "imgpod_identity_scores_total", "Identity scores answered, by outcome", ("outcome",)
    )
    refused = metrics.counter("imgpod_selfie_refused_total", "Analyses refused with 429: all slots busy")
    app.state.admission = Admission(settings.max_concurrent, settings.queue_limit, on_refused=refused.inc)
    # Set only when the test_hooks setting is on: parks analyses once they hold a slot, before decoding.
    app.state.gate = gate
    return app
