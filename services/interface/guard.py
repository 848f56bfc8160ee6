"""The second safety layer: the guard model's verdict on a text, asked of the LLM pool's ``/v1/moderate``.

The word rules (``shared.policy``) stay first: they are cheap and refuse before a request queues. The guard
reads what they let through, in every language the model covers, and its verdict becomes a
``PolicyDecision`` the flows enforce like the word rules': "unsafe" is a hard block (422 policy_blocked),
except sexual content alone with no minor (covered on moderated routes, a pass on 1:1 chat); "controversial"
is covered on moderated routes (the coverage suffix) and a pass on 1:1 chat.

Fail closed (``INTERFACE_GUARD=enforce``): a check that cannot be made (no LLM worker, a timeout, an error,
an answer out of format) refuses the request with 503 ``safety_unavailable`` and Retry-After: the client did
nothing wrong and may retry, but nothing the guard did not judge reaches an image worker. ``observe`` makes
the same calls and waits for them (so it costs what ``enforce`` costs) but only counts and logs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.interface.pools import WorkerPool
from services.interface.settings import InterfaceSettings
from shared.errors import ImgPodError, NoHealthyWorker, SafetyUnavailable, UpstreamTimeout
from shared.metrics import ServiceMetrics
from shared.models import MAX_MODERATE_CHARS, CoverageReason, ModerateResponse
from shared.policy import PolicyDecision, mentions_minor, with_coverage
from shared.timings import StageTimer

log = logging.getLogger(__name__)

GUARD_CATEGORY = "guard"
# Qwen3Guard's name for sexual content (model card); adult sexual content is allowed on unmoderated routes.
ADULT_CATEGORIES = frozenset({"Sexual Content or Sexual Acts"})


def passed(text: str) -> PolicyDecision:
    return PolicyDecision(blocked=False, category=None, prompt=text, soft_blocked=False, reason=None)


def soften(prompt: str) -> str:
    """The prompt covered as the word rules cover it: the coverage suffix, once."""
    return with_coverage(prompt)


def adult_only(answer: ModerateResponse, text: str) -> bool:
    """An "unsafe" that means adult sexual content and nothing else: allowed on unmoderated routes.

    The guard's categories have no "minors": sexual content involving a child is "Sexual Content" like any
    other. So on 1:1, private and profile routes, where adults may ask for explicit images, a sexual-only
    verdict refuses only when the text mentions a minor in some listed language (or a minor age).
    """
    return set(answer.categories) <= ADULT_CATEGORIES and not mentions_minor(text)


def decide(answer: ModerateResponse, text: str, *, moderated: bool) -> PolicyDecision:
    """The guard's verdict as the word rules would have put it. ``unparsed`` never gets here.

    Sexual content alone (no minor) is what the word rules cover rather than refuse on moderated routes, so
    the guard's word for it does the same there: covered as explicit; it passes on unmoderated routes.
    """
    adult = answer.verdict == "unsafe" and bool(answer.categories) and adult_only(answer, text)
    if adult and not moderated:
        return passed(text)
    if adult:
        return _covered(text, "explicit")
    if answer.verdict == "unsafe":
        named = f" ({', '.join(answer.categories)})" if answer.categories else ""
        return PolicyDecision(blocked=True, category=GUARD_CATEGORY, prompt="", soft_blocked=False,
                              reason=f"the content safety check refused this request{named}")  # fmt: skip
    if answer.verdict == "controversial" and moderated:
        # "Controversial" is the guard's borderline: the coverage of a suggestive prompt.
        return _covered(text, "suggestive")
    return passed(text)


def _covered(text: str, coverage: CoverageReason) -> PolicyDecision:
    # The category ("guard") is the response's moderation reason; ``coverage`` is what the expansion gets.
    return PolicyDecision(blocked=False, category=GUARD_CATEGORY, prompt=soften(text), soft_blocked=True,
                          reason="the content safety check asked for coverage; coverage was added",
                          coverage=coverage)  # fmt: skip


def failure_reason(exc: Exception) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    # Connection refused, every LLM worker down or answering 503 (the guard off, loading, or down there).
    if isinstance(exc, NoHealthyWorker):
        return "unavailable"
    return "error"


class Guard:
    def __init__(self, pool: WorkerPool, settings: InterfaceSettings, metrics: ServiceMetrics) -> None:
        self.pool = pool
        self.settings = settings
        self.mode = settings.guard
        self._checks = metrics.counter("imgpod_guard_checks_total", "Guard verdicts", ("verdict",))
        self._failures = metrics.counter(
            "imgpod_guard_failures_total",
            "Guard checks that could not be made (refused in enforce mode)",
            ("reason",),
        )
        self._latency = metrics.histogram("imgpod_guard_seconds", "Time of one guard check")
        if self.mode == "enforce" and not pool.deployed:
            # Not fatal (the pool's URLs may be filled in by a later deploy), but every image request fails.
            log.warning(
                "guard enforced without INTERFACE_LLM_URLS: every image request will be refused (503)"
            )

    async def check(self, text: str, *, moderated: bool, stage: str) -> PolicyDecision:
        """The decision to enforce on ``text``; a pass when off or observing. Raises ``SafetyUnavailable``
        in enforce mode when the check cannot be made."""
        if self.mode == "off":
            return passed(text)
        started = time.perf_counter()
        try:
            answer = await self._ask(text, stage)
        except (ImgPodError, ValueError) as exc:
            self._latency.observe(time.perf_counter() - started)
            return self._failed(text, stage, failure_reason(exc), exc)
        elapsed = time.perf_counter() - started
        self._latency.observe(elapsed)
        self._checks.labels(answer.verdict).inc()
        log.info(
            "guard verdict",
            extra={"stage": stage, "verdict": answer.verdict, "categories": answer.categories,
                   "mode": self.mode, "ms": round(elapsed * 1000, 1)},
        )  # fmt: skip
        if answer.verdict == "unparsed":
            return self._failed(text, stage, "unparsed", None)
        return decide(answer, text, moderated=moderated) if self.mode == "enforce" else passed(text)

    async def _ask(self, text: str, stage: str) -> ModerateResponse:
        body = await self.pool.request(
            "POST",
            "/v1/moderate",
            stage=stage,
            timeout_s=self.settings.guard_timeout_s,
            json={"text": text[:MAX_MODERATE_CHARS], "kind": "prompt"},
        )
        # A body in another shape raises pydantic's ValidationError, a ValueError: a failed check.
        return ModerateResponse.model_validate(body)

    def _failed(self, text: str, stage: str, reason: str, exc: Exception | None) -> PolicyDecision:
        self._failures.labels(reason).inc()
        # With the cause (timeout, refused connection, a body out of shape) for whoever reads the log.
        log.warning(
            "guard check failed",
            extra={"stage": stage, "reason": reason, "mode": self.mode},
            exc_info=exc,
        )
        if self.mode == "observe":
            return passed(text)
        raise SafetyUnavailable(
            f"the content safety check could not be made ({reason}); nothing was generated, retry later",
            retry_after_s=max(1.0, self.settings.eject_cooldown_s),
            stage=stage,
        ) from exc

    def in_background(
        self, text: str, *, moderated: bool, stage: str, timer: StageTimer
    ) -> asyncio.Future[PolicyDecision]:
        """``check`` started now, for a caller that has other work to do before it needs the verdict.

        The caller awaits it before any pixels are made; if the caller fails first, the verdict is dropped
        (and its error retrieved here, so it is not reported as never retrieved).
        """

        async def timed() -> PolicyDecision:
            with timer.stage(stage):
                return await self.check(text, moderated=moderated, stage=stage)

        task = asyncio.ensure_future(timed())
        task.add_done_callback(_retrieve)
        return task


def _retrieve(task: asyncio.Future[PolicyDecision]) -> None:
    if not task.cancelled():
        task.exception()
