"""Health-aware round-robin pools of workers.

A worker is in rotation when its last ``/healthz`` probe answered 200 and it is not ejected. A worker that
fails ``eject_after`` calls in a row (unreachable, timeout, 5xx) is ejected for ``cooldown_s`` and then
probed again before it gets traffic. A call that failed before the worker could have done any work
(connection refused, 503 "not ready") is retried once on the next worker; one that may have done work
(timeout after sending, 500) is not repeated, because repeating a GPU call under trouble doubles the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import NoHealthyWorker, UpstreamFailed
from shared.http_client import RetryableUpstreamError, internal_headers, map_status, map_transport_error
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Worker:
    url: str
    healthy: bool = False
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    in_flight: int = 0
    # What the worker says it can run at once (image workers: devices x max batch, on /healthz).
    advertised: int | None = None

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
    ) -> None:
        self.name = name
        self.workers = [Worker(url) for url in dict.fromkeys(urls)]
        self.client = client
        self.token = token
        self.config = config
        self._next = 0
        self._poller: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._m = pool_metrics

    # --- rotation --------------------------------------------------------------------------------------

    @property
    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(w.available(now) for w in self.workers)

    @property
    def capacity(self) -> int:
        now = time.monotonic()
        bound = self.config.per_worker_concurrency
        return sum(min(w.advertised or bound, bound) for w in self.workers if w.available(now))

    def on_change(self, listener: Callable[[int], None]) -> None:
        """``listener(capacity)`` runs whenever the number of usable workers may have changed."""
        self._listeners.append(listener)
        listener(self.capacity)

    def _notify(self) -> None:
        self._m["healthy"].labels(self.name).set(self.healthy_count)
        for listener in self._listeners:
            listener(self.capacity)

    def pick(self, exclude: Worker | None = None) -> Worker:
        now = time.monotonic()
        n = len(self.workers)
        for offset in range(n):
            worker = self.workers[(self._next + offset) % n]
            if worker is not exclude and worker.available(now):
                self._next = (self._next + offset + 1) % n
                return worker
        raise NoHealthyWorker(f"{self.name}: no healthy worker", stage=self.name)

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
        """Call one worker; retry once on another worker only if the first cannot have done any work."""
        worker = self.pick()
        try:
            return await self._call(worker, method, path, stage, timeout_s, json, files, data)
        except RetryableUpstreamError as first_error:
            try:
                other = self.pick(exclude=worker)
            except NoHealthyWorker:
                raise NoHealthyWorker(first_error.detail, stage=stage) from first_error
            self._m["retries"].labels(self.name).inc()
            try:
                return await self._call(other, method, path, stage, timeout_s, json, files, data)
            except RetryableUpstreamError as second_error:
                raise NoHealthyWorker(second_error.detail, stage=stage) from second_error

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
        started = time.perf_counter()
        worker.in_flight += 1
        try:
            response = await self.client.request(
                method,
                worker.url + path,
                json=json,
                files=files,
                data=data,
                headers=internal_headers(self.token),
                timeout=httpx.Timeout(timeout_s, connect=min(3.0, timeout_s)),
            )
        except httpx.HTTPError as exc:
            error = map_transport_error(exc, stage)
            self._record_failure(worker)
            raise error from exc
        finally:
            worker.in_flight -= 1
            self._m["latency"].labels(stage).observe(time.perf_counter() - started)
        error = map_status(response, stage)
        if error is not None:
            if response.status_code >= 500:
                self._record_failure(worker)
            raise error
        try:
            body = response.json()
        except ValueError as exc:
            self._record_failure(worker)
            raise UpstreamFailed(f"{stage}: worker answered with invalid JSON", stage=stage) from exc
        worker.consecutive_failures = 0
        return body

    def _record_failure(self, worker: Worker) -> None:
        worker.consecutive_failures += 1
        if (
            worker.consecutive_failures >= self.config.eject_after
            and worker.ejected_until <= time.monotonic()
        ):
            worker.ejected_until = time.monotonic() + self.config.cooldown_s
            worker.healthy = False
            self._m["ejections"].labels(self.name).inc()
            log.warning("worker ejected", extra={"pool": self.name, "failures": worker.consecutive_failures})
            self._notify()

    # --- health polling --------------------------------------------------------------------------------

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(w) for w in self.workers))
        self._notify()

    async def _probe(self, worker: Worker) -> None:
        if time.monotonic() < worker.ejected_until:
            return
        try:
            resp = await self.client.get(
                worker.url + "/healthz", timeout=self.config.health_timeout_s, headers=internal_headers(None)
            )
            ok = resp.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            worker.advertised = _advertised_concurrency(resp)
        if ok and not worker.healthy:
            worker.consecutive_failures = 0
            log.info("worker healthy", extra={"pool": self.name})
        elif not ok and worker.healthy:
            log.warning("worker unhealthy", extra={"pool": self.name})
        worker.healthy = ok

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


def pool_metrics(metrics: ServiceMetrics) -> dict[str, Any]:
    return {
        "healthy": metrics.gauge("imgpod_pool_healthy_workers", "Workers in rotation", ("pool",)),
        "ejections": metrics.counter("imgpod_worker_ejections_total", "Workers ejected", ("pool",)),
        "retries": metrics.counter(
            "imgpod_worker_retries_total", "Calls retried on another worker", ("pool",)
        ),
        "latency": metrics.histogram("imgpod_stage_seconds", "Upstream call latency per stage", ("stage",)),
    }


def _advertised_concurrency(resp: httpx.Response) -> int | None:
    """Devices x max batch from an image worker's /healthz, so queues grow with what it can batch."""
    try:
        body = resp.json()
        concurrency, max_batch = int(body["concurrency"]), int(body.get("max_batch", 1))
    except (ValueError, KeyError, TypeError):
        return None
    return concurrency * max_batch if concurrency > 0 and max_batch > 0 else None
