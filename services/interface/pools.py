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

Membership: a pool's URL list may name workers by DNS (``dns://host:port``, services/interface/discovery.py),
looked up again every ``dns_refresh_s``. A worker that appears joins once its own probe says ready; one that
disappears leaves at once: no new call goes to it, and its calls in flight finish (``refresh_members``).

Progress: a call made with ``on_progress`` reads the worker's progress stream (shared/progress_stream.py)
under the same rules (slot, retries, health, abandonment, timeout), and is the one kind of call that a
departing caller cuts: closing the stream is what stops the worker (``_streamed``).

Why one module of about 600 lines: routing, calls and health probing all read and write the same per-worker
state (in flight, health, cool-down, abandoned calls); split apart, each half would reach into the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from services.interface.discovery import DiscoveredSet, membership_change
from shared.errors import NoHealthyWorker, UpstreamFailed, UpstreamTimeout
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
from shared.offload import INLINE_BYTES, off_loop_if
from shared.progress_stream import MEDIA_TYPE as PROGRESS_MEDIA_TYPE
from shared.progress_stream import BadStreamLine, Final, Progress, parse_line

log = logging.getLogger(__name__)
ProbeOutcome = Literal["ok", "not_ready", "unreachable"]
# Called with (step, total) for each progress line of a streamed call, on the event loop: it must be quick.
OnProgress = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """What an image worker accepts (from its /healthz), so the interface refuses more before queueing."""

    max_side: int
    max_pixels: int
    max_steps: int
    max_guidance: float
    # Images per request (all of them in one of the worker's batches).
    max_n: int
    # Image-to-image strength a request may ask for (a worker from before image-to-image: none).
    min_strength: float = 1.0
    max_strength: float = 0.0


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
    calls: set[asyncio.Task[Any]] = field(default_factory=set)
    # Calls abandoned because the worker stopped answering: they end as WorkerLost, not as cancellation.
    abandoned: set[asyncio.Task[Any]] = field(default_factory=set)
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
    # How often the pool's DNS entries are looked up again (a pool without any never looks up).
    dns_refresh_s: float = 5.0


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
        discovered: DiscoveredSet | None = None,
    ) -> None:
        """``registry`` (url -> Worker) is shared by every pool of one interface, so a worker listed in two
        pools has one budget, one in-flight count and one health state, not one per pool.

        ``urls`` are the static workers; ``discovered`` the pool's DNS entries, whose workers join and leave
        at each ``refresh_members``."""
        self.name = name
        registry = {} if registry is None else registry
        self._registry = registry
        self._static = list(dict.fromkeys(urls))
        self._discovered = discovered
        self._resolved_once = False
        self._discoverer: asyncio.Task[None] | None = None
        self.workers = [registry.setdefault(url, Worker(url)) for url in self._static]
        if discovered is not None:
            # Exported from the start (at 0), so dashboards and alerts find the series before any change.
            pool_metrics["dns_failures"].labels(name)
            for change in ("joined", "left"):
                pool_metrics["members"].labels(name, change)
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
    def deployed(self) -> bool:
        """Workers are configured: static ones, or a DNS name (whose pods may be none right now)."""
        return bool(self._static) or self._discovered is not None

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
            min_strength=max(k.min_strength for k in known),
            max_strength=min(k.max_strength for k in known),
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
        if not worker.pools and worker.in_flight == 0:
            # The last call of a worker that left every pool: nothing refers to it any more.
            self._forget(worker)
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
        on_progress: OnProgress | None = None,
    ) -> dict[str, Any]:
        """Call one worker; retry once on another worker when the first did no work, was busy, or was lost.

        With ``on_progress`` the worker is asked for its progress stream (shared/progress_stream.py) and
        ``on_progress(progress)`` runs for each step (and partial image) as it arrives; see ``_streamed``.
        A call retried on another worker reports that worker's steps from 1 again.
        """

        def attempt(worker: Worker) -> Awaitable[dict[str, Any]]:
            if on_progress is None:
                return self._call(worker, method, path, stage, timeout_s, json, files, data)
            return self._streamed(worker, method, path, stage, timeout_s, json, files, data, on_progress)

        worker = await self._acquire()
        try:
            return await attempt(worker)
        except (RetryableUpstreamError, UpstreamBusy) as exc:
            first_error: Exception = exc
        try:
            other = await self._acquire(exclude=worker)
        except NoHealthyWorker:
            raise _final(first_error, stage) from first_error
        self._m["retries"].labels(self.name).inc()
        try:
            return await attempt(other)
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
        soak run saw an LLM with a budget of 4 holding 27 requests). A streamed call is cut instead, because
        there the close itself stops the worker (``_streamed``).
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
        return await self._plain_answer(worker, response, stage)

    async def _streamed(
        self,
        worker: Worker,
        method: str,
        path: str,
        stage: str,
        timeout_s: float,
        json: Any,
        files: Any,
        data: Any,
        on_progress: OnProgress,
    ) -> dict[str, Any]:
        """``_call`` with the worker's progress stream; the slot is released here, exactly once.

        Unlike a plain call, a streamed call IS cut when its caller goes away: closing the stream is how the
        worker learns to stop (it frees its slot at the pipeline's next step), so there is no answer left
        to wait for. The slot is released once the close has completed, and the cancelled caller resumes
        only then, so the budget stays true within one step. ``timeout_s`` bounds the whole call, not each
        read: a worker that keeps sending steps cannot hold the slot past it.

        A worker that answers plain JSON (one from before the stream, or an error found before it started)
        is handled exactly as ``_call`` handles it. A stream that ends without its final line, or breaks the
        protocol, is an ``UpstreamFailed`` and counts as a failure of the worker, as invalid JSON does.
        """
        started = time.perf_counter()
        headers = {**internal_headers(self.token), "Accept": PROGRESS_MEDIA_TYPE}
        request = self.client.build_request(
            method,
            worker.url + path,
            json=json,
            files=files,
            data=data,
            headers=headers,
            timeout=_timeout(timeout_s),
        )
        # A task of its own, so that a probe that finds the worker gone can abandon it as it does plain calls.
        call = asyncio.ensure_future(self._read_stream(request, timeout_s, on_progress))
        worker.calls.add(call)
        try:
            # Not shielded: cancelling this caller cancels the read, which closes the stream.
            answer = await call
        except asyncio.CancelledError:
            if call in worker.abandoned:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                raise WorkerLost(f"{stage}: worker stopped answering", stage=stage) from None
            raise
        except httpx.HTTPError as exc:
            error = map_transport_error(exc, stage)
            self._record_failure(worker)
            raise error from exc
        except TimeoutError as exc:
            self._record_failure(worker)
            raise UpstreamTimeout(f"{stage}: worker did not answer in time", stage=stage) from exc
        except _BrokenStream as exc:
            self._record_failure(worker)
            raise UpstreamFailed(f"{stage}: worker's progress stream {exc.what}", stage=stage) from exc
        finally:
            worker.calls.discard(call)
            worker.abandoned.discard(call)
            self._release(worker)
            self._latency(stage).observe(time.perf_counter() - started)
        if isinstance(answer, httpx.Response):
            return await self._plain_answer(worker, answer, stage)
        if answer.status >= 400:
            # The error the plain call would have answered, through the same mapping.
            self._raise_for_status(
                worker, httpx.Response(answer.status, json=answer.body, headers=answer.headers), stage
            )
        worker.consecutive_failures = 0
        return answer.body

    async def _read_stream(
        self, request: httpx.Request, timeout_s: float, on_progress: OnProgress
    ) -> httpx.Response | Final:
        """The worker's final line, or its whole plain answer when it did not stream; the stream is closed
        before this returns, whichever way it ends (a result, an error, a timeout, a cancel)."""
        async with asyncio.timeout(timeout_s):
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code != 200 or _media_type(response) != PROGRESS_MEDIA_TYPE:
                    await response.aread()
                    return response
                final: Final | None = None
                async with contextlib.aclosing(_ndjson_lines(response)) as lines:
                    async for line in lines:
                        if final is not None:
                            raise _BrokenStream("went on after its final line")
                        try:
                            # The final line carries the images (megabytes); steps are a few bytes.
                            item = await off_loop_if(len(line) > INLINE_BYTES, parse_line, line)
                        except BadStreamLine as exc:
                            raise _BrokenStream("sent a line outside the protocol") from exc
                        if isinstance(item, Progress):
                            on_progress(item)
                        else:
                            # Read on to the end (the worker ends the stream right after this line), so the
                            # connection goes back to the keep-alive pool instead of being closed.
                            final = item
                if final is None:
                    raise _BrokenStream("ended without a final line")
                return final
            finally:
                await response.aclose()

    async def _plain_answer(self, worker: Worker, response: httpx.Response, stage: str) -> dict[str, Any]:
        self._raise_for_status(worker, response, stage)
        try:
            # An image worker's answer is megabytes of base64: about 1.6 ms per 2 MB to parse.
            body = await off_loop_if(len(response.content) > INLINE_BYTES, response.json)
        except ValueError as exc:
            self._record_failure(worker)
            raise UpstreamFailed(f"{stage}: worker answered with invalid JSON", stage=stage) from exc
        worker.consecutive_failures = 0
        return body

    def _raise_for_status(self, worker: Worker, response: httpx.Response, stage: str) -> None:
        error = map_status(response, stage)
        if error is not None:
            if response.status_code >= 500 and response.status_code != 503:
                self._record_failure(worker)
            raise error

    def _finished_in_background(self, worker: Worker, call: asyncio.Task[Any]) -> None:
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
        if self._discovered is not None and not self._resolved_once:
            # The first probe (before the interface serves) sees the workers the DNS names stand for.
            await self.refresh_members()
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
        if self.workers or self._discovered is not None:
            self._poller = asyncio.create_task(self._poll_forever(), name=f"pool-{self.name}-health")
        if self._discovered is not None:
            self._discoverer = asyncio.create_task(self._discover_forever(), name=f"pool-{self.name}-dns")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await self.probe_all()
            except Exception:
                log.exception("health poll failed", extra={"pool": self.name})

    async def close(self) -> None:
        for task in (self._poller, self._discoverer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._wake_all()

    # --- membership (DNS) ------------------------------------------------------------------------------

    async def _discover_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.dns_refresh_s)
            try:
                await self.refresh_members()
            except Exception:
                log.exception("worker discovery failed", extra={"pool": self.name})

    async def refresh_members(self) -> None:
        """Look the DNS entries up again; new workers join after a good probe, gone ones leave (draining)."""
        if self._discovered is None:
            return
        urls, failed = await self._discovered.refresh()
        self._resolved_once = True
        if failed:
            # The last known workers stay: a failed lookup says nothing about the pods.
            self._m["dns_failures"].labels(self.name).inc(len(failed))
            names = ", ".join(t.entry for t in failed)
            log.warning(
                "worker lookup failed, keeping the last known workers: %s", names, extra={"pool": self.name}
            )
        joined, left = membership_change((w.url for w in self.workers), [*self._static, *urls])
        if not joined and not left:
            return
        for url in left:
            self._leave(url)
        newcomers = [self._join(url) for url in joined]
        self._m["members"].labels(self.name, "joined").inc(len(joined))
        self._m["members"].labels(self.name, "left").inc(len(left))
        log.info("pool members changed", extra={"pool": self.name, "joined": len(joined), "left": len(left)})
        # Gone workers are out of rotation now: listeners and waiters see it before the newcomers' probes.
        self._notify()
        if newcomers:
            await asyncio.gather(*(self._probe(w) for w in newcomers))
            for worker in newcomers:
                for pool in worker.pools:
                    pool._notify()

    def _join(self, url: str) -> Worker:
        worker = self._registry.get(url)
        if worker is None or not worker.pools:
            # New, or an address that left every pool and came back (its calls may still be finishing: the
            # in-flight count stays true): in rotation only after a good probe, like a worker at start.
            worker = self._registry.setdefault(url, Worker(url))
            worker.healthy = False
            worker.ejected_until = 0.0
            worker.consecutive_failures = 0
        self.workers.append(worker)
        worker.pools.append(self)
        return worker

    def _leave(self, url: str) -> None:
        """Out of this pool: no new call goes to it; the calls it holds finish and release their slots."""
        worker = next(w for w in self.workers if w.url == url)
        self.workers.remove(worker)
        worker.pools.remove(self)
        if not worker.pools and worker.in_flight == 0:
            self._forget(worker)

    def _forget(self, worker: Worker) -> None:
        if self._registry.get(worker.url) is worker:
            del self._registry[worker.url]


class _BrokenStream(Exception):
    """The worker's progress stream broke the protocol; ``what`` says how, for the error's detail."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").partition(";")[0].strip().lower()


async def _ndjson_lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's non-blank lines, each as soon as its newline arrives.

    Split on b"\\n" only: httpx's ``aiter_lines`` also splits on U+2028 and other separators that JSON allows
    unescaped inside a string. The scan starts at the new chunk, so a result line of megabytes arriving in
    many chunks is scanned once, not once per chunk.
    """
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        scan_from = len(buffer)
        buffer += chunk
        while (end := buffer.find(b"\n", scan_from)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            scan_from = 0
            if line and not line.isspace():
                yield line
    if buffer and not buffer.isspace():
        yield bytes(buffer)


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
        "dns_failures": metrics.counter(
            "imgpod_pool_dns_failures_total",
            "DNS lookups of a pool's workers that failed (the last known workers were kept)",
            ("pool",),
        ),
        "members": metrics.counter(
            "imgpod_pool_member_changes_total",
            "Workers found by DNS that joined or left a pool",
            ("pool", "change"),
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
            float(limits.get("min_strength", 1.0)),
            float(limits.get("max_strength", 0.0)),
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
