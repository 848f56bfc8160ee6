"""The one interface every generation backend implements, and the shapes it speaks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str  # raw model text; cleaning is the caller's job (services/llm_service/cleaning.py)
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class ChatBackend(Protocol):
    """A chat model: in-process transformers, or a vLLM server over its OpenAI-compatible API.

    ``chat`` raises only domain errors: ``ModelUnavailable`` (not loaded / unreachable), ``UpstreamTimeout``,
    ``ValidationFailed`` (input too long), ``InferenceFailed`` / ``UpstreamFailed``.
    """

    name: str
    model_id: str
    device: str | None
    dtype: str | None

    async def start(self) -> None:
        """Load (transformers) or connect (vllm). Raises on failure; the app records the error."""

    async def stop(self) -> None: ...

    async def health(self) -> str | None:
        """None when the backend can serve now, else a short reason."""

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's own tokenizer."""

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
    ) -> ChatResult: ...


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string, as OpenAI servers do; True when one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
