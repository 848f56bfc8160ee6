"""Production backend: a client of an OpenAI-compatible chat-completions server (``LLM_BACKEND=openai``,
or ``vllm``, its first name).

On the LLM pod the server is vLLM, beside this service (its own venv, started by the deploy script); on a CPU
box it can be llama.cpp's server (scripts/install_llama_cpp.sh; tested in
tests/integration/test_llm_openai_server.py). This code only speaks HTTP to it; error answers are read by
openai_errors.py. History is budgeted with the model's own tokenizer, loaded locally (tokenizer files only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from services.llm_service.backends.base import ChatMessage, ChatResult
from services.llm_service.backends.openai_errors import error_for
from services.llm_service.settings import LlmSettings
from shared.errors import ImgPodError, ModelUnavailable, UpstreamFailed
from shared.http_client import RetryableUpstreamError, map_transport_error
from shared.public_names import public_model_id

log = logging.getLogger(__name__)
STAGE = "vllm"


class OpenAIServerBackend:
    name = "openai"

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        # What /healthz and the logs call it: the configured name, so LLM_BACKEND=vllm still reads "vllm".
        self.name = settings.backend
        self.model_id = settings.model_id
        self.device: str | None = "remote"
        self.dtype: str | None = None
        self._tokenizer: Any = None
        self._client: httpx.AsyncClient | None = None
        # False until /v1/models has listed our model once: until then the server is starting (it answers,
        # but not yet with our model), and /healthz says "loading" rather than "error".
        self.served_once = False
        self._answered = False

    def _headers(self) -> dict[str, str]:
        key = self.settings.vllm_api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    async def start(self) -> None:
        from transformers import AutoTokenizer

        # The served model's tokenizer at its pinned revision, unless one is named (a GGUF server).
        named = self.settings.tokenizer_id
        self._tokenizer = await asyncio.to_thread(
            AutoTokenizer.from_pretrained,
            named or self.settings.model_id,
            revision=None if named else self.settings.model_revision,
        )
        self._client = httpx.AsyncClient(
            base_url=self.settings.vllm_base_url,
            timeout=httpx.Timeout(self.settings.request_timeout_s, connect=self.settings.connect_timeout_s),
            headers=self._headers(),
            trust_env=False,
            follow_redirects=False,
        )
        # Not fatal: vLLM may still be loading its weights; /healthz reports it until it answers.
        reason = await self.health()
        if reason:
            log.warning(
                "llm server not ready yet", extra={"reason": reason, "url": self.settings.vllm_base_url}
            )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> str | None:
        """The server is up and serves our model id (``GET /v1/models``)."""
        reason = await self._probe()
        if reason is None:
            self.served_once = True
        return reason

    @property
    def starting(self) -> bool:
        """The server answers but has not listed our model yet (vLLM warming up, a proxy before it is up).

        Unreachable is not "starting": it stays an error, since nothing says a server is coming."""
        return self._answered and not self.served_once

    async def _probe(self) -> str | None:
        if self._client is None:
            return "backend not started"
        try:
            resp = await self._client.get("/v1/models", timeout=self.settings.health_timeout_s)
        except httpx.HTTPError as exc:
            self._answered = False
            return f"{self.name} unreachable ({type(exc).__name__})"
        self._answered = True
        if resp.status_code != 200:
            return f"{self.name} answered {resp.status_code} on /v1/models"
        try:
            ids = {m.get("id") for m in resp.json().get("data", [])}
        except (ValueError, AttributeError, TypeError):
            return f"{self.name} sent an unreadable model list"
        if self.model_id not in ids:
            # This reason is shown on the unauthenticated /healthz: the public name, never a path.
            public = public_model_id(self.model_id, self.settings.served_model_name)
            return f"{self.name} does not serve {public!r}"
        return None

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            raise ModelUnavailable("tokenizer is not loaded")
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        min_tokens: int = 0,
        seed: int | None = None,
        regex: str | None = None,
        json_schema: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        if self._client is None:
            raise ModelUnavailable("the LLM server backend is not started")
        payload: dict[str, Any] = {
            "model": self.model_id,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stop:
            payload["stop"] = list(stop)
        if min_tokens:
            payload["min_tokens"] = min_tokens  # vLLM's extra sampling parameter
        if seed is not None:
            payload["seed"] = seed
        if regex is not None and self.settings.structured_outputs:
            # vLLM (0.12 and later) decodes only tokens that keep the answer inside the pattern.
            payload["structured_outputs"] = {"regex": regex}
        elif json_schema is not None and self.settings.structured_outputs:
            # The same field's JSON kind: only answers that parse as the schema are sampled.
            payload["structured_outputs"] = {"json": dict(json_schema)}
        try:
            resp = await self._client.post("/v1/chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise _as_unavailable(map_transport_error(exc, STAGE)) from exc
        error = error_for(resp, STAGE)
        if error is not None:
            raise error
        return _parse_completion(resp, self.model_id)


def _as_unavailable(error: ImgPodError) -> ImgPodError:
    if isinstance(error, RetryableUpstreamError):
        return ModelUnavailable(f"LLM backend unavailable: {error.detail}", stage=STAGE)
    return error


def _parse_completion(resp: httpx.Response, model_id: str) -> ChatResult:
    try:
        body = resp.json()
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
        usage = body.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return ChatResult(
            text=str(text),
            model=str(body.get("model") or model_id),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=finish,
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UpstreamFailed("vllm sent an unreadable chat completion", stage=STAGE) from exc


# The class's first name: tests and older code import it.
VllmBackend = OpenAIServerBackend
