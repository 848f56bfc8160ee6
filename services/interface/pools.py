"""Health-aware pools of workers, with one concurrency budget per worker.

Routing: each call goes to the least-loaded worker in rotation (round-robin among ties), and never past the
worker's budget (what it advertises on ``/healthz``, bounded by a setting). The budget belongs to the
worker, not to a queue: the LLM pool feeds four queues, and all four together stay within it. A call that
finds every worker at its budget waits for a slot; the queues in front bound how many can wait.

Health: a worker is in rotation when its last ``/healthz`` probe answered 200 and it is not cooling down. A
worker that fails ``eject_after`` calls in a row (unreachable, timeout, 5xx), or that stops answering its
probe, leaves the rotation for ``cooldown_s`` and is probed again before it gets traffic.

Retries: a call that failed before the worker could have done any work (connection refused, 503 "not
ready") is retried once on another worker; so is a call the worker answered 429 (busy, not broken). A call
in flight to a worker that stops answering its probe is abandoned at once and re-sent once (every call is
safe to repeat: generations carry a fixed seed), instead of waiting for the generate timeout. A call that
may have done work and failed (timeout after sending, 500) is not repeated, because repeating a GPU call
under trouble doubles the load.

Why one module of about 400 lines: routing, calls and health probing all read and write the same per-worker
state (in flight, health, cool-down, abandoned calls); split apart, each half would reach into the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from shared.errors import NoHealthyWorker, UpstreamFailed
from shared.http_client import (
    RetryableUpstreamError,
    UpstreamBusy,
    WorkerLost,
    internal_headers,
    map_status,
    map_transport_error,
)
from shared.image_params import MAX_GUIDANCE
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)
ProbeOutcome = Literal["ok", "not_ready", "unreachable"]


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What an image worker accepts (from its /healthz), so the interface refuses more before queueing."""

    max_side: int
    max_pixels: int
    max_steps: int
    max_guidance: float
    # Images per request (all of them in one of the worker's batches).
    max_n: int


@dataclass(slots=True, eq=False)
class Worker:
    url: str
    healthy: bool = False
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    in_flight: int = 0
    # What the worker says it can run at once (image workers: devices x max batch, on /healthz).
    advertised: int | None = None
    limits: WorkerLimits | None = None
    calls: set[asyncio.Task[httpx.Response]] = field(default_factory=set)
    # Calls abandoned because the worker stopped answering: they end as WorkerLost, not as cancellation.
    abandoned: set[asyncio.Task[httpx.Response]] = field(default_factory=set)
    # Every pool that routes to this worker (the general pool shares workers with the role pools).
    pools: list[WorkerPool] = field(default_factory=list)

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


@dataclass(frozen=True, slots=True)
class PoolConfig:
    # Calls in flight per worker: the worker's advertised concurrency, never more than this bound.
    per_worker_concurrency: int = 1
    eject_after: int = 3
    cooldown_s: float = 10.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0


