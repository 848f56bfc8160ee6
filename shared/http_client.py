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
    BadRequest,
    ImgPodError,
    Overloaded,
    PayloadTooLarge,
    PolicyBlocked,
    UnsupportedMedia,
    UpstreamFailed,
    UpstreamTimeout,
    ValidationFailed,
)
from shared.request_context import REQUEST_ID_HEADER, get_request_id


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """The keep-alive pool of the one client a process uses for all its workers.

    ``max_keepalive`` should cover the calls the process can have in flight at once (for the interface: its
    queue consumers, i.e. healthy workers x per-worker concurrency summed over the pools, plus one health
    probe per worker), or every call past it opens a new TCP connection and closes it afterwards. It should
    not be much larger either: httpcore walks every pooled connection twice per request and polls each idle
    one for readability, so idle connections cost every request a little CPU. The pool keeps only what was
    used within ``keepalive_expiry_s``: after a burst it shrinks back to what the steady load needs.

    ``keepalive_expiry_s`` stays below the workers' uvicorn ``--timeout-keep-alive`` (5 s by default), so
    the client retires an idle connection before the server may close it; otherwise a request can be
    written into a socket the worker is closing at that very moment (a transport error that counts as a
    worker failure). The 2 s health polls keep one connection per worker warm whatever the traffic.
    """

    connect_timeout_s: float = 3.0
    default_timeout_s: float = 60.0
    max_connections: int = 256
    max_keepalive: int = 64
    keepalive_expiry_s: float = 4.0


class _NoCookies(httpx.Cookies):
    """A jar that never takes a cookie: internal calls carry no state from one call to the next."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _InternalAsyncClient(httpx.AsyncClient):
    """httpx's client without its cookie jar: a worker's Set-Cookie is neither stored nor sent to any worker
    on later calls. It also skips httpx's per-response cookie parsing (urllib request/response shims, ~5 %
    of the interface's CPU per proxied call under load)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, _: Any) -> None:
        raise TypeError("the internal client keeps no cookies")


def make_async_client(limits: ClientLimits | None = None) -> httpx.AsyncClient:
    limits = limits or ClientLimits()
    return _InternalAsyncClient(
        timeout=httpx.Timeout(limits.default_timeout_s, connect=limits.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive,
            keepalive_expiry=limits.keepalive_expiry_s,
        ),
        # Plain HTTP/1.1 to the workers on the pod network: one request per connection at a time, no h2
        # negotiation, no h2 framing cost; concurrency comes from the pool.
        http1=True,
        http2=False,
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


class WorkerLost(RetryableUpstreamError):
    """The worker went away while this call was in flight: its connection broke, or it stopped answering
    health probes and the call was abandoned.

    It may have started work; it is re-sent once anyway because every call the interface makes is safe to
    repeat (image generations carry a fixed seed, analysis and text calls have no side effects).
    """


class UpstreamBusy(Overloaded):
    """The worker answered 429: it is healthy but full. Not a failure; try another worker, else pass it on."""


def map_transport_error(exc: httpx.HTTPError, stage: str) -> ImgPodError:
    """Map one httpx exception to a domain error. The only place that knows httpx's hierarchy."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.PoolTimeout):
        return RetryableUpstreamError(f"{stage}: worker unreachable", stage=stage)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{stage}: worker did not answer in time", stage=stage)
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        # The connection broke mid-call: the worker died or restarted (or a pooled keep-alive connection
        # to it was stale). Nothing will come back on it; the call is safe to send once more elsewhere.
        return WorkerLost(f"{stage}: worker connection lost", stage=stage)
    return UpstreamFailed(f"{stage}: transport error", stage=stage)


_CLIENT_FAULTS: dict[int, type[ImgPodError]] = {
    400: BadRequest,
    413: PayloadTooLarge,
    415: UnsupportedMedia,
}


def map_status(response: httpx.Response, stage: str) -> ImgPodError | None:
    """Turn a worker's error answer into the right domain error; None when the answer is a success."""
    status = response.status_code
    if status < 400:
        return None
    detail = _detail_of(response)
    if status == 429:
        return UpstreamBusy(
            f"{stage}: every worker is busy; retry later", retry_after_s=retry_after_of(response), stage=stage
        )
    if status == 503:
        return RetryableUpstreamError(f"{stage}: worker not ready ({detail})", stage=stage)
    if status == 422:
        body = _json_or_none(response) or {}
        if body.get("code") == "policy_blocked":
            return PolicyBlocked(detail, stage=stage)
        return ValidationFailed(f"{stage}: {detail}", stage=stage)
    if status == 504:
        return UpstreamTimeout(f"{stage}: {detail}", stage=stage)
    if status in _CLIENT_FAULTS:
        # The worker judged what the client sent (an upload is forwarded as received): same status, and the
        # same answer from any other worker, so it is neither retried nor counted against this one.
        return _CLIENT_FAULTS[status](f"{stage}: {detail}", stage=stage)
    return UpstreamFailed(f"{stage}: worker answered {status} ({detail})", stage=stage)


def retry_after_of(response: httpx.Response) -> float:
    """An upstream 429's Retry-After in seconds, at least 1; 1 when it is absent or not a number."""
    try:
        return max(1.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


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
