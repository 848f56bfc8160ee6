"""The LLM service's behaviour: expand, caption and reply on top of one ``ChatBackend``.

Why the persona, the style phrase and the coverage clause are added here and not left to the model: a model
(a random tiny one in tests, a 7B one in production) can drop or rewrite them. The final prompt is composed
by ``prompts.compose_expanded_prompt``, so they hold whatever the model wrote, and fitted into the image
model's token budget by ``token_budget.py``, which cuts only the scene, at a phrase boundary, and the
response says so (``trimmed``, ``prompt_tokens``).

Errors that allow the labelled template fallback (when ``template_fallback`` is on): the model is not
loaded or unreachable (``ModelUnavailable``), it did not answer in time (``UpstreamTimeout``), or its text
was junk (``UnusableModelOutput``). Anything else (bad input, a crashed generation) is raised as is.

Captions and replies pass the word rules and, when the guard is on with ``guard_outputs``, the guard
(services/llm_service/guard.py) before they leave: an unsafe caption is generated again (then the labelled
template, or 502), an unsafe reply is refused. The guard checks user prompts for the interface too
(``/v1/moderate``); it has its own backend, so a guard call never waits behind a long generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from services.llm_service.backends import ChatMessage, ChatResult, make_backend
from services.llm_service.cleaning import (
    clean_output,
    drop_unfinished_phrase,
    judge,
    truncate_words,
    word_count,
)
from services.llm_service.guard import Guard
from services.llm_service.history import bound_history
from services.llm_service.prompts import (
    ExpandKind,
    applied_coverage,
    build_caption_messages,
    build_expand_messages,
    build_reply_messages,
    build_shorten_messages,
    character_descriptor,
    compose_expanded_prompt,
)
from services.llm_service.safety import is_caption_safe, redact_explicit
from services.llm_service.settings import LlmSettings
from services.llm_service.shortening import keeps_intent, keyword_shorten
from services.llm_service.templates import template_caption, template_scene
from services.llm_service.token_budget import Fitted, PromptBudget
from shared.errors import (
    ImgPodError,
    ModelUnavailable,
    PolicyBlocked,
    SafetyUnavailable,
    UnusableModelOutput,
    UpstreamTimeout,
)
from shared.metrics import ServiceMetrics
from shared.models import (
    MAX_PROMPT_CHARS,
    CaptionRequest,
    CaptionResponse,
    CoverageReason,
    ExpandRequest,
    ExpandResponse,
    ReplyRequest,
    ReplyResponse,
)
from shared.policy import COVERAGE_SUFFIX, decide_off_loop, evaluate_private_chat
from shared.public_names import public_model_id
from shared.reply_templates import checked_template_reply
from shared.timings import StageTimer

log = logging.getLogger(__name__)

State = Literal["loading", "ok", "error"]
FALLBACK_ERRORS = (ModelUnavailable, UpstreamTimeout, UnusableModelOutput)
# A caption the guard could not check is not sent; the fixed template captions need no check.
CAPTION_FALLBACK_ERRORS = (*FALLBACK_ERRORS, SafetyUnavailable)
TEMPLATE_MODEL = "template"


class LlmEngine:
    def __init__(self, settings: LlmSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.backend = make_backend(settings)
        # What bodies and /healthz call the model. The backends keep the real id: vLLM serves it by that name.
        self.public_model = public_model_id(settings.model_id, settings.served_model_name)
        self.state: State = "loading"
        self.error: str | None = None
        self.guard = Guard(settings, metrics)
        self._latency = metrics.histogram(
            "imgpod_llm_generation_seconds", "Time of one model generation call", ("route",)
        )
        self._tokens = metrics.counter(
            "imgpod_llm_tokens_total", "Tokens processed by the model", ("route", "kind")
        )
        self._outcomes = metrics.counter(
            "imgpod_llm_outcomes_total", "Route outcomes: model, template, unusable", ("route", "outcome")
        )
        self._shortened = metrics.counter(
            "imgpod_llm_shortened_total", "Long messages shortened before expansion", ("by",)
        )
        self._ready = metrics.gauge("imgpod_llm_model_ready", "1 when the model is loaded")
        self._trimmed = metrics.counter(
            "imgpod_llm_expansion_trimmed_total",
            "Expansions cut at a phrase boundary, by what forced it: tokens, chars, generation_cap",
            ("kind", "cause"),
        )
        self._prompt_tokens = metrics.histogram(
            "imgpod_llm_expansion_prompt_tokens",
            "Tokens of the final expanded prompt as the image model's text encoder reads it",
            ("kind",),
            buckets=(64, 128, 192, 256, 320, 384, 448, 512, 640),
        )
        # The interface may append the coverage suffix to the prompt and forwards it to a route that takes at
        # most MAX_PROMPT_CHARS: leave it that room.
        self.budget = PromptBudget(
            token_limit=settings.image_prompt_token_limit, max_chars=MAX_PROMPT_CHARS - len(COVERAGE_SUFFIX)
        )

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model, the prompt budget's tokenizer, then the guard; failures are recorded. One after the
        other: two threads importing transformers' lazy modules at once can fail ("cannot import name
        AutoModelForCausalLM")."""
        await self._start_model()
        await self.budget.start(self.settings.tokenizer_id or self.settings.model_id)
        await self.guard.start()

    async def _start_model(self) -> None:
        """Load or connect; a failure is recorded for /healthz and the routes, never raised."""
        try:
            await self.backend.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("model load failed", extra={"model": self.settings.model_id})
            self.state = "error"
            # The public name and the type only: library messages and model ids can carry local paths.
            self.error = (
                f"model {self.public_model!r} failed to load ({type(exc).__name__}); see the service log"
            )
            return
        self.state = "ok"
        self._ready.set(1)

    async def stop(self) -> None:
        self._ready.set(0)
        self.budget.stop()
        await asyncio.gather(self.backend.stop(), self.guard.stop())

    async def health(self) -> tuple[State, str | None]:
        if self.state != "ok":
            return self.state, self.error
        # Ready means everything configured has loaded; a guard that failed is reported under "guard" on
        # /healthz and refuses its own calls (503), so it cannot pass anything unchecked.
        if self.guard.state == "loading":
            return "loading", "the guard model is still loading"
        reason = await self.backend.health()
        return ("error", reason) if reason else ("ok", None)

    def require_ready(self) -> None:
        if self.state == "loading":
            raise ModelUnavailable("the model is still loading")
        if self.state == "error":
            raise ModelUnavailable(self.error or "the model failed to load")

    # --- one generation ---------------------------------------------------------------------------------

    def _seed(self, attempt: int = 0) -> int | None:
        # A retry with the same seed would repeat the same junk; move the seed along with the attempt.
        return None if self.settings.seed is None else self.settings.seed + attempt

    async def generate(
        self,
        route: str,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        min_tokens: int | None = None,
        seed: int | None = None,
        regex: str | None = None,
        json_schema: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        self.require_ready()
        started = time.perf_counter()
        try:
            # The backends bound themselves too (generate's max_time, the HTTP timeout); this is the backstop.
            result = await asyncio.wait_for(
                self.backend.chat(
                    messages,
                    max_tokens=max_tokens,
                    temperature=self.settings.temperature if temperature is None else temperature,
                    top_p=self.settings.top_p if top_p is None else top_p,
                    stop=stop,
                    min_tokens=self.settings.min_new_tokens if min_tokens is None else min_tokens,
                    seed=seed,
                    regex=regex,
                    json_schema=json_schema,
                ),
                timeout=self.settings.request_timeout_s + 5,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"the model did not answer within {self.settings.request_timeout_s:g}s", stage="llm"
            ) from exc
        self._latency.labels(route).observe(time.perf_counter() - started)
        self._tokens.labels(route, "prompt").inc(result.prompt_tokens)
        self._tokens.labels(route, "completion").inc(result.completion_tokens)
        return result

    def _fallback_or_raise(self, route: str, exc: ImgPodError) -> None:
        if not self.settings.template_fallback:
            self._outcomes.labels(route, exc.code).inc()
            raise exc
        log.warning("template fallback", extra={"route": route, "reason": exc.code, "detail": exc.detail})
        self._outcomes.labels(route, "template").inc()

    # --- expand -----------------------------------------------------------------------------------------

    async def _shorten(self, message: str) -> tuple[str, Literal["model", "truncation"]]:
        limit = self.settings.shorten_word_threshold
        result = await self.generate(
            "shorten",
            build_shorten_messages(message, limit),
            max_tokens=self.settings.shorten_max_new_tokens,
            seed=self._seed(),
        )
        text = clean_output(result.text)
        if judge(text).usable and keeps_intent(message, text, max_words=limit):
            self._shortened.labels("model").inc()
            return text, "model"
        log.info("model shortening rejected; using keyword truncation")
        self._shortened.labels("truncation").inc()
        return keyword_shorten(message, limit), "truncation"

    async def expand(self, kind: ExpandKind, req: ExpandRequest) -> ExpandResponse:
        route = f"expand_{kind}"
        clock = StageTimer()
        limit = self.settings.shorten_word_threshold
        too_long = word_count(req.message) > limit
        shortened: str | None = None
        shortened_by: Literal["model", "truncation"] | None = None
        capped = False
        coverage = applied_coverage(kind, req.coverage)
        try:
            self.require_ready()
            budget = self.settings.history_token_budget
            history = bound_history(req.history, budget, self.backend.count_tokens)
            if too_long:
                shortened, shortened_by = await self._shorten(req.message)
                clock.lap("shorten")
            messages = build_expand_messages(
                kind,
                shortened or req.message,
                history,
                req.persona,
                words=self.settings.expand_words(kind),
                style=req.style,
                coverage=coverage,
            )
            result = await self.generate(
                route, messages, max_tokens=self.settings.expand_max_tokens(kind), seed=self._seed()
            )
            clock.lap("generate")
            scene = clean_output(result.text)
            verdict = judge(scene)
            if not verdict.usable:
                raise UnusableModelOutput(
                    f"the model's image prompt was unusable: {verdict.reason}", stage="llm"
                )
            if result.finish_reason == "length":
                # The cap stopped it mid-phrase: a half phrase ("wearing a red") is worse than none.
                whole = drop_unfinished_phrase(scene)
                capped, scene = whole != scene, whole
            source: Literal["model", "template"] = "model"
            model = self.public_model
            self._outcomes.labels(route, "model").inc()
        except FALLBACK_ERRORS as exc:
            self._fallback_or_raise(route, exc)
            if too_long and shortened is None:
                shortened, shortened_by = keyword_shorten(req.message, limit), "truncation"
            scene = template_scene(
                kind, shortened or req.message, max_words=limit, style=req.style, coverage=coverage
            )
            source, model = "template", TEMPLATE_MODEL
            clock.lap("template")
        descriptor = character_descriptor(req.persona)
        # Covered: the model may still have written exposure the rules forbid. Neutral: nothing is removed,
        # and the interface's check of the expanded prompt covers what the model may have added.
        if coverage:
            scene, descriptor = redact_explicit(scene), redact_explicit(descriptor)
        fitted = await self._fit_prompt(kind, descriptor, scene, req.style, coverage)
        trimmed = capped or fitted.cut_for is not None
        if trimmed:
            cause = fitted.cut_for or "generation_cap"
            self._trimmed.labels(kind, cause).inc()
            log.info("expansion trimmed", extra={"kind": kind, "cause": cause, "tokens": fitted.tokens})
        if fitted.tokens is not None:
            self._prompt_tokens.labels(kind).observe(fitted.tokens)
        return ExpandResponse(
            prompt=fitted.prompt,
            source=source,
            model=model,
            shortened_message=shortened,
            shortened_by=shortened_by,
            prompt_tokens=fitted.tokens,
            trimmed=trimmed,
            timings_ms=clock.done(),
        )

    async def _fit_prompt(
        self,
        kind: ExpandKind,
        descriptor: str,
        scene: str,
        style: str | None,
        coverage: CoverageReason | None,
    ) -> Fitted:
        """The composed prompt within the image model's token budget (token_budget.py); characters only
        when its tokenizer could not be loaded (the model's files are missing). The coverage clause is part
        of the composed prompt, so it is counted exactly when it is there."""

        def compose(part: str) -> str:
            return compose_expanded_prompt(kind, descriptor, part, style=style, coverage=coverage)

        return await self.budget.fit(scene, compose)

    # --- caption ----------------------------------------------------------------------------------------

    async def caption(self, req: CaptionRequest) -> CaptionResponse:
        route = "caption"
        clock = StageTimer()
        low, high = self.settings.caption_min_words, self.settings.caption_max_words
        messages = build_caption_messages(req.prompt, req.message, min_words=low, max_words=high)
        adjusted = False
        attempts = self.settings.caption_retries + 1
        try:
            last_reason = "no attempt"
            for attempt in range(attempts):
                adjusted = adjusted or attempt > 0
                result = await self.generate(
                    route, messages, max_tokens=self.settings.caption_max_new_tokens, seed=self._seed(attempt)
                )
                text = clean_output(result.text)
                verdict = judge(text, min_words=min(3, low))
                if not verdict.usable:
                    last_reason = verdict.reason or "unusable"
                    continue
                if not is_caption_safe(text):
                    last_reason = "explicit words"
                    continue
                if word_count(text) > high:
                    text, adjusted = truncate_words(text, high), True
                if word_count(text) < low:
                    last_reason = f"too short ({word_count(text)} words)"
                    continue
                clock.lap("generate")
                reason = await self._guard_output(route, text, req.message or req.prompt, strict=True)
                clock.lap("guard")
                if reason:
                    last_reason = reason
                    continue
                self._outcomes.labels(route, "model").inc()
                return CaptionResponse(
                    caption=text,
                    word_count=word_count(text),
                    source="model",
                    model=self.public_model,
                    adjusted=adjusted,
                    timings_ms=clock.done(),
                )
            raise UnusableModelOutput(
                f"no usable caption after {attempts} attempt(s); last: {last_reason}", stage="llm"
            )
        except CAPTION_FALLBACK_ERRORS as exc:
            self._fallback_or_raise(route, exc)
        text = truncate_words(template_caption(req.prompt), high)
        clock.lap("template")
        return CaptionResponse(
            caption=text,
            word_count=word_count(text),
            source="template",
            model=TEMPLATE_MODEL,
            adjusted=adjusted,
            timings_ms=clock.done(),
        )

    # --- reply ------------------------------------------------------------------------------------------

    async def reply(self, req: ReplyRequest) -> ReplyResponse:
        route = "reply"
        clock = StageTimer()
        try:
            text = await self._model_reply(route, req)
            clock.lap("generate")
        except FALLBACK_ERRORS as exc:
            self._fallback_or_raise(route, exc)
            text = await checked_template_reply(req.message, req.persona)
            clock.lap("template")
            return ReplyResponse(reply=text, source="template", model=TEMPLATE_MODEL, timings_ms=clock.done())
        # 1:1 chat is unmoderated: the word rules' hard block only, and the guard's "controversial" passes.
        blocked = (await decide_off_loop(evaluate_private_chat, text)).blocked
        reason = "the word rules" if blocked else await self._guard_output(route, text, req.message)
        clock.lap("guard")
        if reason:
            self._outcomes.labels(route, "unsafe").inc()
            # 422 policy_blocked, as for a refused request: the reply answered what the user asked.
            raise PolicyBlocked("the reply did not pass the content safety check", stage="reply_output")
        self._outcomes.labels(route, "model").inc()
        return ReplyResponse(reply=text, source="model", model=self.public_model, timings_ms=clock.done())

    async def _model_reply(self, route: str, req: ReplyRequest) -> str:
        self.require_ready()
        history = bound_history(req.history, self.settings.history_token_budget, self.backend.count_tokens)
        messages = build_reply_messages(req, history)
        result = await self.generate(
            route, messages, max_tokens=self.settings.reply_max_new_tokens, seed=self._seed()
        )
        text = clean_output(result.text)
        verdict = judge(text, min_words=1)
        if not verdict.usable:
            raise UnusableModelOutput(f"the model's reply was unusable: {verdict.reason}", stage="llm")
        return text

    # --- the guard on what leaves the service -----------------------------------------------------------

    async def _guard_output(
        self, route: str, text: str, asked: str | None, *, strict: bool = False
    ) -> str | None:
        """None when ``text`` may leave, else why not. ``strict`` (captions) refuses "controversial" too.

        A guard that cannot answer, or answers out of format, raises ``SafetyUnavailable``: unchecked text
        never leaves.
        """
        if not (self.guard.enabled and self.settings.guard_outputs):
            return None
        answer = await self.guard.moderate(text, "response", asked)
        if answer.verdict == "unparsed":
            raise SafetyUnavailable("the guard's answer could not be read", stage="guard")
        if answer.verdict == "safe" or (answer.verdict == "controversial" and not strict):
            return None
        log.info("output refused by the guard", extra={"route": route, "verdict": answer.verdict})
        return f"the guard judged it {answer.verdict}"
