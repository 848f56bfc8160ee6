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

Weights: an item may stand for several units of work (a request for n images is one worker call that fills
n of a batch): depth, capacity, in-flight count and the wait estimate all count units, so a request for four
images takes four places in the queue's bounds, never one. An item heavier than the whole capacity is still
admitted into an empty queue (it could never be otherwise); the route bounds weights far below capacities.

Fair share: items carry an owner (the API key's id; None for an open deployment, one owner). One owner may
hold at most ``max_share`` of the queue's places (capacity + consumers, its waiting and running units
together): past that it alone is refused (429, reason ``key_share``) and the rest stay free for the others.
Consumers take turns between owners rather than first come, first served: an owner with nothing waiting goes
first, owners with a backlog go round robin. So one key's backlog never stands in front of another key's
single request, which then waits only for a consumer to free up, and the wait estimate behind admission is
that of the new item's own place in the turns, not of the whole queue. With one owner it is the plain FIFO.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import OrderedDict, deque
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
    weight: int = 1
    # Whose item it is, for fair share (the API key's id); None: the one owner of an open deployment.
    owner: str | None = None
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
        max_share: float = 1.0,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.max_share = max_share
        self.sla_s = sla_s
        self.retry_after_cap_s = retry_after_cap_s
        self.metrics = metrics
        # Label children resolved once: .labels() takes a lock and a dict lookup on every call.
        self._m_depth = metrics.depth.labels(name)
        self._m_in_flight = metrics.in_flight.labels(name)
        self._m_admitted = metrics.admitted.labels(name)
        self._m_wait = metrics.wait.labels(name)
        # Waiting items per owner (FIFO each), and whose turn is next: owners whose lane was empty when their
        # item came (fresh, first come first served), then the owners with a backlog in rotation. Every owner
        # with a lane is in exactly one of the two. The semaphore counts the items in all lanes.
        self._lanes: dict[str | None, deque[QueueItem]] = {}
        self._fresh: OrderedDict[str | None, None] = OrderedDict()
        self._turns: OrderedDict[str | None, None] = OrderedDict()
        self._ready = asyncio.Semaphore(0)
        # Units per owner, waiting and still wanted / running; owners at 0 are dropped.
        self._waiting_by: dict[str | None, int] = {}
        self._running_by: dict[str | None, int] = {}
        self._consumers: list[asyncio.Task[None]] = []
        self._target_consumers = 0
        self._empty_pool: str | None = None
        self._in_flight = 0
        # Items waiting and still wanted. A cancelled item stays in its lane until a consumer skips it, but
        # it must stop counting against capacity and the wait estimate at once.
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

    @property
    def share_limit(self) -> int:
        """Units one owner may hold, waiting and running: its share of every place, never less than one."""
        return max(1, math.floor(self.max_share * (self.capacity + self._target_consumers)))

    def held_by(self, owner: str | None) -> int:
        return self._waiting_by.get(owner, 0) + self._running_by.get(owner, 0)

    def _ahead_of(self, owner: str | None) -> int:
        """Units a new item of ``owner`` would wait behind, given the turns (see the module docstring).

        Besides the running overflow: a fresh owner waits for the other fresh owners' first items only; one
        with a backlog for its own waiting units, and per other owner as many as it has or one more than its
        own, whichever is less. With one owner this is the whole depth, as in a FIFO.
        """
        running = max(0, self._in_flight - self._target_consumers + 1)
        if owner not in self._lanes:
            return running + len(self._fresh)
        mine = self._waiting_by.get(owner, 0)
        others = sum(min(units, mine + 1) for o, units in self._waiting_by.items() if o != owner)
        return running + mine + others

    def report_shared(self, waiting: int, running: int) -> None:
        """Set the depth and in-flight gauges from a queue kept elsewhere (the jobs' Redis streams, shared by
        every replica), so autoscaling and alerts read the backlog whichever replica they scrape."""
        self._m_depth.set(waiting)
        self._m_in_flight.set(running)

    def observe_shared_wait(self, seconds: float) -> None:
        self._m_wait.observe(max(0.0, seconds))

    def check_admission(self, weight: int = 1, owner: str | None = None) -> None:
        """Raise what ``submit`` would raise for load right now; cheap, so callers can refuse before
        spending CPU or memory (decoding an upload) on a request that would be refused anyway."""
        if self._target_consumers <= 0:
            self.metrics.rejected.labels(self.name, "no_worker").inc()
            if self._empty_pool:
                raise NoHealthyWorker(
                    f"{self.name}: no healthy worker in the {self._empty_pool} pool", stage=self._empty_pool
                )
            raise NoHealthyWorker(f"{self.name}: no healthy worker", stage=self.name)
        if owner is not None and self.max_share < 1.0:
            held = self.held_by(owner)
            # An owner holding nothing is always let in, however heavy its item: else it could never be.
            if held and held + weight > self.share_limit:
                # One of its own items finishing makes room for it again: about a service time away.
                raise self._refuse("key_share", self.mean_service_s)
        if self.depth + weight > max(self.capacity, weight):
            raise self._refuse("full", self.estimated_wait_s())
        if self.depth == 0 and self._in_flight + weight <= self._target_consumers:
            # A consumer is free: nothing would wait, so refusing would not make anyone faster, and the
            # estimate could never learn again if every request were refused.
            return
        wait = self.estimated_wait_s(self._ahead_of(owner))
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
        for lane in self._lanes.values():
            for item in lane:
                if not item.future.done():
                    item.future.cancel()
        self._lanes.clear()
        self._fresh.clear()
        self._turns.clear()
        self._waiting_by.clear()
        self._ready = asyncio.Semaphore(0)

    def _refuse(self, reason: str, wait_s: float) -> Overloaded:
        self.metrics.rejected.labels(self.name, reason).inc()
        retry = (
            min(max(wait_s, 1.0), self.retry_after_cap_s) if math.isfinite(wait_s) else self.retry_after_cap_s
        )
        public_reason, what = _REFUSALS[reason]
        return Overloaded(
            f"{self.name} queue {what}; retry later", retry_after_s=retry, stage="queue", reason=public_reason
        )

    def enqueue(
        self, work: Work, weight: int = 1, owner: str | None = None, *, admit: bool = True
    ) -> QueueItem:
        """Admit (unless ``admit`` is off: a job admitted before a restart) and queue at once, in one step of
        the event loop, so two callers can never both pass admission for the last place."""
        if admit:
            self.check_admission(weight, owner)
        item = QueueItem(work, asyncio.get_running_loop().create_future(), weight=weight, owner=owner)
        lane = self._lanes.get(owner)
        if lane is None:
            self._lanes[owner] = deque((item,))
            self._fresh[owner] = None
        else:
            lane.append(item)
        self._ready.release()
        self._waiting += weight
        _add(self._waiting_by, owner, weight)
        self._m_admitted.inc()
        self._m_depth.set(self.depth)
        return item

    def withdraw(self, item: QueueItem) -> None:
        """Give up an item: a waiting one stops counting at once, a running one has its work cancelled."""
        if item.task is None and not item.future.done():
            self._waiting -= item.weight
            _add(self._waiting_by, item.owner, -item.weight)
            self._m_depth.set(self.depth)
        item.future.cancel()
        if item.task is not None:
            item.task.cancel()

    async def submit(self, work: Work, weight: int = 1, owner: str | None = None) -> Any:
        """Admit or refuse at once; then wait for the result. Cancelling the caller cancels the work."""
        item = self.enqueue(work, weight, owner)
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The client went away: drop queued work, stop in-flight work rather than wait for it.
            self.withdraw(item)
            raise

    async def _consume(self, index: int) -> None:
        while True:
            if index >= self._target_consumers:
                return
            await self._ready.acquire()
            item = self._next_item()
            if item.future.done():
                continue
            self._waiting -= item.weight
            _add(self._waiting_by, item.owner, -item.weight)
            self._m_depth.set(self.depth)
            self._m_wait.observe(time.monotonic() - item.enqueued)
            self._in_flight += item.weight
            _add(self._running_by, item.owner, item.weight)
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
                self._in_flight -= item.weight
                _add(self._running_by, item.owner, -item.weight)
                self._m_in_flight.set(self._in_flight)

    def _next_item(self) -> QueueItem:
        """The item whose turn it is: a fresh owner's first, else the next owner's in rotation."""
        if self._fresh:
            owner, _ = self._fresh.popitem(last=False)
        else:
            owner, _ = self._turns.popitem(last=False)
        lane = self._lanes[owner]
        item = lane.popleft()
        if lane:
            self._turns[owner] = None
        else:
            del self._lanes[owner]
        return item

    def observe_service(self, seconds: float) -> None:
        """Learn from one item that succeeded (see the module docstring for why only those).

        Exponentially weighted mean and variance (the incremental form), so the tail estimate follows the
        recent spread: service times that vary (calls waiting for a shared LLM) get a wider margin.
        """
        diff = seconds - self.mean_service_s
        step = self._alpha * diff
        self.mean_service_s += step
        self._service_var_s2 = (1 - self._alpha) * (self._service_var_s2 + diff * step)


# Metric label (kept as it was before reasons were public) -> the body's ``reason`` and the message.
_REFUSALS = {
    "full": ("queue_full", "is full"),
    "sla": ("over_sla", "is too slow for its SLA"),
    "key_share": ("key_share", "holds as much work of this API key as one key may"),
}


def _add(units: dict[str | None, int], owner: str | None, delta: int) -> None:
    left = units.get(owner, 0) + delta
    if left:
        units[owner] = left
    else:
        units.pop(owner, None)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task and task.cancelling())
