"""One typed error hierarchy for every service, mapped to HTTP in exactly one place.

ImgPodError
 +-- BadRequest (400)
 +-- Unauthorized (401)
 +-- PayloadTooLarge (413)
 +-- UnsupportedMedia (415)
 +-- ValidationFailed (422)
 +-- PolicyBlocked (422)
 +-- Overloaded (429, Retry-After)   ``reason``: queue_full, over_sla, key_share (services/interface)
 |    +-- RateLimited (429)          a key's own rate limit, with the IETF RateLimit fields
 +-- InferenceFailed (500)          the model ran and failed
 +-- UpstreamFailed (502)           a worker answered badly
 +-- UnusableModelOutput (502)      the model answered, but the text is junk
 +-- ModelUnavailable (503)         the model is not loaded (yet, or at all)
 +-- NoHealthyWorker (503)          no worker of a pool can take the call
 +-- SafetyUnavailable (503)        the safety check could not be made: refused, never let through
 +-- UpstreamTimeout (504)          a worker did not answer in time
 +-- InferenceTimeout (504)         the model did not finish in time

Bodies are ``{"detail": str, "code": str, "request_id": str}`` (plus ``stage`` for upstream errors), except
under the path prefixes an app gives its own ``ErrorShape`` (the interface's OpenAI-compatible routes answer
``{"error": {"message", "type", "param", "code"}}``, ``openai_shape``). Every error, whichever layer raised it
(a handler here, or the edge middleware's 401/413/503), is rendered through ``ErrorShapes``, so a route
family's shape is chosen in one place. ``str(exc)`` of library exceptions never reaches a body: it can leak
paths and internals. The full cause is logged instead, with the same request id, so a client's report leads
straight to the log line.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.request_context import get_request_id

log = logging.getLogger(__name__)


class ImgPodError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        detail: str,
        *,
        stage: str | None = None,
        extra: dict[str, Any] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.stage = stage
        self.extra = extra or {}
        # The request field at fault, for shapes that name it (OpenAI's ``param``); not in the native body.
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.detail, "code": self.code}
        if self.stage:
            body["stage"] = self.stage
        body.update(self.extra)
        return body


class BadRequest(ImgPodError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ImgPodError):
    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotDeployed(ImgPodError):
    """The route is in the API but the work behind it is not deployed (yet): the same answer every time."""

    status_code = 400
    code = "not_deployed"


class PayloadTooLarge(ImgPodError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMedia(ImgPodError):
    status_code = 415
    code = "unsupported_media"


class ValidationFailed(ImgPodError):
    status_code = 422
    code = "validation_error"


class PolicyBlocked(ImgPodError):
    status_code = 422
    code = "policy_blocked"


class Overloaded(ImgPodError):
    """Refused for load, try again later. ``reason`` (in the body) says which bound refused, so a client
    can tell its own excess (``key_share``, ``rate_limited``) from a busy service (``queue_full``,
    ``over_sla``); a worker's own 429 passed on has none."""

    status_code = 429
    code = "overloaded"

    def __init__(
        self, detail: str, *, retry_after_s: float, stage: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(detail, stage=stage, extra={"reason": reason} if reason else None)
        self.retry_after_s = retry_after_s
        self.reason = reason

    def headers(self) -> dict[str, str]:
        # Retry-After is whole seconds; never 0, or clients hammer straight back.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class RateLimited(Overloaded):
    """One API key spent its quota (services/interface/rate_limits.py): a 429 that only that key gets.

    Carries the IETF ``RateLimit-Policy`` and ``RateLimit`` fields beside Retry-After, already rendered.
    """

    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: float, policy: str, fields: dict[str, str]) -> None:
        super().__init__(detail, retry_after_s=retry_after_s, stage="rate_limit", reason="rate_limited")
        self.extra["policy"] = policy
        self.fields = fields

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.fields}


class InferenceFailed(ImgPodError):
    status_code = 500
    code = "inference_failed"


class UpstreamFailed(ImgPodError):
    status_code = 502
    code = "upstream_failed"


class UnusableModelOutput(ImgPodError):
    status_code = 502
    code = "unusable_model_output"


class ModelUnavailable(ImgPodError):
    status_code = 503
    code = "model_unavailable"


class NoHealthyWorker(ImgPodError):
    """No worker can take the request now: none is healthy, or a pool scaled to zero has no pod yet.

    With Retry-After, so a client (the OpenAI SDKs too) waits and comes back rather than hammering or hanging:
    a pod that is starting or being scaled up from zero is usually ready within a few health polls.
    """

    status_code = 503
    code = "no_healthy_worker"
    RETRY_AFTER_S = 10.0

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.RETRY_AFTER_S))}


