"""The progress stream of an image worker's generate call: one JSON object per line (NDJSON).

Why a stream on the generate call itself, not a second route to poll: progress must reach the client within
100 ms of the step, and a cancel must reach the pipeline at its next step. On one connection both are free:
each step's line is written as it happens, and closing the connection is the cancel (the worker stops the
pipeline at its next step). A caller that does not ask for the stream (no ``Accept: application/x-ndjson``)
gets the plain JSON answer, as before.

Lines, in order: any number of ``{"type": "progress", "step": s, "total": t}`` (s = 1..t, one per denoising
step of the request's pipeline call) and, for a request with ``partial_images``, lines that add
``"partial_image": "<base64 PNG>"`` (the first image as step s left it; after that step's own line), then
exactly one ``{"type": "result", "status": 200, "body": {...}}`` (the body the plain call answers) or
``{"type": "error", "status": 4xx/5xx, "body": {...}, "headers": {...}}`` (the error body and headers the
plain call would answer: Retry-After of a 429 travels in ``headers``). An
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
    # A partial image (base64 PNG) of the request's first image after ``step``.
    partial_image: str | None = None


@dataclass(frozen=True, slots=True)
class Final:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class BadStreamLine(ValueError):
    """A line that is not one of the stream's objects: the worker broke the protocol."""


def progress_line(step: int, total: int) -> bytes:
    return b'{"type":"progress","step":%d,"total":%d}\n' % (step, total)


def partial_line(step: int, total: int, image_base64: str) -> bytes:
    # Base64 needs no JSON escaping: the line is put together without encoding megabytes of JSON.
    head = b'{"type":"progress","step":%d,"total":%d,"partial_image":"' % (step, total)
    return head + image_base64.encode("ascii") + b'"}\n'


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
            partial = obj.get("partial_image")
            if partial is not None and not isinstance(partial, str):
                raise TypeError("partial_image is not a string")
            return Progress(int(obj["step"]), int(obj["total"]), partial)
        if kind in ("result", "error"):
            body = obj["body"]
            if not isinstance(body, dict):
                raise TypeError("body is not an object")
            headers = {str(k): str(v) for k, v in (obj.get("headers") or {}).items()}
            return Final(int(obj["status"]), body, headers)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadStreamLine(f"not a progress stream line: {exc}") from exc
    raise BadStreamLine(f"unknown line type {kind!r}")
