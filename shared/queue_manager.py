"""Bounded per-endpoint queues with SLA-aware admission, see docs/ARCHITECTURE.md, "Admission model".

Why admission looks at the estimated wait and not only at free slots: a queue with room can still hold a
request for minutes when the workers are slow. We refuse at once (429 + Retry-After) when the wait
estimate (items ahead / consumers x recent mean service time) is past the endpoint's SLA, so clients back
off instead of timing out, and the queue never holds work nobody will wait for.

Consumers = healthy workers x per-worker concurrency, updated by the pools; with none, requests are refused
with 503 at once rather than parked.

What the estimate learns from: only work that reached a worker and succeeded. Validation and policy run
before a request is queued, and a fast failure (a blocked expansion, a dead worker) says nothing about how
long the next generation takes: learning from them once let 20 blocked prompts drop the estimate from 10 s
to 0.1 s, and the SLA check then admitted everything.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import NoHealthyWorker, Overloaded
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)
Work = Callable[[], Awaitable[Any]]


@dataclass(slots=True)
class QueueItem:
    work: Work
    future: asyncio.Future[Any]
    # The submitter's context (request id and the like): consumers are long-lived tasks whose own context
    # is the lifespan's, so the work must run in the context of the request it belongs to.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    enqueued: float = field(default_factory=time.monotonic)
    task: asyncio.Task[Any] | None = None


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    depth: Any
    in_flight: Any
    admitted: Any
    rejected: Any
    wait: Any

    @classmethod
    def create(cls, metrics: ServiceMetrics) -> QueueMetrics:
        return cls(
            depth=metrics.gauge("imgpod_queue_depth", "Items waiting in a queue", ("queue",)),
            in_flight=metrics.gauge("imgpod_queue_in_flight", "Items being served", ("queue",)),
            admitted=metrics.counter("imgpod_queue_admitted_total", "Requests admitted", ("queue",)),
            rejected=metrics.counter("imgpod_queue_rejected_total", "Requests refused", ("queue", "reason")),
            wait=metrics.histogram("imgpod_queue_wait_seconds", "Time spent queued", ("queue",)),
        )


class BoundedQueue:
    def __init__(
        self,
        name: str,
        *,
        capacity: int,
        sla_s: float,
        retry_after_cap_s: float,
        metrics: QueueMetrics,
        initial_service_s: float = 1.0,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.sla_s = sla_s
        self.retry_after_cap_s = retry_after_cap_s
        self.metrics = metrics
        # Label children resolved once: .labels() takes a lock and a dict lookup on every call.
        self._m_depth = metrics.depth.labels(name)
        self._m_in_flight = metrics.in_flight.labels(name)
        self._m_admitted = metrics.admitted.labels(name)
        self._m_wait = metrics.wait.labels(name)
        self._queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self._consumers: list[asyncio.Task[None]] = []
        self._target_consumers = 0
        self._empty_pool: str | None = None
        self._in_flight = 0
        # Items waiting and still wanted. A cancelled item stays inside the asyncio.Queue until a consumer
        # skips it, but it must stop counting against capacity and the wait estimate at once.
        self._waiting = 0
        # Exponentially weighted mean service time: recent calls matter most, one outlier does not dominate.
        self.mean_service_s = initial_service_s
        self._service_var_s2 = 0.0
        self._alpha = 0.2

    @property
    def depth(self) -> int:
        return self._waiting

    @property
    def consumers(self) -> int:
        return self._target_consumers

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def estimated_wait_s(self, ahead: int | None = None) -> float:
        """How long a new item would wait for a consumer: the items ahead of it, served in parallel.

        Ahead = the queued items plus the in-flight ones that occupy every consumer; an item queued behind
        them starts when enough of those have finished.
        """
        if self._target_consumers <= 0:
            return math.inf
        if ahead is None:
            ahead = self.depth + max(0, self._in_flight - self._target_consumers + 1)
        return ahead / self._target_consumers * self.mean_service_s

    def check_admission(self) -> None:
        """Raise what ``submit`` would raise for load right now; cheap, so callers can refuse before
        spending CPU or memory (decoding an upload) on a request that would be refused anyway."""
        if self._target_consumers <= 0:
            self.metrics.rejected.labels(self.name, "no_worker").inc()
            if self._empty_pool:
                raise NoHealthyWorker(
                    f"{self.name}: no healthy worker in the {self._empty_pool} pool", stage=self._empty_pool
                )
            raise NoHealthyWorker(f"{self.name}: no healthy worker", stage=self.name)
        if self.depth >= self.capacity:
            raise self._refuse("full", self.estimated_wait_s())
        if self.depth == 0 and self._in_flight < self._target_consumers:
            # A consumer is free: nothing would wait, so refusing would not make anyone faster, and the
            # estimate could never learn again if every request were refused.
            return
        wait = self.estimated_wait_s()
        # The SLA bounds what the client waits for the answer, at the tail: the queue wait plus a high
        # estimate of its own service (mean + 2 deviations), since the promise is about p99, not the mean.
        if wait + self.service_tail_s > self.sla_s:
            raise self._refuse("sla", wait)

    @property
    def service_tail_s(self) -> float:
        return self.mean_service_s + 2.0 * math.sqrt(self._service_var_s2)

    def set_consumers(self, count: int, *, empty_pool: str | None = None) -> None:
        """Grow or shrink the consumer tasks; a shrinking consumer finishes its current item first.

        ``empty_pool`` names the pool that has no worker when ``count`` is 0, so the 503 says which stage is
        down (the LLM for a chat flow) rather than only which queue refused.
        """
        self._target_consumers = max(0, count)
        self._empty_pool = empty_pool if self._target_consumers == 0 else None
        self._consumers = [t for t in self._consumers if not t.done()]
        while len(self._consumers) < self._target_consumers:
            index = len(self._consumers)
            self._consumers.append(
                asyncio.create_task(self._consume(index), name=f"queue-{self.name}-{index}")
            )

    async def close(self) -> None:
        self._target_consumers = 0
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers.clear()
        self._waiting = 0
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.cancel()

    def _refuse(self, reason: str, wait_s: float) -> Overloaded:
        self.metrics.rejected.labels(self.name, reason).inc()
        retry = (
            min(max(wait_s, 1.0), self.retry_after_cap_s) if math.isfinite(wait_s) else self.retry_after_cap_s
        )
        return Overloaded(
            f"{self.name} queue is {'full' if reason == 'full' else 'too slow for its SLA'}; retry later",
            retry_after_s=retry,
            stage="queue",
        )

    async def submit(self, work: Work) -> Any:
        """Admit or refuse at once; then wait for the result. Cancelling the caller cancels the work."""
        self.check_admission()
        item = QueueItem(work, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        self._waiting += 1
        self._m_admitted.inc()
        self._m_depth.set(self.depth)
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The client went away: drop queued work, stop in-flight work rather than wait for it.
            if item.task is None and not item.future.done():
                self._waiting -= 1
                self._m_depth.set(self.depth)
            item.future.cancel()
            if item.task is not None:
                item.task.cancel()
            raise

    async def _consume(self, index: int) -> None:
        while True:
            if index >= self._target_consumers:
                return
            item = await self._queue.get()
            if item.future.done():
                continue
            self._waiting -= 1
            self._m_depth.set(self.depth)
            self._m_wait.observe(time.monotonic() - item.enqueued)
            self._in_flight += 1
            self._m_in_flight.set(self._in_flight)
            started = time.monotonic()
            item.task = asyncio.get_running_loop().create_task(item.work(), context=item.context)
            try:
                result = await item.task
            except asyncio.CancelledError:
                if not item.future.done():
                    item.future.cancel()
                if item.task.cancelled() and not _current_task_cancelling():
                    continue
                raise
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
            else:
                if not item.future.done():
                    item.future.set_result(result)
                self.observe_service(time.monotonic() - started)
            finally:
                self._in_flight -= 1
                self._m_in_flight.set(self._in_flight)

    def observe_service(self, seconds: float) -> None:
        """Learn from one item that succeeded (see the module docstring for why only those).

        Exponentially weighted mean and variance (the incremental form), so the tail estimate follows the
        recent spread: service times that vary (calls waiting for a shared LLM) get a wider margin.
        """
        diff = seconds - self.mean_service_s
        step = self._alpha * diff
        self.mean_service_s += step
        self._service_var_s2 = (1 - self._alpha) * (self._service_var_s2 + diff * step)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task and task.cancelling())
