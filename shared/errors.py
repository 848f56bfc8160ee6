"""One typed error hierarchy for every service, mapped to HTTP in exactly one place.

ImgPodError
 +-- BadRequest (400)
 +-- Unauthorized (401)
 +-- PayloadTooLarge (413)
 +-- UnsupportedMedia (415)
 +-- ValidationFailed (422)
 +-- PolicyBlocked (422)
 +-- Overloaded (429, Retry-After)
 +-- InferenceFailed (500)          the model ran and failed
 +-- UpstreamFailed (502)           a worker answered badly
 +-- UnusableModelOutput (502)      the model answered, but the text is junk
 +-- ModelUnavailable (503)         the model is not loaded (yet, or at all)
 +-- NoHealthyWorker (503)          no worker of a pool can take the call
 +-- SafetyUnavailable (503)        the safety check could not be made: refused, never let through
 +-- UpstreamTimeout (504)          a worker did not answer in time
 +-- InferenceTimeout (504)         the model did not finish in time

Bodies are always ``{"detail": str, "code": str, "request_id": str}`` (plus ``stage`` for upstream errors).
``str(exc)`` of library exceptions never reaches a body: it can leak paths and internals. The full cause is
logged instead, with the same request id, so a client's report leads straight to the log line.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.request_context import get_request_id

log = logging.getLogger(__name__)


class ImgPodError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, *, stage: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.stage = stage
        self.extra = extra or {}

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
    status_code = 429
    code = "overloaded"

    def __init__(self, detail: str, *, retry_after_s: float, stage: str | None = None) -> None:
        super().__init__(detail, stage=stage)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        # Retry-After is whole seconds; never 0, or clients hammer straight back.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


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
    status_code = 503
    code = "no_healthy_worker"


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


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler once, so each service answers errors in the same shape."""

    @app.exception_handler(ImgPodError)
    async def _imgpod(_: Request, exc: ImgPodError) -> JSONResponse:
        if exc.status_code >= 500:
            # With the traceback and the cause chained by ``raise ... from``: the log has what the body must
            # not show, under the same request id.
            log.warning(
                "request failed",
                extra={"code": exc.code, "stage": exc.stage, "detail": exc.detail},
                exc_info=exc,
            )
        return _json(exc.body(), exc.status_code, exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _json({"detail": validation_detail(exc.errors()), "code": "validation_error"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return _json(
            {"detail": str(exc.detail), "code": code}, exc.status_code, getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _json({"detail": "internal server error", "code": "internal_error"}, 500)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = get_request_id()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)
