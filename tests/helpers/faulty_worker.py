"""A deliberately broken worker for resilience tests: FAULT INJECTION, not a model stub.

It answers ``/healthz`` 200 (so health polling keeps it in rotation) and 500 on every generation route, the
way a worker whose model crashes on each call would look from outside. Tests start it as a real uvicorn
subprocess (``ServiceProcess("tests.helpers.faulty_worker")``) to check that the interface ejects it after
N failures and sends later calls to the healthy workers. It never produces an image and is never used as a
stand-in for the model path.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

GENERATE_ROUTES = (
    "/v1/generate",
    "/v1/profile/generate",
    "/v1/chat/1to1/generate",
    "/v1/chat/shorts/generate",
    "/v1/chat/scenes/generate",
)


def create_app() -> FastAPI:
    app = FastAPI(title="faulty worker (fault injection)")
    app.state.calls = 0

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": "faulty_worker", "model": "none"}

    async def fail() -> JSONResponse:
        app.state.calls += 1
        return JSONResponse({"detail": "injected failure", "code": "inference_failed"}, status_code=500)

    @app.get("/calls")
    async def calls() -> dict[str, int]:
        return {"calls": app.state.calls}

    for route in GENERATE_ROUTES:
        app.add_api_route(route, fail, methods=["POST"])
    return app
