"""``/livez`` on every service (shared/service.py): alive while loading and while draining, with no key.

Liveness must not follow readiness: a kubelet restarts a pod whose liveness fails, and a pod that is loading
a multi-GB model or finishing its accepted requests is doing its job. Readiness is ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
from fastapi import APIRouter
from pydantic import SecretStr

from shared.metrics import ServiceMetrics
from shared.service import build_app, loading_in_background


def test_livez_is_200_while_loading_and_while_draining_and_needs_no_key() -> None:
    async def scenario() -> dict[str, Any]:
        loaded = asyncio.Event()

        async def load_forever() -> None:
            await loaded.wait()  # a model that is still loading for the whole test

        async def stop() -> None:
            return None

        router = APIRouter()

        @router.get("/v1/work")
        async def work() -> dict[str, str]:
            return {"ok": "yes"}

        app = build_app(
            title="t",
            version="0",
            lifespan=loading_in_background(load_forever, stop, "load"),
            routers=[router],
            metrics=ServiceMetrics("t-livez"),
            keys=[SecretStr("internal-token-for-the-livez-test")],
            max_body_bytes=1024,
            drain_timeout_s=30,
        )
        seen: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            )
            live = await client.get("/livez")
            seen["loading"] = (live.status_code, live.json())
            seen["work_without_key"] = (await client.get("/v1/work")).status_code
            app.state.drainer.start(lambda: None)
            seen["draining_livez"] = (await client.get("/livez")).status_code
            seen["draining_healthz"] = (await client.get("/healthz")).json()["status"]
            seen["draining_work"] = (await client.get("/v1/work")).status_code
            seen["in_flight"] = app.state.drainer.in_flight
            loaded.set()
        return seen

    seen = asyncio.run(scenario())
    assert seen["loading"] == (200, {"status": "alive"})
    assert seen["work_without_key"] == 401
    assert seen["draining_livez"] == 200
    assert seen["draining_healthz"] == "draining"  # readiness drops (503) while liveness holds
    assert seen["draining_work"] == 503
    assert seen["in_flight"] == 0  # a liveness probe is not work a drain waits for
