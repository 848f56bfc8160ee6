"""A scripted guard for the guard tests: FAULT INJECTION, not a model stub.

Two faces, each answering what the test scripted through ``POST /script``:

* ``/v1/moderate``, as the LLM pod answers the interface: a verdict, a delay (a guard too slow to answer in
  time), or an HTTP status (a guard that fails). It tests the interface's decision and fail-closed rules.
* ``/v1/models`` and ``/v1/chat/completions``, as a vLLM server answers the LLM service: fixed raw text per
  model id (``SCRIPTED_GUARD_MODEL`` gets the guard's text, any other id the chat text). It tests what the
  LLM service does with a guard's verdict on its captions and replies, which random weights cannot reach.

It also replays a real server's failures byte for byte (``chat_reply`` / ``models_reply``: a status, a raw
body and headers), so the LLM service's OpenAI client is tested on the exact error bodies vLLM sends
(tests/unit/test_vllm_errors.py quotes them, with vLLM's files and commits), and on a ``/v1/models`` that
answers before it lists the model, as a server that is still starting does.

It is not the LLM: generation through a real OpenAI-compatible server is tested against llama.cpp's server
on the tiny Qwen2 (tests/integration/test_llm_openai_server.py), and against the service's own
``/v1/chat/completions`` (tests/integration/test_llm_service.py). The real guard's path (the tiny
Qwen3Guard through the transformers and vLLM backends) is tested against the real model. Tests start this as
a uvicorn subprocess (``ServiceProcess("tests.helpers.scripted_llm")``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

DEFAULT_SCRIPT: dict[str, Any] = {
    "verdict": "safe",
    "categories": [],
    "delay_s": 0.0,
    "status": 200,
    "guard_text": "Safety: Safe\nCategories: None",
    "chat_text": "A quiet afternoon by the lake with friends, warm light and a happy little dog.",
    # {"status": int, "body": str (sent as is), "headers": {...}} replaces the chat / model-list answer.
    "chat_reply": None,
    "models_reply": None,
}


def raw_reply(reply: dict[str, Any]) -> Response:
    headers = {"content-type": "application/json", **reply.get("headers", {})}
    return Response(reply.get("body", "").encode(), status_code=int(reply["status"]), headers=headers)


def create_app() -> FastAPI:
    app = FastAPI(title="scripted guard (fault injection)")
    app.state.script = dict(DEFAULT_SCRIPT)
    app.state.calls = {"moderate": 0, "guard": 0, "chat": 0}
    guard_model = os.environ.get("SCRIPTED_GUARD_MODEL", "scripted-guard")
    models = [m for m in os.environ.get("SCRIPTED_MODELS", guard_model).split(",") if m]

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": "scripted_llm", "model": "none"}

    @app.post("/script")
    async def script(request: Request) -> dict[str, Any]:
        app.state.script = {**DEFAULT_SCRIPT, **(await request.json())}
        return app.state.script

    @app.get("/calls")
    async def calls() -> dict[str, int]:
        return app.state.calls

    async def scripted_failure() -> JSONResponse | None:
        script = app.state.script
        await asyncio.sleep(float(script["delay_s"]))
        if script["status"] != 200:
            body = {"detail": "injected failure", "code": "injected"}
            return JSONResponse(body, status_code=int(script["status"]))
        return None

    @app.post("/v1/moderate")
    async def moderate(request: Request) -> JSONResponse:
        app.state.calls["moderate"] += 1
        await request.json()
        if failure := await scripted_failure():
            return failure
        script = app.state.script
        return JSONResponse(
            {"verdict": script["verdict"], "categories": script["categories"], "model": "scripted"}
        )

    @app.get("/v1/models")
    async def list_models() -> Response:
        if reply := app.state.script["models_reply"]:
            return raw_reply(reply)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        is_guard = body.get("model") == guard_model
        app.state.calls["guard" if is_guard else "chat"] += 1
        if is_guard and (failure := await scripted_failure()):
            return failure
        if not is_guard and (reply := app.state.script["chat_reply"]):
            return raw_reply(reply)
        text = app.state.script["guard_text" if is_guard else "chat_text"]
        return JSONResponse(
            {
                "id": "scripted",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    return app
