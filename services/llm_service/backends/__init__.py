"""Generation backends behind one interface (``ChatBackend``)."""

from __future__ import annotations

from services.llm_service.backends.base import ChatBackend, ChatMessage, ChatResult
from services.llm_service.settings import LlmSettings


def make_backend(settings: LlmSettings) -> ChatBackend:
    if settings.backend in ("openai", "vllm"):
        from services.llm_service.backends.vllm_backend import OpenAIServerBackend

        return OpenAIServerBackend(settings)
    from services.llm_service.backends.transformers_backend import TransformersBackend

    return TransformersBackend(settings)


__all__ = ["ChatBackend", "ChatMessage", "ChatResult", "make_backend"]