class WorkerPool:
    def __init__(
        self,
        name: str,
        urls: list[str],
        *,
        client: httpx.AsyncClient,
        token: str | None,
        config: PoolConfig,
        metrics: ServiceMetrics,
        pool_metrics: dict[str, Any],
        registry: dict[str, Worker] | None = None,
    ) -> None:
        """``registry`` (url -> Worker) is shared by every pool of one interface, so a worker listed in two
        pools has one budget, one in-flight count and one health state, not one per pool."""
        self.name = name
        registry = {} if registry is None else registry
        self.workers = [registry.setdefault(url, Worker(url)) for url in dict.fromkeys(urls)]
        for worker in self.workers:
            worker.pools.append(self)
        self.client = client
        self.token = token
        self.config = config
        self._next = 0
        self._poller: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._m = pool_metrics
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._waiting = 0

    # --- rotation --------------------------------------------------------------------------------------

    @property
    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(w.available(now) for w in self.workers)

    def budget(self, worker: Worker) -> int:
        bound = self.config.per_worker_concurrency
        return min(worker.advertised or bound, bound)

    @property
    def capacity(self) -> int:
        now = time.monotonic()
        return sum(self.budget(w) for w in self.workers if w.available(now))

    @property
    def limits(self) -> WorkerLimits | None:
        """The strictest limits among the workers that reported any (a request must fit every worker)."""
        known = [w.limits for w in self.workers if w.limits is not None]
        if not known:
            return None
        return WorkerLimits(
            max_side=min(k.max_side for k in known),
            max_pixels=min(k.max_pixels for k in known),
            max_steps=min(k.max_steps for k in known),
            max_guidance=min(k.max_guidance for k in known),
            max_n=min(k.max_n for k in known),
        )

    def on_change(self, listener: Callable[[int], None]) -> None:
        """``listener(capacity)`` runs whenever the number of usable workers may have changed."""
        self._listeners.append(listener)
        listener(self.capacity)

    def _notify(self) -> None:
        self._m["healthy"].labels(self.name).set(self.healthy_count)
        for listener in self._listeners:
            listener(self.capacity)
        # Waiters re-check: a worker may have come back (a slot) or gone (no worker at all: fail them fast).
        self._wake_all()

    def _least_loaded(self, exclude: Worker | None) -> Worker | None:
        """The available worker with the fewest calls in flight and a free slot; None when all are full.

        Raises NoHealthyWorker when no worker (other than ``exclude``) is in rotation at all.
        """
        now = time.monotonic()
        n = len(self.workers)
        best: Worker | None = None
        best_index = 0
        any_available = False
        for offset in range(n):
            index = (self._next + offset) % n
            worker = self.workers[index]
            if worker is exclude or not worker.available(now):
                continue
            any_available = True
            if worker.in_flight >= self.budget(worker):
                continue
            if best is None or worker.in_flight < best.in_flight:
                best, best_index = worker, index
        if not any_available:
            raise NoHealthyWorker(f"{self.name}: no healthy worker", stage=self.name)
        if best is not None:
            self._next = (best_index + 1) % n
        return best

    async def _acquire(self, exclude: Worker | None = None) -> Worker:
        while True:
            worker = self._least_loaded(exclude)
            if worker is not None:
                worker.in_flight += 1
                return worker
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            self._waiting += 1
            self._m["waiting"].labels(self.name).set(self._waiting)
            try:
                await waiter
            finally:
                self._waiting -= 1
                self._m["waiting"].labels(self.name).set(self._waiting)
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)

    def _release(self, worker: Worker) -> None:
        worker.in_flight -= 1
        # Waiters of every pool that uses this worker re-check; few wait (the queues bound them), and a
        # single wake-up could go to a waiter whose pool cannot use the freed slot.
        for pool in worker.pools:
            pool._wake_all()

    def _wake_all(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # --- calls -----------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        stage: str,
        timeout_s: float,
        json: Any = None,
        files: Any = None,
        data: Any = None,
    ) -> dict[str, Any]:
        """Call one worker; retry once on another worker when the first did no work, was busy, or was lost."""
        worker = await self._acquire()
        try:
            return await self._call(worker, method, path, stage, timeout_s, json, files, data)
        except (RetryableUpstreamError, UpstreamBusy) as exc:
            first_error: Exception = exc
        try:
            other = await self._acquire(exclude=worker)
        except NoHealthyWorker:
            raise _final(first_error, stage) from first_error
        self._m["retries"].labels(self.name).inc()
        try:
            return await self._call(other, method, path, stage, timeout_s, json, files, data)
        except (RetryableUpstreamError, UpstreamBusy) as second_error:
            raise _final(second_error, stage) from second_error

    async def _call(
        self,
        worker: Worker,
        method: str,
        path: str,
        stage: str,
        timeout_s: float,
        json: Any,
        files: Any,
        data: Any,
    ) -> dict[str, Any]:
        """One call on a worker whose slot the caller acquired; the slot is released here, exactly once.

        When the caller goes away (the client disconnected), the HTTP call is not cut: the worker computes
        the answer anyway, so the call finishes in the background and keeps its slot until then. Cutting it
        would free the slot while the worker is still busy, and the budget would no longer be true (a
        soak run saw an LLM with a budget of 4 holding 27 requests).
        """
        started = time.perf_counter()
        in_background = False
        call = asyncio.ensure_future(
            self.client.request(
                method,
                worker.url + path,
                json=json,
                files=files,
                data=data,
                headers=internal_headers(self.token),
                timeout=_timeout(timeout_s),
            )
        )
        worker.calls.add(call)
        try:
            response = await asyncio.shield(call)
        except asyncio.CancelledError:
            if call in worker.abandoned:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                raise WorkerLost(f"{stage}: worker stopped answering", stage=stage) from None
            in_background = True
            call.add_done_callback(lambda done: self._finished_in_background(worker, done))
            raise
        except httpx.HTTPError as exc:
            error = map_transport_error(exc, stage)
            self._record_failure(worker)
            raise error from exc
        finally:
            if not in_background:
                worker.calls.discard(call)
                worker.abandoned.discard(call)
                self._release(worker)
            self._latency(stage).observe(time.perf_counter() - started)
        error = map_status(response, stage)
        if error is not None:
            if response.status_code >= 500 and response.status_code != 503:
                self._record_failure(worker)
            raise error
        try:
            body = response.json()
        except ValueError as exc:
            self._record_failure(worker)
            raise UpstreamFailed(f"{stage}: worker answered with invalid JSON", stage=stage) from exc
        worker.consecutive_failures = 0
        return body

    def _finished_in_background(self, worker: Worker, call: asyncio.Task[httpx.Response]) -> None:
        worker.calls.discard(call)
        worker.abandoned.discard(call)
        self._release(worker)
        if not call.cancelled() and call.exception() is not None:
            log.debug("background call ended in error", exc_info=call.exception())

    @functools.cache  # noqa: B019 - one entry per stage name, pools live as long as the app
    def _latency(self, stage: str) -> Any:
        return self._m["latency"].labels(stage)

    def _take_out(self, worker: Worker, *, abandon_calls: bool) -> None:
        """Out of rotation for the cool-down; its calls in flight are re-sent elsewhere when it is gone."""
        worker.ejected_until = time.monotonic() + self.config.cooldown_s
        worker.healthy = False
        if abandon_calls:
            for call in list(worker.calls):
                worker.abandoned.add(call)
                call.cancel()
        for pool in worker.pools:
            pool._notify()

    def _record_failure(self, worker: Worker) -> None:
        worker.consecutive_failures += 1
        if (
            worker.consecutive_failures >= self.config.eject_after
            and worker.ejected_until <= time.monotonic()
        ):
            self._m["ejections"].labels(self.name).inc()
            log.warning("worker ejected", extra={"pool": self.name, "failures": worker.consecutive_failures})
            self._take_out(worker, abandon_calls=True)

    # --- health polling --------------------------------------------------------------------------------

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(w) for w in self.workers))
        self._notify()

    async def _probe(self, worker: Worker) -> None:
        if time.monotonic() < worker.ejected_until:
            return
        outcome: ProbeOutcome = "unreachable"
        try:
            resp = await self.client.get(
                worker.url + "/healthz", timeout=self.config.health_timeout_s, headers=internal_headers(None)
            )
            outcome = "ok" if resp.status_code == 200 else "not_ready"
        except httpx.HTTPError:
            pass
        if outcome == "ok":
            worker.advertised = _advertised_concurrency(resp)
            worker.limits = _advertised_limits(resp)
            if not worker.healthy:
                worker.consecutive_failures = 0
                log.info("worker healthy", extra={"pool": self.name})
            worker.healthy = True
        elif worker.healthy:
            # A worker that answers "not ready" (draining, reloading) finishes what it holds; one that does
            # not answer at all holds nothing it will ever return in time, so its calls go elsewhere now.
            log.warning("worker unhealthy", extra={"pool": self.name, "probe": outcome})
            self._take_out(worker, abandon_calls=outcome == "unreachable")
        else:
            worker.healthy = False

    def start_polling(self) -> None:
        if self.workers:
            self._poller = asyncio.create_task(self._poll_forever(), name=f"pool-{self.name}-health")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.probe_all()
            except Exception:
                log.exception("health poll failed", extra={"pool": self.name})

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._wake_all()


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(3.0, seconds))


