"""A gate that tests close to park requests at a known point of a worker's serving path.

Why it exists: tests of queueing, disconnects, kills and drains need "the worker is busy with request A" as a
state they create, not one they hope for by asking for a large image and guessing how long the machine takes.
A test closes the gate, sends A, waits until ``/v1/test/gate`` reports it parked, does what it tests, then
opens the gate. It is off unless a service's ``test_hooks`` setting enables it, so production never has it:
the routes do not exist and the serving path pays one ``is None`` check.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request


class Gate:
    """Counts every request that reaches it and holds them while closed."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.arrived = 0
        self.parked = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def passthrough(self) -> None:
        self.arrived += 1
        if self._open.is_set():
            return
        self.parked += 1
        try:
            await self._open.wait()
        finally:
            self.parked -= 1

    def view(self) -> dict[str, Any]:
        return {"open": self.is_open, "arrived": self.arrived, "parked": self.parked}


def gate_router() -> APIRouter:
    """``GET /v1/test/gate`` (state), ``POST /v1/test/gate/close`` and ``.../open``, on ``app.state.gate``."""
    router = APIRouter(tags=["test hooks"], include_in_schema=False)

    @router.get("/v1/test/gate")
    async def gate_state(request: Request) -> dict[str, Any]:
        return request.app.state.gate.view()

    @router.post("/v1/test/gate/close")
    async def gate_close(request: Request) -> dict[str, Any]:
        request.app.state.gate.close()
        return request.app.state.gate.view()

    @router.post("/v1/test/gate/open")
    async def gate_open(request: Request) -> dict[str, Any]:
        request.app.state.gate.open()
        return request.app.state.gate.view()

    return router
