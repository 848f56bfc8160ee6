"""The LLM service names its model publicly in bodies and /healthz, and by its real id when it calls vLLM.

The vLLM server here is an ``httpx.MockTransport`` that answers like vLLM does: with the model's real id,
which on a pod is often a local path. The service must never pass that path on to its own clients.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.llm_service.app import create_app
from services.llm_service.backends.vllm_backend import VllmBackend
from services.llm_service.engine import LlmEngine
from services.llm_service.settings import LlmSettings
from shared.metrics import ServiceMetrics
from shared.models import CaptionRequest, ExpandRequest, Features, ReplyRequest
from tests.helpers.waiting import wait_until

MODEL_PATH = "/srv/pod-models/qwen2.5-7b-instruct"
CAPTION = "A quiet walk along the beach at sunset with the waves rolling in"


class WordTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * len(text.split())


class FakeVllm:
    """Records what the service sends; answers with the real id, as ``vllm serve /srv/...`` would."""

    def __init__(self, served: list[str] | None = None) -> None:
        self.served = served if served is not None else [MODEL_PATH]
        self.requested_models: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m} for m in self.served]})
        payload: dict[str, Any] = json.loads(request.content)
        self.requested_models.append(payload["model"])
        return httpx.Response(
            200,
            json={
                "model": payload["model"],
                "choices": [{"message": {"content": CAPTION}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 13},
            },
        )


def vllm_engine(fake: FakeVllm, **overrides: Any) -> LlmEngine:
    settings = LlmSettings(**{"backend": "vllm", "model_id": MODEL_PATH, "guard_backend": "off", **overrides})
    engine = LlmEngine(settings, ServiceMetrics("test"))
    backend = engine.backend
    assert isinstance(backend, VllmBackend)
    backend._tokenizer = WordTokenizer()
    backend._client = httpx.AsyncClient(base_url="http://vllm.test", transport=httpx.MockTransport(fake))
    engine.state = "ok"
    return engine


@pytest.mark.parametrize(("served_name", "public"), [(None, "qwen2.5-7b-instruct"), ("chat-7b", "chat-7b")])
def test_bodies_carry_the_public_name_and_vllm_gets_the_real_id(served_name: str | None, public: str) -> None:
    fake = FakeVllm()
    engine = vllm_engine(fake, served_model_name=served_name)
    persona = Features(hair_color="red")

    async def calls() -> list[Any]:
        return [
            await engine.expand("1to1", ExpandRequest(message="a walk on the beach", persona=persona)),
            await engine.caption(CaptionRequest(prompt="a beach at sunset")),
            await engine.reply(ReplyRequest(message="how was your day?", persona=persona)),
        ]

    responses = asyncio.run(calls())
    for resp in responses:
        assert resp.source == "model" and resp.model == public
        assert "/srv" not in resp.model_dump_json()
    assert fake.requested_models and set(fake.requested_models) == {MODEL_PATH}


def test_blank_served_name_means_unset() -> None:
    assert LlmSettings(served_model_name="  ").served_model_name is None
    assert LlmSettings().served_model_name is None


def test_vllm_serving_another_model_is_reported_without_the_path() -> None:
    engine = vllm_engine(FakeVllm(served=["some-other-model"]))
    reason = asyncio.run(engine.health())[1]
    assert reason and "does not serve" in reason and "qwen2.5-7b-instruct" in reason
    assert "/srv" not in reason


def test_failed_load_message_names_the_model_publicly() -> None:
    class Broken:
        name, model_id, device, dtype = "transformers", MODEL_PATH, None, None

        async def start(self) -> None:
            raise OSError(f"{MODEL_PATH} does not appear to have a file named config.json")

    settings = LlmSettings(backend="transformers", model_id=MODEL_PATH, guard_backend="off")
    engine = LlmEngine(settings, ServiceMetrics("test"))
    engine.backend = Broken()  # type: ignore[assignment]
    asyncio.run(engine.start())
    assert engine.state == "error" and engine.error
    assert "qwen2.5-7b-instruct" in engine.error and "/srv" not in engine.error


def test_healthz_is_public_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeVllm()

    async def start(self: VllmBackend) -> None:
        self._tokenizer = WordTokenizer()
        self._client = httpx.AsyncClient(base_url="http://vllm.test", transport=httpx.MockTransport(fake))

    monkeypatch.setattr(VllmBackend, "start", start)
    settings = LlmSettings(
        backend="vllm", model_id=MODEL_PATH, internal_token="llm-unit-token-77aa", guard_backend="off"
    )
    app = create_app(settings)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/healthz").json()["status"] != "loading", what="backend started")
        resp = client.get("/healthz")
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == "qwen2.5-7b-instruct"
        assert "/srv" not in resp.text
