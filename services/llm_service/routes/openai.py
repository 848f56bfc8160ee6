"""A subset of the OpenAI chat-completions API over the loaded model (what vLLM serves, too).

It lets another instance use this one as its ``vllm`` backend, so the production HTTP client is tested
against a real server; it also makes a transformers-backed instance a drop-in for a vLLM server.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.llm_service.backends import ChatMessage
from services.llm_service.deps import EngineDep
from shared.errors import ImgPodError, ValidationFailed
from shared.models import MAX_SEED

router = APIRouter(prefix="/v1", tags=["openai"])

MAX_MESSAGES = 200
MAX_CONTENT_CHARS = 32_000


class ModelNotFound(ImgPodError):
    status_code = 404
    code = "model_not_found"


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)]


class StructuredOutputs(BaseModel):
    """vLLM's answer-format field (0.12+); of its kinds the two this service's callers send: ``regex`` (the
    guard's verdict) and ``json`` (a JSON schema: generated personas)."""

    model_config = ConfigDict(extra="forbid")
    regex: Annotated[str, Field(max_length=MAX_CONTENT_CHARS)] | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="json")

    @model_validator(mode="after")
    def _one_kind(self) -> StructuredOutputs:
        if (self.regex is None) == (self.json_schema is None):
            raise ValueError("give exactly one of regex and json")
        return self


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: Annotated[list[OpenAIMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0  # vLLM's extra sampling parameter
    # Passed to the backend: an OpenAI-server backend forwards it; in process it is not enforced (there is no
    # constrained decoding in transformers), so callers read the answer failing closed, as the guard does.
    structured_outputs: StructuredOutputs | None = None
    n: Literal[1] = 1
    stream: Literal[False] = False


@router.get("/models")
async def list_models(engine: EngineDep) -> dict[str, object]:
    return {
        "object": "list",
        "data": [{"id": engine.settings.model_id, "object": "model", "owned_by": "img_pod"}],
    }


@router.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, engine: EngineDep) -> dict[str, object]:
    """Raw model text, like any OpenAI-compatible server: no cleaning, no templates."""
    if req.model != engine.settings.model_id:
        raise ModelNotFound(f"model {req.model!r} is not served here")
    max_tokens = req.max_tokens or engine.settings.openai_max_tokens
    if max_tokens > engine.settings.openai_max_tokens:
        raise ValidationFailed(f"max_tokens: at most {engine.settings.openai_max_tokens}")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    messages: list[ChatMessage] = [{"role": m.role, "content": m.content} for m in req.messages]
    result = await engine.generate(
        "openai",
        messages,
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=stop,
        min_tokens=min(req.min_tokens, max_tokens),
        seed=req.seed,
        regex=req.structured_outputs.regex if req.structured_outputs else None,
        json_schema=req.structured_outputs.json_schema if req.structured_outputs else None,
    )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }
