"""Queues per public endpoint, sized by the pools behind them; admission (the queue's verdict, then the key's
rate limits, services/interface/rate_limits.py) and the client-disconnect watcher."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request

from services.interface.pools import WorkerPool
from services.interface.rate_limits import IMAGE_QUEUES, RateLimiter
from services.interface.settings import ENDPOINTS, InterfaceSettings
from shared.errors import RateLimited
from shared.metrics import ServiceMetrics
from shared.queue_manager import BoundedQueue, QueueMetrics
from shared.service import KEY_ID, RESPONSE_HEADERS


class ClientGone(Exception):
    """The client disconnected while its request was queued or running."""


def build_queues(
    settings: InterfaceSettings, metrics: ServiceMetrics, pools_for: dict[str, list[WorkerPool]]
) -> dict[str, BoundedQueue]:
    queue_metrics = QueueMetrics.create(metrics)
    queues: dict[str, BoundedQueue] = {}
    # How many queues feed each pool: a pool shared by several queues (the LLM serves four) gives each its
    # share of the budget as consumers. With the whole budget each, a queue would count slots the others
    # hold as its own, admit on that, and its items would then wait inside for slots: the SLA estimate
    # would be blind to that wait (soak: LLM flows at 2x the SLA).
    users = Counter(id(pool) for endpoint in ENDPOINTS for pool in pools_for[endpoint])
    for endpoint in ENDPOINTS:
        limits = settings.queue_limits(endpoint)
        queue = BoundedQueue(
            endpoint,
            capacity=limits.capacity,
            sla_s=limits.sla_ms / 1000,
            retry_after_cap_s=settings.retry_after_cap_ms / 1000,
            metrics=queue_metrics,
            max_share=settings.effective_max_share(),
        )
        queues[endpoint] = queue
        pools = pools_for[endpoint]

        # A flow needs every pool it calls; the scarcest share bounds how many items can usefully run at once.
        def resize(_: int, queue: BoundedQueue = queue, pools: list[WorkerPool] = pools) -> None:
            empty = next((p.name for p in pools if p.capacity == 0), None)
            shares = [-(-p.capacity // users[id(p)]) for p in pools]
            queue.set_consumers(min(shares), empty_pool=empty)

        for pool in pools:
            pool.on_change(resize)
    return queues


def owner_of(request: Request) -> str | None:
    """The API key's id (shared/service.py), whose work an item is; None on an open deployment, where everyone
    is one owner."""
    state = request.scope.get("state")
    return state.get(KEY_ID) if state else None


async def wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def admit(
    request: Request,
    queue: BoundedQueue,
    owner: str | None,
    units: int,
    check: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Refuse before anything is queued: the queue's verdict for the whole request first (a request the queue
    refuses must not spend its key's quota), then the key's rate limits, whose fields go on the response.
    ``check``: the verdict of a dispatcher whose bounds are not this process's queue (Redis, shared)."""
    if check is None:
        queue.check_admission(units, owner)
    else:
        await check()
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or owner is None:
        return
    try:
        fields = await limiter.admit(owner, units if queue.name in IMAGE_QUEUES else 0)
    except RateLimited:
        queue.metrics.rejected.labels(queue.name, "rate_limited").inc()
        raise
    if fields:
        request.scope["state"][RESPONSE_HEADERS] = fields


async def run_admitted(
    request: Request, queue: BoundedQueue, work: Callable[[], Awaitable[Any]], weight: int = 1
) -> Any:
    """Submit to the queue and give up the item as soon as the client disconnects; ``weight``: the units
    of the queue's bounds the item takes (the images of a request for several)."""
    return (await run_admitted_all(request, queue, [work], weight=weight))[0]


async def run_admitted_all(
    request: Request, queue: BoundedQueue, works: Sequence[Callable[[], Awaitable[Any]]], weight: int = 1
) -> list[Any]:
    """Several items of one request, each admitted on its own; all are given up when one fails or the client
    disconnects (one answer carries them all, so a part of it is worth nothing)."""
    owner = owner_of(request)
    await admit(request, queue, owner, weight * len(works))
    submits = [asyncio.ensure_future(queue.submit(work, weight, owner)) for work in works]
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        pending: set[asyncio.Future[Any]] = set(submits)
        while pending and not gone.done():
            done, pending = await asyncio.wait({*pending, gone}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(gone)
            if any(not f.cancelled() and f.exception() is not None for f in done if f is not gone):
                break
    finally:
        gone.cancel()
    if all(f.done() for f in submits) and not any(f.cancelled() or f.exception() for f in submits):
        return [f.result() for f in submits]
    for f in submits:
        f.cancel()
    for f in submits:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await f
    failed = next((f for f in submits if not f.cancelled() and f.exception() is not None), None)
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]
    raise ClientGone()
