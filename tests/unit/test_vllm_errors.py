"""The OpenAI client's reading of vLLM's error answers (services/llm_service/backends/openai_errors.py).

The bodies below are the ones vLLM builds, taken from its source:

* nested ``{"error": {message, type, param, code}}``: ``ErrorResponse``/``ErrorInfo`` in
  vllm/entrypoints/openai/engine/protocol.py (commit 040a2cc2a6295ea9c313d86526ff90a103eacb3e), filled by
  ``OpenAIServing.create_error_response`` in vllm/entrypoints/openai/engine/serving.py (commit
  00bd1493b3e82d6c13c68ee8a0e1c5a96707e190): a ``VLLMValidationError`` is 400 ``BadRequestError`` with its
  ``parameter`` as ``param`` and ``str(exc)`` (message plus ``(parameter=..., value=...)``) as the message;
  the over-long prompt and the too-large ``max_tokens`` messages are ``_validate_input``'s, same file; an
  unknown model is ``_check_model``'s 404 ``NotFoundError``; a failed generation ``GenerationError``'s 500.
* flat ``{"object": "error", message, type, param, code}``: the ``ErrorResponse`` of vLLM before the nested
  one (vllm/entrypoints/openai/protocol.py, v0.9 and older), with serving_engine.py's context message.
* engine dead: ``runtime_exception_handler`` in vllm/entrypoints/launcher.py (commit
  02828a12936935499c31449aca820543a8403c28) answers ``Response(status_code=500)``, no body; /health answers
  a bare 503 (vllm/entrypoints/serve/instrumentator/health.py).
* llama.cpp (llama-cpp-python's server, llama_cpp/server/errors.py): nested, with a string code
  ``context_length_exceeded`` and param ``messages``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from services.llm_service.backends.openai_errors import error_for, parse_error
from shared.errors import (
    ImgPodError,
    InferenceFailed,
    ModelUnavailable,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from shared.http_client import UpstreamBusy

CONTEXT_NESTED = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens. However, your request has 2100 input "
        "tokens. Please reduce the length of the input messages. (parameter=input_tokens, value=2100)",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
}
MAX_TOKENS_NESTED = {
    "error": {
        "message": "'max_tokens' or 'max_completion_tokens' is too large: 200. This model's maximum context "
        "length is 2048 tokens and your request has 1900 input tokens (200 > 2048 - 1900). "
        "(parameter=max_tokens, value=200)",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
}
CONTEXT_FLAT = {
    "object": "error",
    "message": "This model's maximum context length is 2048 tokens. However, you requested 2300 tokens "
    "(2100 in the messages, 200 in the completion). Please reduce the length of the messages or completion.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}
CONTEXT_LLAMA_CPP = {
    "error": {
        "message": "This model's maximum context length is 512 tokens. However, you requested 700 tokens "
        "(500 in the messages, 200 in the completion). "
        "Please reduce the length of the messages or completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
TEMPLATE_FLAT = {
    "object": "error",
    "message": "Chat template is passed with request, but --trust-request-chat-template is not set. "
    "Refused request with untrusted chat template.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}
MODEL_NESTED = {
    "error": {
        "message": "The model `/models/secret-path/qwen` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
}
GENERATION_NESTED = {
    "error": {"message": "Internal server error", "type": "InternalServerError", "param": None, "code": 500}
}

CASES: list[tuple[str, int, bytes, type[ImgPodError], int]] = [
    ("context, nested", 400, json.dumps(CONTEXT_NESTED).encode(), ValidationFailed, 422),
    ("max_tokens, nested", 400, json.dumps(MAX_TOKENS_NESTED).encode(), ValidationFailed, 422),
    ("context, flat", 400, json.dumps(CONTEXT_FLAT).encode(), ValidationFailed, 422),
    ("context, llama.cpp", 400, json.dumps(CONTEXT_LLAMA_CPP).encode(), ValidationFailed, 422),
    ("other 400, flat", 400, json.dumps(TEMPLATE_FLAT).encode(), UpstreamFailed, 502),
    ("unknown model", 404, json.dumps(MODEL_NESTED).encode(), ModelUnavailable, 503),
    ("generation failed", 500, json.dumps(GENERATION_NESTED).encode(), ModelUnavailable, 503),
    ("engine dead", 500, b"", ModelUnavailable, 503),
    ("starting / proxy", 503, b"", ModelUnavailable, 503),
    ("gateway timeout", 504, b"<html>504</html>", UpstreamTimeout, 504),
    ("bad key", 401, b'{"error": "Unauthorized"}', InferenceFailed, 500),
]


def _message_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    info = data.get("error", data)
    return info["message"] if isinstance(info, dict) else ""


@pytest.mark.parametrize(
    ("name", "status", "body", "kind", "public_status"), CASES, ids=[c[0] for c in CASES]
)
def test_each_vllm_body_maps_to_its_domain_error_and_is_logged_not_shown(
    name: str,
    status: int,
    body: bytes,
    kind: type[ImgPodError],
    public_status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="services.llm_service.backends.openai_errors")
    error = error_for(httpx.Response(status, content=body), "vllm")
    assert type(error) is kind and error.status_code == public_status
    message = _message_of(body)
    if message:
        # The upstream words go to the log only: they can quote a path or the prompt.
        assert message not in error.detail and "secret-path" not in error.detail
        assert [r for r in caplog.records if getattr(r, "upstream_message", None) == message]
    record = caplog.records[-1]
    assert record.upstream_status == status and record.mapped_to == error.code


def test_context_overflow_names_the_message_field() -> None:
    error = error_for(httpx.Response(400, content=json.dumps(CONTEXT_NESTED).encode()), "vllm")
    assert isinstance(error, ValidationFailed) and error.param == "message"
    assert "too long" in error.detail


def test_nested_and_flat_shapes_read_alike() -> None:
    nested = parse_error(400, json.dumps(CONTEXT_NESTED).encode())
    flat = parse_error(400, json.dumps(CONTEXT_FLAT).encode())
    assert (nested.type, nested.param, nested.code) == ("BadRequestError", "input_tokens", "400")
    assert (flat.type, flat.param, flat.code) == ("BadRequestError", None, "400")
    assert nested.is_context_overflow and flat.is_context_overflow
    assert not parse_error(400, json.dumps(TEMPLATE_FLAT).encode()).is_context_overflow


def test_a_429_keeps_its_retry_after() -> None:
    error = error_for(httpx.Response(429, content=b"", headers={"retry-after": "7"}), "vllm")
    assert isinstance(error, UpstreamBusy) and error.headers()["Retry-After"] == "7"


def test_unreadable_bodies_keep_the_status_only() -> None:
    for body in (b"", b"not json", b"[1, 2]", b'{"error": "plain string"}'):
        parsed = parse_error(502, body)
        assert parsed.status == 502 and parsed.message in ("", "plain string")
    assert error_for(httpx.Response(200, content=b"{}"), "vllm") is None


def test_a_server_that_never_answers_is_an_upstream_timeout(tiny_models: dict[str, Path]) -> None:
    """A real socket that accepts and stays silent: the client's own bound turns it into a 504."""
    from services.llm_service.backends.vllm_backend import OpenAIServerBackend
    from services.llm_service.settings import LlmSettings

    async def scenario() -> ImgPodError:
        held: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = LlmSettings(backend="openai", model_id=str(tiny_models["qwen_lm"]), guard_backend="off",
                               vllm_base_url=f"http://127.0.0.1:{port}", request_timeout_s=0.5,
                               health_timeout_s=0.2)  # fmt: skip
        backend = OpenAIServerBackend(settings)
        await backend.start()
        try:
            await backend.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.0)
        except ImgPodError as exc:
            return exc
        finally:
            await backend.stop()
            server.close()
        raise AssertionError("no error from a silent server")

    error = asyncio.run(scenario())
    assert isinstance(error, UpstreamTimeout) and error.status_code == 504
