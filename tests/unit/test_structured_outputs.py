"""What the OpenAI-compatible client sends when a call has an answer format: vLLM's ``structured_outputs``.

The request body is the contract (vLLM 0.12+ reads ``{"structured_outputs": {"regex": ...}}``, its docs
"Structured Outputs"), so it is read off a transport that records it; what a server does with it is vLLM's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from services.llm_service.backends.vllm_backend import OpenAIServerBackend
from services.llm_service.guard import Guard
from services.llm_service.guard_output import guard_answer_regex
from services.llm_service.settings import LlmSettings
from shared.metrics import ServiceMetrics

ANSWER = {"choices": [{"message": {"content": "Safety: Safe\nCategories: None"}, "finish_reason": "stop"}]}


def _recording_backend(settings: LlmSettings, bodies: list[dict[str, Any]]) -> OpenAIServerBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={**ANSWER, "model": settings.model_id, "usage": {}})

    backend = OpenAIServerBackend(settings)
    backend._client = httpx.AsyncClient(base_url="http://server", transport=httpx.MockTransport(handler))
    return backend


def test_guard_calls_carry_the_answer_format_and_other_calls_do_not() -> None:
    settings = LlmSettings(backend="openai", guard_backend="openai")
    bodies: list[dict[str, Any]] = []
    guard = Guard(settings, ServiceMetrics("test"))
    guard.backend = _recording_backend(settings, bodies)  # type: ignore[assignment]
    guard.state = "ok"

    async def calls() -> None:
        await guard.moderate("a picnic", "prompt")
        await guard.moderate("here it is", "response", "draw a picnic")
        await guard.backend.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.0)  # type: ignore[union-attr]

    asyncio.run(calls())
    assert bodies[0]["structured_outputs"] == {"regex": guard_answer_regex("prompt")}
    assert bodies[1]["structured_outputs"] == {"regex": guard_answer_regex("response")}
    assert "structured_outputs" not in bodies[2]


def test_off_for_servers_that_refuse_unknown_fields() -> None:
    settings = LlmSettings(backend="openai", structured_outputs=False)
    bodies: list[dict[str, Any]] = []
    backend = _recording_backend(settings, bodies)
    asyncio.run(backend.chat([{"role": "user", "content": "x"}], max_tokens=8, temperature=0.0, regex="a|b"))
    assert "structured_outputs" not in bodies[0]
