"""The progress stream of an image worker's generate call: one JSON object per line (NDJSON).

Why a stream on the generate call itself, not a second route to poll: progress must reach the client within
100 ms of the step, and a cancel must reach the pipeline at its next step. On one connection both are free:
each step's line is written as it happens, and closing the connection is the cancel (the worker stops the
pipeline at its next step). A caller that does not ask for the stream (no ``Accept: application/x-ndjson``)
gets the plain JSON answer, as before.

Lines, in order: any number of ``{"type": "progress", "step": s, "total": t}`` (s = 1..t, one per denoising
step of the request's pipeline call), then exactly one ``{"type": "result", "status": 200, "body": {...}}``
(the body the plain call answers) or ``{"type": "error", "status": 4xx/5xx, "body": {...}, "headers": {...}}``
(the error body and headers the plain call would answer: Retry-After of a 429 travels in ``headers``). An
error found before the stream starts (validation, a full worker) is a plain HTTP error response instead,
exactly as without the stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPE = "application/x-ndjson"


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    total: int


@dataclass(frozen=True, slots=True)
class Final:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class BadStreamLine(ValueError):
    """A line that is not one of the stream's objects: the worker broke the protocol."""


def progress_line(step: int, total: int) -> bytes:
    return b'{"type":"progress","step":%d,"total":%d}\n' % (step, total)


def result_line(body: dict[str, Any]) -> bytes:
    return json.dumps({"type": "result", "status": 200, "body": body}, separators=(",", ":")).encode() + b"\n"


def error_line(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    payload = {"type": "error", "status": status, "body": body, "headers": headers or {}}
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def parse_line(line: str | bytes) -> Progress | Final:
    try:
        obj = json.loads(line)
        kind = obj["type"]
        if kind == "progress":
            return Progress(int(obj["step"]), int(obj["total"]))
        if kind in ("result", "error"):
            body = obj["body"]
            if not isinstance(body, dict):
                raise TypeError("body is not an object")
            headers = {str(k): str(v) for k, v in (obj.get("headers") or {}).items()}
            return Final(int(obj["status"]), body, headers)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadStreamLine(f"not a progress stream line: {exc}") from exc
    raise BadStreamLine(f"unknown line type {kind!r}")
