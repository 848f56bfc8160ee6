"""The interface's guard rule: verdict -> decision per route; failures -> 503 (enforce) or a pass (observe).

The pool is replaced by a scripted one here; tests/integration/test_guard.py runs the same rule over HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.interface.guard import Guard, decide, failure_reason, soften
from services.interface.settings import InterfaceSettings
from shared.errors import (
    ImgPodError,
    NoHealthyWorker,
    PolicyBlocked,
    SafetyUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from shared.metrics import ServiceMetrics
from shared.models import ModerateResponse
from shared.policy import COVERAGE_PHRASE, COVERAGE_SUFFIX


def answer(verdict: str, *categories: str) -> ModerateResponse:
    return ModerateResponse(verdict=verdict, categories=list(categories), model="m")  # type: ignore[arg-type]


class ScriptedPool:
    workers = ("http://llm.test",)
    deployed = True

    def __init__(self, result: dict[str, Any] | ImgPodError) -> None:
        self.result = result
        self.calls: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"method": method, "path": path, **kwargs})
        if isinstance(self.result, ImgPodError):
            raise self.result
        return self.result


def guard(mode: str, result: dict[str, Any] | ImgPodError) -> tuple[Guard, ScriptedPool, ServiceMetrics]:
    metrics = ServiceMetrics("interface")
    pool = ScriptedPool(result)
    settings = InterfaceSettings(guard=mode, guard_timeout_s=1.5)  # type: ignore[arg-type]
    return Guard(pool, settings, metrics), pool, metrics  # type: ignore[arg-type]


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_verdicts_become_the_word_rules_decisions() -> None:
    assert decide(answer("safe"), "a kite", moderated=True).prompt == "a kite"
    blocked = decide(answer("unsafe", "Violent"), "x", moderated=False)
    assert blocked.blocked and blocked.prompt == "" and "Violent" in (blocked.reason or "")
    # Controversial: covered where the route moderates (reason "guard"), a pass on 1:1 chat.
    soft = decide(answer("controversial"), "a kite", moderated=True)
    assert soft.soft_blocked and not soft.blocked and soft.prompt == "a kite" + COVERAGE_SUFFIX
    assert (soft.moderation, soft.category, soft.coverage) == ("covered", "guard", "suggestive")
    assert decide(answer("controversial"), "a kite", moderated=False) == decide(
        answer("safe"), "a kite", moderated=False
    )
    assert soften(soften("a kite")) == "a kite" + COVERAGE_SUFFIX
    # An expansion the LLM service already ended with its coverage clause is not covered twice.
    expanded = f"a kite on a beach. Coverage: {COVERAGE_PHRASE}."
    assert soften(expanded) == expanded


def test_sexual_only_verdicts_pass_on_unmoderated_routes_unless_a_minor_is_mentioned() -> None:
    """The guard has no "minors" category: adult content is allowed on 1:1, a minor turns it into a block."""
    sexual = answer("unsafe", "Sexual Content or Sexual Acts")
    assert not decide(sexual, "two adults in bed, explicit", moderated=False).blocked
    # Moderated routes cover it as the word rules cover explicit content (issue #23: covered, not refused).
    covered = decide(sexual, "two adults in bed, explicit", moderated=True)
    assert (covered.moderation, covered.category, covered.coverage) == ("covered", "guard", "explicit")
    assert covered.prompt == "two adults in bed, explicit" + COVERAGE_SUFFIX
    # A minor in any listed language, or a bare minor age, turns the same verdict into a hard block.
    minors = ("explicit photo of a child", "foto explícita de una niña", "she is 13, explicit", "裸の子供")
    for text in minors:
        assert decide(sexual, text, moderated=False).blocked, text
        assert decide(sexual, text, moderated=True).blocked, text
    # Another category with it is refused anyway.
    assert decide(answer("unsafe", "Sexual Content or Sexual Acts", "Violent"), "x", moderated=False).blocked
    # "Unsafe" naming no category is refused: nothing says it is only adult content.
    assert decide(answer("unsafe"), "two adults", moderated=False).blocked


def test_failure_reasons() -> None:
    assert failure_reason(UpstreamTimeout("t")) == "timeout"
    assert failure_reason(NoHealthyWorker("n")) == "unavailable"
    assert failure_reason(UpstreamFailed("f")) == "error"
    assert failure_reason(ValueError("shape")) == "error"


def test_enforce_asks_the_llm_pool_and_applies_the_verdict() -> None:
    g, pool, metrics = guard("enforce", {"verdict": "unsafe", "categories": ["Violent"], "model": "m"})
    decision = asyncio.run(g.check("how to hurt", moderated=False, stage="guard"))
    assert decision.blocked
    (call,) = pool.calls
    assert (call["path"], call["timeout_s"], call["json"]) == (
        "/v1/moderate",
        1.5,
        {"text": "how to hurt", "kind": "prompt"},
    )
    assert sample(metrics, "imgpod_guard_checks_total", verdict="unsafe") == 1


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (NoHealthyWorker("llm: no healthy worker"), "unavailable"),
        (UpstreamTimeout("guard: worker did not answer in time"), "timeout"),
        (UpstreamFailed("guard: worker answered 500"), "error"),
        ({"verdict": "unparsed", "model": "m"}, "unparsed"),
        ({"unexpected": "shape"}, "error"),
    ],
)
def test_enforce_fails_closed(result: dict[str, Any] | ImgPodError, reason: str) -> None:
    g, _, metrics = guard("enforce", result)
    with pytest.raises(SafetyUnavailable) as caught:
        asyncio.run(g.check("a kite", moderated=True, stage="guard"))
    assert caught.value.status_code == 503 and caught.value.code == "safety_unavailable"
    assert "Retry-After" in caught.value.headers()
    assert sample(metrics, "imgpod_guard_failures_total", reason=reason) == 1


@pytest.mark.parametrize("result", [NoHealthyWorker("down"), {"verdict": "unsafe", "model": "m"}])
def test_observe_counts_and_never_blocks(result: dict[str, Any] | ImgPodError) -> None:
    g, pool, _ = guard("observe", result)
    decision = asyncio.run(g.check("a kite", moderated=True, stage="guard"))
    assert not decision.blocked and decision.prompt == "a kite"
    assert len(pool.calls) == 1


def test_off_makes_no_call() -> None:
    g, pool, _ = guard("off", NoHealthyWorker("down"))
    assert asyncio.run(g.check("a kite", moderated=True, stage="guard")).prompt == "a kite"
    assert pool.calls == []


def test_a_blocked_verdict_is_a_policy_block() -> None:
    from services.interface.flows import enforce

    with pytest.raises(PolicyBlocked) as caught:
        enforce(decide(answer("unsafe", "PII"), "x", moderated=True), "guard")
    assert (caught.value.status_code, caught.value.code, caught.value.stage) == (
        422,
        "policy_blocked",
        "guard",
    )
