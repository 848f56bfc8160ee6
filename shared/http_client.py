"""One pooled ``httpx.AsyncClient`` per process, and the one place where httpx errors become domain errors.

Why the split between "before work" and "maybe did work" matters: a pool may retry a call on another worker
only when the first worker cannot have started on it (connection refused, 503 "not ready"). A timeout after
the request was sent, or a 500, may have burnt GPU time or be half-done; repeating it silently doubles load
exactly when the system is struggling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import (
    ImgPodError,
    PolicyBlocked,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from shared.request_context import REQUEST_ID_HEADER, get_request_id


@dataclass(frozen=True, slots=True)
class ClientLimits:
    connect_timeout_s: float = 3.0
    default_timeout_s: float = 60.0
    max_connections: int = 256
    max_keepalive: int = 64


def make_async_client(limits: ClientLimits | None = None) -> httpx.AsyncClient:
    limits = limits or ClientLimits()
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.default_timeout_s, connect=limits.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=limits.max_connections, max_keepalive_connections=limits.max_keepalive
        ),
        # Pods sit behind proxies; env proxy settings must not silently reroute internal calls.
        trust_env=False,
        follow_redirects=False,
    )


def internal_headers(token: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request_id = get_request_id()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


class RetryableUpstreamError(UpstreamFailed):
    """The worker did no work (refused connection, 503): safe to try the next worker once."""

    status_code = 503
    code = "no_healthy_worker"


def map_transport_error(exc: httpx.HTTPError, stage: str) -> ImgPodError:
    """Map one httpx exception to a domain error. The only place that knows httpx's hierarchy."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.PoolTimeout):
        return RetryableUpstreamError(f"{stage}: worker unreachable", stage=stage)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{stage}: worker did not answer in time", stage=stage)
    return UpstreamFailed(f"{stage}: transport error ({type(exc).__name__})", stage=stage)


def map_status(response: httpx.Response, stage: str) -> ImgPodError | None:
    """Turn a worker's error answer into the right domain error; None when the answer is a success."""
    status = response.status_code
    if status < 400:
        return None
    detail = _detail_of(response)
    if status == 503:
        return RetryableUpstreamError(f"{stage}: worker not ready ({detail})", stage=stage)
    if status == 422:
        body = _json_or_none(response) or {}
        if body.get("code") == "policy_blocked":
            return PolicyBlocked(detail, stage=stage)
        return ValidationFailed(f"{stage}: {detail}", stage=stage)
    if status == 504:
        return UpstreamTimeout(f"{stage}: {detail}", stage=stage)
    return UpstreamFailed(f"{stage}: worker answered {status} ({detail})", stage=stage)


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _detail_of(response: httpx.Response) -> str:
    body = _json_or_none(response)
    if body and isinstance(body.get("detail"), str):
        return body["detail"][:300]
    return f"HTTP {response.status_code}"
