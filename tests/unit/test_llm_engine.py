"""The engine's decisions (retry, trim, 502, labelled fallback) over a scripted backend.

These are unit tests of the engine layer only: the model path itself is tested over HTTP on the tiny model
in tests/integration/test_llm_service.py. A script lets us hit each branch on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.llm_service.backends import ChatMessage, ChatResult
from services.llm_service.engine import LlmEngine
from services.llm_service.prompts import SAFETY_CLAUSE
from services.llm_service.settings import LlmSettings
from shared.errors import ModelUnavailable, UnusableModelOutput
from shared.metrics import ServiceMetrics
from shared.models import CaptionRequest, ExpandRequest, Features, ReplyRequest

GOOD_CAPTION = "A quiet walk along the beach at sunset with the waves rolling in"  # 13 words


class ScriptedBackend:
    name = "scripted"
    model_id = "scripted"
    device = "cpu"
    dtype = "float32"

    def __init__(self, answers: Sequence[str | Exception]) -> None:
        self.answers = list(answers)
        self.calls: list[list[ChatMessage]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> str | None:
        return None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def chat(self, messages: Sequence[ChatMessage], **_: object) -> ChatResult:
        self.calls.append(list(messages))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return ChatResult(answer, "scripted", 10, 10, "stop")


def make_engine(answers: Sequence[str | Exception], **overrides: object) -> tuple[LlmEngine, ScriptedBackend]:
    # The guard on outputs is tested over HTTP (tests/integration/test_guard.py); off here.
    settings = LlmSettings(
        **{"backend": "transformers", "model_id": "scripted", "guard_backend": "off", **overrides}
    )
    engine = LlmEngine(settings, ServiceMetrics("test"))
    backend = ScriptedBackend(answers)
    engine.backend = backend  # type: ignore[assignment]
    engine.state = "ok"
    return engine, backend


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_caption_trims_long_output_and_reports_adjusted() -> None:
    engine, _ = make_engine([GOOD_CAPTION + " and the seagulls calling out over the water tonight"])
    resp = run(engine.caption(CaptionRequest(prompt="beach")))
    assert resp.word_count == 15 and resp.adjusted and resp.source == "model"


def test_caption_retries_when_too_short_or_unsafe_then_succeeds() -> None:
    engine, backend = make_engine(
        ["Too short.", "A naked person walking along the beach at sunset with waves", GOOD_CAPTION]
    )
    resp = run(engine.caption(CaptionRequest(prompt="beach")))
    assert resp.caption == GOOD_CAPTION and resp.adjusted and resp.word_count == 13
    assert len(backend.calls) == 3


def test_caption_gives_502_after_retries() -> None:
    engine, backend = make_engine(["", "!!! ???", "ok"], caption_retries=2)
    with pytest.raises(UnusableModelOutput, match="3 attempt"):
        run(engine.caption(CaptionRequest(prompt="beach")))
    assert len(backend.calls) == 3


def test_caption_template_fallback_is_labelled() -> None:
    engine, _ = make_engine(["", "", ""], caption_retries=2, template_fallback=True)
    resp = run(engine.caption(CaptionRequest(prompt="beach")))
    assert resp.source == "template" and resp.model == "template" and 10 <= resp.word_count <= 15


def test_expand_junk_is_502_or_labelled_template() -> None:
    engine, _ = make_engine(["<|im_end|>"])
    with pytest.raises(UnusableModelOutput, match="unusable"):
        run(engine.expand("1to1", ExpandRequest(message="a fox")))
    engine, _ = make_engine(["<|im_end|>"], template_fallback=True)
    resp = run(engine.expand("shorts", ExpandRequest(message="a fox", persona=Features(hair_color="red"))))
    assert resp.source == "template" and "red hair" in resp.prompt and resp.prompt.endswith(SAFETY_CLAUSE)


def test_expand_shortens_with_the_model_when_it_keeps_intent() -> None:
    long = "please " * 10 + "show me walking my dog on the beach at sunset " + "really " * 20
    engine, backend = make_engine(["walking my dog on the beach at sunset", "a dog and a person on a beach"])
    resp = run(engine.expand("1to1", ExpandRequest(message=long)))
    assert resp.shortened_by == "model" and resp.shortened_message == "walking my dog on the beach at sunset"
    assert "walking my dog" in backend.calls[1][1]["content"]  # the expansion saw the shortened message


def test_expand_falls_back_to_truncation_when_model_shortening_is_junk() -> None:
    long = "please " * 10 + "show me walking my dog on the beach at sunset " + "really " * 20
    engine, backend = make_engine(["qq zz silversson yelloof", "a dog on a beach"])
    resp = run(engine.expand("1to1", ExpandRequest(message=long)))
    assert resp.shortened_by == "truncation"
    assert resp.shortened_message and "dog" in resp.shortened_message
    assert resp.shortened_message in backend.calls[1][1]["content"]


def test_model_down_is_503_unless_fallback() -> None:
    engine, _ = make_engine([ModelUnavailable("LLM backend unavailable")])
    with pytest.raises(ModelUnavailable):
        run(engine.expand("1to1", ExpandRequest(message="a fox")))
    engine, _ = make_engine([])
    engine.state, engine.error = "error", "model 'x' failed to load (OSError)"
    with pytest.raises(ModelUnavailable, match="failed to load"):
        run(engine.reply(ReplyRequest(message="hi", persona=Features())))


def test_reply_junk_is_502() -> None:
    engine, _ = make_engine(["<|im_start|>assistant\n<|im_end|>"])
    with pytest.raises(UnusableModelOutput):
        run(engine.reply(ReplyRequest(message="hi", persona=Features())))
