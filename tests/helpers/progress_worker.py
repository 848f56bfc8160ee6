"""A stand-in for the image worker's progress-stream PROTOCOL (shared/progress_stream.py), not for the worker.

It speaks the wire format of ``POST /v1/generate`` with ``Accept: application/x-ndjson`` exactly as the
protocol module writes it (its own ``progress_line``, ``result_line`` and ``error_line``), and lets a test
script what a worker may do on that wire: the final line it sends (a result, an error with its headers), a
stream cut short, a line outside the protocol, or a plain JSON answer as a worker from before the stream
gives. It never runs a model: the real worker's side of the stream is tested against the real worker.

What makes it a test instrument:

* ``gated``: each line waits for a credit the test grants (``POST /release``), so a test can see a line
  reach the caller while the stand-in has not been allowed to send the next one (no timing involved);
* ``GET /state``: per stream, how many lines were sent, whether the final line went out, the client's port
  (one connection or two), and whether the client went away before the end (uvicorn speaks ASGI 2.3, so
  Starlette listens for the disconnect and cancels the body while it waits for a credit);
* ``interval_s``: a pause between lines, for a worker that keeps sending steps past the caller's deadline.

The request body's ``steps`` sets the number of progress lines, so overlapping calls can differ. Tests start
it as a uvicorn subprocess (``ServiceProcess("tests.helpers.progress_worker")``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shared.progress_stream import MEDIA_TYPE, error_line, progress_line, result_line

FinalKind = Literal["result", "error", "none", "bad"]

DEFAULT_SCRIPT: dict[str, Any] = {
    # result: the answer; error: an error line (status, body, headers); none: the stream just ends;
    # bad: a line that is not one of the protocol's objects instead of the final line.
    "final": "result",
    "status": 200,
    "body": None,
    "headers": {},
    # Answer plain JSON whatever the Accept header says: a worker from before the stream.
    "plain": False,
    "gated": False,
    "interval_s": 0.0,
}


class Credits:
    """Lines the stand-in may still send, granted by the test; a gated stream waits here between lines."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Condition()

    async def grant(self, n: int) -> None:
        async with self.changed:
            self.count += n
            self.changed.notify_all()

    async def take(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.count > 0)
            self.count -= 1


def create_app() -> FastAPI:
    app = FastAPI(title="progress stream stand-in (protocol only)")
    app.state.script = dict(DEFAULT_SCRIPT)
    app.state.credits = Credits()
    app.state.calls = 0
    app.state.streams = []

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": "progress_worker", "model": "none", "concurrency": 4}

    @app.post("/script")
    async def script(request: Request) -> dict[str, Any]:
        app.state.script = {**DEFAULT_SCRIPT, **(await request.json())}
        app.state.credits = Credits()
        app.state.calls = 0
        app.state.streams = []
        return app.state.script

    @app.post("/release")
    async def release(request: Request) -> dict[str, int]:
        await app.state.credits.grant(int((await request.json()).get("lines", 1)))
        return {"credits": app.state.credits.count}

    @app.get("/state")
    async def state() -> dict[str, Any]:
        return {"calls": app.state.calls, "streams": app.state.streams}

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        app.state.calls += 1
        payload = await request.json()
        steps = int(payload.get("steps", 3))
        script = app.state.script
        body = script["body"] or {"port": request.url.port, "steps": steps, "tag": payload.get("tag")}
        status = int(script["status"])
        streamed = MEDIA_TYPE in request.headers.get("accept", "")
        if script["plain"] or not streamed:
            if script["final"] in ("result", "error"):
                return JSONResponse(body, status_code=status, headers=script["headers"])
            return Response(b"not json", status_code=200, media_type="application/json")
        peer = request.client.port if request.client else None
        record = {"sent": 0, "final": False, "disconnected": False, "tag": payload.get("tag"), "peer": peer}
        app.state.streams.append(record)
        lines = [progress_line(s, steps) for s in range(1, steps + 1)]
        kind: FinalKind = script["final"]
        if kind == "result":
            lines.append(result_line(body))
        elif kind == "error":
            lines.append(error_line(status, body, script["headers"]))
        elif kind == "bad":
            lines.append(b'{"type":"smoke"}\n')
        return StreamingResponse(
            _send(lines, record, app.state.credits, script, final=kind != "none"), media_type=MEDIA_TYPE
        )

    return app


async def _send(
    lines: list[bytes], record: dict[str, Any], credits: Credits, script: dict[str, Any], *, final: bool
) -> AsyncIterator[bytes]:
    finished = False
    try:
        for index, line in enumerate(lines):
            if script["gated"]:
                await credits.take()
            elif index and script["interval_s"]:
                await asyncio.sleep(float(script["interval_s"]))
            record["sent"] += 1
            record["final"] = final and index == len(lines) - 1
            yield line
        finished = True
    finally:
        # Cancelled (or closed) before the last line went out: the client went away.
        record["disconnected"] = not finished
