"""What an OpenAI-compatible server's error answer means for this service (vLLM, llama.cpp, any other).

The bodies, as vLLM builds them (quoted in tests/unit/test_vllm_errors.py with the files and commits):

* newer vLLM: ``{"error": {"message", "type", "param", "code": <HTTP status int>}}``
  (``ErrorResponse``/``ErrorInfo`` in vllm/entrypoints/openai/engine/protocol.py); OpenAI and llama.cpp
  answer the same nesting, with a string ``code`` such as ``"context_length_exceeded"``;
* older vLLM: flat ``{"object": "error", "message", "type", "param", "code"}``;
* an engine that died: a bare 500 with an empty body (vllm/entrypoints/launcher.py); its ``/health`` is a
  bare 503.

The upstream message is logged (with the request id, which the JSON log adds to every record) and never put
in a public detail: it can quote the prompt, the model path or the server's internals.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import (
    ImgPodError,
    InferenceFailed,
    ModelUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from shared.http_client import UpstreamBusy, retry_after_of

log = logging.getLogger(__name__)

# vLLM names the field of an over-long request (VLLMValidationError ``parameter``), older servers and
# OpenAI say it in the message or the code; any of them means the conversation does not fit the window.
_CONTEXT_PARAMS = frozenset({"input_tokens", "max_tokens", "max_completion_tokens"})
_CONTEXT_PHRASES = ("maximum context length", "context length", "exceed_context_size", "context window")


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """One error answer, whichever of the shapes it came in; all fields empty when the body had none."""

    status: int
    message: str = ""
    type: str = ""
    param: str | None = None
    code: str | None = None

    @property
    def is_context_overflow(self) -> bool:
        if self.status not in (400, 413, 422):
            return False
        if self.param in _CONTEXT_PARAMS or self.code == "context_length_exceeded":
            return True
        text = self.message.lower()
        return any(phrase in text for phrase in _CONTEXT_PHRASES)


def parse_error(status: int, body: bytes) -> UpstreamError:
    """Read the nested or the flat shape; anything else (HTML, empty) keeps the status only."""
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return UpstreamError(status)
    info = data.get("error") if isinstance(data.get("error"), dict) else data
    if not isinstance(info, dict):
        return UpstreamError(status)
    message = info.get("message")
    if not isinstance(message, str):
        # FastAPI's own 422 (``{"detail": [...]}``) and this project's bodies (``{"detail": str}``).
        detail = info.get("detail")
        message = detail if isinstance(detail, str) else ("" if detail is None else str(detail))
    param = info.get("param")
    code = info.get("code")
    return UpstreamError(
        status=status,
        message=message[:2000],
        type=str(info.get("type") or ""),
        param=param if isinstance(param, str) else None,
        code=None if code is None else str(code),
    )


def error_for(response: httpx.Response, stage: str) -> ImgPodError | None:
    """The domain error for one answer of the server, None for a success. Logs what the server said."""
    if response.status_code < 400:
        return None
    upstream = parse_error(response.status_code, response.content)
    error = _map(upstream, response, stage)
    log.warning(
        "llm server answered an error",
        extra={
            "stage": stage,
            "upstream_status": upstream.status,
            "upstream_message": upstream.message,
            "upstream_type": upstream.type,
            "upstream_param": upstream.param,
            "upstream_code": upstream.code,
            "mapped_to": error.code,
        },
    )
    return error


def _map(upstream: UpstreamError, response: httpx.Response, stage: str) -> ImgPodError:
    status = upstream.status
    if upstream.is_context_overflow:
        # The prompt plus max_tokens does not fit --max-model-len. The history is budgeted to fit, so what
        # is left over is the client's own message: only a shorter one can pass, on this or any other pod.
        return ValidationFailed(
            "the message is too long for the model's context window; send a shorter one",
            stage=stage,
            param="message",
        )
    if status in (401, 403):
        # A wrong LLM_VLLM_API_KEY is our misconfiguration, not the client's fault.
        return InferenceFailed("the LLM server refused our credentials (check LLM_VLLM_API_KEY)", stage=stage)
    if status == 404:
        # "The model `x` does not exist.": the server serves another model; /healthz says the same.
        return ModelUnavailable("the LLM server does not serve the configured model", stage=stage)
    if status == 429:
        return UpstreamBusy(
            "the LLM server is busy; retry later", retry_after_s=retry_after_of(response), stage=stage
        )
    if status in (400, 413, 422):
        # Any other refusal is of a request this service built (a sampling field the server does not take):
        # the client cannot fix it, so not a 4xx.
        return UpstreamFailed("the LLM server refused the request", stage=stage)
    if status == 504:
        return UpstreamTimeout("the LLM server did not answer in time", stage=stage)
    if status >= 500 and status != 501:
        # 500 is what vLLM answers when its engine died (empty body) or a generation failed; 502/503 are a
        # proxy in front of it or a server still warming up. None of them is the client's doing.
        return ModelUnavailable("the LLM server is unavailable", stage=stage)
    return UpstreamFailed(f"the LLM server answered {status}", stage=stage)
