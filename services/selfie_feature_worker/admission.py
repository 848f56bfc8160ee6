"""Back-pressure for the selfie worker: a few analyses at once, a short wait list, and 429 beyond that.

Why: one analysis holds a decoded upload (a 40-megapixel RGB image is ~120 MB, plus the copies numpy and the
VLM processor make). Without a bound, a burst parks that many images in worker threads at once and the pod
runs out of memory. The check is made on the event loop before the upload is decoded, so a refusal costs
nothing but the bytes already received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from shared.errors import Overloaded

T = TypeVar("T")

# A guess for Retry-After until the first analysis has been timed; a 7B VLM answer takes seconds on a GPU.
INITIAL_MEAN_S = 3.0
MAX_RETRY_AFTER_S = 60.0
# Weight of the newest duration in the running mean: recent load matters, one outlier should not dominate.
EWMA_WEIGHT = 0.2


class Admission:
    """At most ``max_concurrent`` holders of a slot, at most ``queue_limit`` waiting, the rest refused."""

    def __init__(
        self,
        max_concurrent: int,
        queue_limit: int,
        *,
        stage: str = "analyze",
        on_refused: Callable[[], object] | None = None,
    ) -> None:
        if max_concurrent < 1 or queue_limit < 0:
            raise ValueError("max_concurrent must be >= 1 and queue_limit >= 0")
        self.max_concurrent = max_concurrent
        self.queue_limit = queue_limit
        self.stage = stage
        self.on_refused = on_refused
        self.running = 0
        self.waiting = 0
        self.mean_s = INITIAL_MEAN_S
        # Only ever awaited on the event loop; binds to the running loop on first contended acquire.
        self._slots = asyncio.Semaphore(max_concurrent)

    def retry_after_s(self) -> float:
        """When a retry has a fair chance: the wait list ahead drained at the observed pace."""
        rounds = (self.waiting + 1) / self.max_concurrent
        return min(MAX_RETRY_AFTER_S, max(1.0, rounds * self.mean_s))

    def _observe(self, seconds: float) -> None:
        self.mean_s += EWMA_WEIGHT * (seconds - self.mean_s)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block; raise ``Overloaded`` at once when the wait list is full."""
        # Counted synchronously before any await, so N concurrent arrivals see each other's reservation.
        if self.running + self.waiting >= self.max_concurrent + self.queue_limit:
            if self.on_refused is not None:
                self.on_refused()
            raise Overloaded(
                "the selfie worker is busy; retry later",
                retry_after_s=self.retry_after_s(),
                stage=self.stage,
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._observe(time.perf_counter() - started)


async def run_in_thread(fn: Callable[..., T], *args: object) -> T:
    """``asyncio.to_thread`` that, when the caller is cancelled, still waits for the thread to end.

    A thread cannot be interrupted: if the slot were released on cancellation, the abandoned thread would
    keep its decoded image while a new request decodes another, and the memory bound would not hold.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: nobody is left to see it, and asyncio would warn
        raise
