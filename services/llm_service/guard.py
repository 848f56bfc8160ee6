"""The guard: a safety classifier (Qwen3Guard-Gen by default) served next to the main model.

It is one more ``ChatBackend`` (services/llm_service/backends), built from the main settings with the guard's
model, URL and timeout, so it loads and runs exactly like the main model: in process on its own thread
(transformers), or over HTTP to a second vLLM server. The moderation instruction lives in the guard's chat
template; this module only sends the conversation, reads the verdict and counts it.

States: ``off`` (``LLM_GUARD_BACKEND=off``), ``loading``, ``ok``, ``error``. Every state but ``ok`` answers
``SafetyUnavailable`` (503), which callers treat as a failed check, never as a pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from services.llm_service.backends import ChatBackend, ChatMessage, make_backend
from services.llm_service.guard_output import guard_answer_regex, neutralise_markup, parse_guard_output
from services.llm_service.settings import LlmSettings
from shared.errors import ModelUnavailable, SafetyUnavailable, UpstreamTimeout
from shared.metrics import ServiceMetrics
from shared.models import ModerateResponse
from shared.public_names import public_model_id

log = logging.getLogger(__name__)

GuardState = Literal["off", "loading", "ok", "error"]
Kind = Literal["prompt", "response"]
STAGE = "guard"


def guard_backend_settings(settings: LlmSettings) -> LlmSettings:
    """The main settings with the guard's model, server and time bound: one backend class for both."""
    return settings.model_copy(
        update={
            "backend": settings.guard_backend,
            "model_id": settings.guard_model_id,
            "model_revision": settings.guard_model_revision,
            "served_model_name": settings.guard_served_model_name,
            "tokenizer_id": None,
            "vllm_base_url": settings.guard_vllm_base_url,
            "request_timeout_s": settings.guard_timeout_s,
        }
    )


class Guard:
    def __init__(self, settings: LlmSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.enabled = settings.guard_backend != "off"
        self.backend: ChatBackend | None = (
            make_backend(guard_backend_settings(settings)) if self.enabled else None
        )
        self.public_model = public_model_id(settings.guard_model_id, settings.guard_served_model_name)
        self.state: GuardState = "loading" if self.enabled else "off"
        self.error: str | None = None
        self._latency = metrics.histogram(
            "imgpod_llm_guard_seconds", "Time of one guard classification", ("kind",)
        )
        self._verdicts = metrics.counter(
            "imgpod_llm_guard_verdicts_total", "Guard verdicts per kind of text", ("kind", "verdict")
        )

    async def start(self) -> None:
        """Load or connect; a failure is recorded for /healthz and /v1/moderate, never raised."""
        if self.backend is None:
            return
        try:
            await self.backend.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("guard load failed", extra={"model": self.settings.guard_model_id})
            self.state = "error"
            self.error = f"guard {self.public_model!r} failed to load ({type(exc).__name__}); see the log"
            return
        self.state = "ok"

    async def stop(self) -> None:
        if self.backend is not None:
            await self.backend.stop()

    async def view(self) -> dict[str, Any]:
        """What /healthz says about the guard: public facts only."""
        status: str = self.state
        detail = self.error
        if self.state == "ok" and self.backend is not None and (reason := await self.backend.health()):
            status, detail = "error", reason
        return {
            "status": status,
            "backend": self.settings.guard_backend,
            "model": self.public_model if self.enabled else None,
            "outputs": self.enabled and self.settings.guard_outputs,
            "detail": detail,
        }

    def _require_ready(self) -> ChatBackend:
        if self.backend is None:
            raise SafetyUnavailable(
                "the guard is off on this LLM service (LLM_GUARD_BACKEND=off)", stage=STAGE
            )
        if self.state == "loading":
            raise SafetyUnavailable("the guard model is still loading", stage=STAGE)
        if self.state == "error":
            raise SafetyUnavailable(self.error or "the guard model failed to load", stage=STAGE)
        return self.backend

    async def moderate(self, text: str, kind: Kind = "prompt", prompt: str | None = None) -> ModerateResponse:
        backend = self._require_ready()
        messages: list[ChatMessage] = [{"role": "user", "content": neutralise_markup(text)}]
        if kind == "response":
            messages = [
                {"role": "user", "content": neutralise_markup(prompt or "")},
                {"role": "assistant", "content": neutralise_markup(text)},
            ]
        started = time.perf_counter()
        try:
            # Greedy and short: a classifier's answer, not a sample. The backend bounds itself by
            # guard_timeout_s too (generate's max_time, the HTTP timeout); this is the backstop.
            result = await asyncio.wait_for(
                backend.chat(
                    messages,
                    max_tokens=self.settings.guard_max_new_tokens,
                    temperature=0.0,
                    min_tokens=0,
                    regex=guard_answer_regex(kind),
                ),
                timeout=self.settings.guard_timeout_s + 2,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"the guard did not answer within {self.settings.guard_timeout_s:g}s", stage=STAGE
            ) from exc
        except ModelUnavailable as exc:
            # The guard's vLLM server is down: the check cannot be made, which is not the main model's fault.
            raise SafetyUnavailable(f"the guard is unavailable ({exc.detail})", stage=STAGE) from exc
        elapsed = time.perf_counter() - started
        assessment = parse_guard_output(result.text)
        self._latency.labels(kind).observe(elapsed)
        self._verdicts.labels(kind, assessment.verdict).inc()
        if assessment.verdict == "unparsed":
            # The raw answer goes to the log only (bounded): it is what an operator needs to see the drift.
            log.warning("guard answer not in its format", extra={"kind": kind, "answer": result.text[:200]})
        return ModerateResponse(
            verdict=assessment.verdict,
            categories=list(assessment.categories),
            refusal=assessment.refusal if kind == "response" else None,
            model=self.public_model,
            timings_ms={"guard": round(elapsed * 1000, 2)},
        )