class SafetyUnavailable(ImgPodError):
    """The content-safety check could not be made (guard down, slow, or answering out of format).

    503 and not a 4xx: the client did nothing wrong and the same request may pass once the guard is back, so
    it says so with Retry-After. Never a 200: content the check could not judge is not let through.
    """

    status_code = 503
    code = "safety_unavailable"

    def __init__(self, detail: str, *, retry_after_s: float = 5.0, stage: str | None = None) -> None:
        super().__init__(detail, stage=stage)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class UpstreamTimeout(ImgPodError):
    status_code = 504
    code = "upstream_timeout"


class InferenceTimeout(ImgPodError):
    status_code = 504
    code = "inference_timeout"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media",
    422: "validation_error",
    429: "overloaded",
}


def validation_detail(errors: Any) -> str:
    """A readable one-line summary of pydantic errors, without the offending input values.

    pydantic's ``input`` can be a 10,000-character prompt or a secret; we name the field and the rule only.
    """
    parts = []
    for err in list(errors)[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form"))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """One error answer before it takes a shape: what every handler and the edge middleware produce."""

    status: int
    detail: str
    code: str
    stage: str | None = None
    param: str | None = None
    # Finer than ``code`` where a shape can say more (a request field that is unknown or missing).
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, exc: ImgPodError) -> ErrorReply:
        status, headers = exc.status_code, exc.headers()
        return cls(status, exc.detail, exc.code, exc.stage, exc.param, extra=exc.extra, headers=headers)


# A shape turns a reply into (status, body); it may change the status (OpenAI has no 422).
ErrorShape = Callable[[ErrorReply], tuple[int, dict[str, Any]]]


def native_shape(reply: ErrorReply) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"detail": reply.detail, "code": reply.code}
    if reply.stage:
        body["stage"] = reply.stage
    body.update(reply.extra)
    return reply.status, body


# OpenAI's error codes for what img_pod calls otherwise; any other code is passed on as it is.
_OPENAI_CODES = {
    "policy_blocked": "content_policy_violation",
    "validation_error": "invalid_value",
    "overloaded": "rate_limit_exceeded",
    "rate_limited": "rate_limit_exceeded",
    "unauthorized": "invalid_api_key",
}


def openai_shape(reply: ErrorReply) -> tuple[int, dict[str, Any]]:
    """OpenAI's ``{"error": {"message", "type", "param", "code"}}``, as its SDKs parse it into exceptions.

    The SDK picks its exception class by status (400 BadRequestError, 401 AuthenticationError, 429
    RateLimitError, 5xx InternalServerError), so a refusal of what the client sent is a 400, never a 422.
    """
    status = 400 if reply.status == 422 else reply.status
    code = reply.reason or _OPENAI_CODES.get(reply.code, reply.code)
    if status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return status, {"error": {"message": reply.detail, "type": kind, "param": reply.param, "code": code}}


class ErrorShapes:
    """Which shape an error answer takes, by the request path's prefix (first match), native otherwise."""

    def __init__(self, by_prefix: Sequence[tuple[str, ErrorShape]] = ()) -> None:
        self.by_prefix = tuple(by_prefix)

    def shape_for(self, path: str) -> ErrorShape:
        for prefix, shape in self.by_prefix:
            if path.startswith(prefix):
                return shape
        return native_shape

    def render(self, path: str, reply: ErrorReply, request_id: str | None) -> tuple[int, bytes]:
        shape = self.shape_for(path)
        status, body = shape(reply)
        if request_id and shape is native_shape:
            body["request_id"] = request_id
        # Encoded as JSONResponse does, so both kinds of error body read the same on the wire.
        return status, json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def response(self, request: Request, reply: ErrorReply) -> Response:
        status, body = self.render(request.url.path, reply, get_request_id())
        return Response(body, status_code=status, headers=dict(reply.headers), media_type="application/json")


def _validation_reply(errors: Any) -> ErrorReply:
    first = next(iter(errors), {})
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form", "path")]
    reason = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter"}.get(
        first.get("type", "")
    )
    return ErrorReply(
        422, validation_detail(errors), "validation_error", param=".".join(loc) or None, reason=reason
    )


def install_error_handlers(app: FastAPI, shapes: ErrorShapes | None = None) -> None:
    """Register every handler once, so each service answers errors in the same shape."""
    shapes = shapes or ErrorShapes()

    @app.exception_handler(ImgPodError)
    async def _imgpod(request: Request, exc: ImgPodError) -> Response:
        if exc.status_code >= 500:
            # With the traceback and the cause chained by ``raise ... from``: the log has what the body must
            # not show, under the same request id.
            log.warning(
                "request failed",
                extra={"code": exc.code, "stage": exc.stage, "detail": exc.detail},
                exc_info=exc,
            )
        return shapes.response(request, ErrorReply.of(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return shapes.response(request, _validation_reply(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None) or {}
        reply = ErrorReply(exc.status_code, str(exc.detail), code, headers=headers)
        return shapes.response(request, reply)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return shapes.response(request, ErrorReply(500, "internal server error", "internal_error"))