def _final(error: Exception, stage: str) -> Exception:
    """What the client sees when the retry did not help: busy stays 429, anything else is 503."""
    if isinstance(error, UpstreamBusy):
        return error
    detail = getattr(error, "detail", f"{stage}: no worker could take the call")
    return NoHealthyWorker(detail, stage=stage)


def pool_metrics(metrics: ServiceMetrics) -> dict[str, Any]:
    return {
        "healthy": metrics.gauge("imgpod_pool_healthy_workers", "Workers in rotation", ("pool",)),
        "ejections": metrics.counter("imgpod_worker_ejections_total", "Workers ejected", ("pool",)),
        "retries": metrics.counter(
            "imgpod_worker_retries_total", "Calls retried on another worker", ("pool",)
        ),
        "latency": metrics.histogram("imgpod_stage_seconds", "Upstream call latency per stage", ("stage",)),
        "waiting": metrics.gauge(
            "imgpod_pool_waiting_calls", "Calls waiting for a worker slot (every worker at budget)", ("pool",)
        ),
    }


def _advertised_limits(resp: httpx.Response) -> WorkerLimits | None:
    try:
        limits = resp.json()["limits"]
        return WorkerLimits(
            int(limits["max_side"]),
            int(limits["max_pixels"]),
            int(limits["max_steps"]),
            # A worker from before these were advertised: any guidance its schema took, one image per call.
            float(limits.get("max_guidance", MAX_GUIDANCE)),
            int(limits.get("max_n", 1)),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _advertised_concurrency(resp: httpx.Response) -> int | None:
    """Devices x max batch from an image worker's /healthz, so queues grow with what it can batch."""
    try:
        body = resp.json()
        concurrency, max_batch = int(body["concurrency"]), int(body.get("max_batch", 1))
    except (ValueError, KeyError, TypeError):
        return None
    return concurrency * max_batch if concurrency > 0 and max_batch > 0 else None
