"""WorkerPool routing, budgets, retries and health on the real asyncio and httpx machinery.

A unit test of one layer: the workers are an ``httpx.MockTransport`` handler, so the pool's own decisions
(which worker, how many calls at once, what is retried) are observable call by call. The same behaviours are
tested over real HTTP against real workers in tests/integration/test_serving_core.py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from services.interface.pools import PoolConfig, Worker, WorkerPool, pool_metrics
from shared.errors import NoHealthyWorker, Overloaded
from shared.http_client import UpstreamBusy
from shared.metrics import ServiceMetrics
from shared.queue_manager import BoundedQueue, QueueMetrics
from tests.helpers.waiting import until

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Workers:
    """Request handler for a set of fake worker URLs that counts calls in flight per worker."""

    def __init__(self, urls: list[str], concurrency: int = 4) -> None:
        self.urls = urls
        self.concurrency = concurrency
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.release = asyncio.Event()
        self.health_status: dict[str, int] = dict.fromkeys(urls, 200)
        self.generate_status: dict[str, int] = dict.fromkeys(urls, 200)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if request.url.path == "/healthz":
            return httpx.Response(
                self.health_status[base], json={"status": "ok", "concurrency": self.concurrency}
            )
        self.calls[base] += 1
        status = self.generate_status[base]
        if status == 429:
            return httpx.Response(
                429, json={"detail": "busy", "code": "overloaded"}, headers={"Retry-After": "7"}
            )
        self.in_flight[base] += 1
        self.peak[base] = max(self.peak[base], self.in_flight[base])
        try:
            await self.release.wait()
        finally:
            self.in_flight[base] -= 1
        return httpx.Response(status, json={"ok": True, "worker": base})


def make_pool(
    name: str, workers: Workers, *, bound: int = 8, registry: dict[str, Worker] | None = None, **config: Any
) -> WorkerPool:
    client = httpx.AsyncClient(transport=httpx.MockTransport(workers))
    metrics = ServiceMetrics(f"t-{name}")
    return WorkerPool(
        name,
        workers.urls,
        client=client,
        token=None,
        config=PoolConfig(per_worker_concurrency=bound, **config),
        metrics=metrics,
        pool_metrics=pool_metrics(metrics),
        registry=registry,
    )


def call(pool: WorkerPool) -> Awaitable[dict[str, Any]]:
    return pool.request("POST", "/v1/x", stage="generate", timeout_s=30, json={})


def test_four_queues_on_one_pool_never_exceed_the_workers_budget() -> None:
    """The LLM pool feeds four queues; two workers advertising 4 each must never see more than 4 at once."""

    async def scenario() -> tuple[collections.Counter[str], list[Any]]:
        workers = Workers(["http://llm-a:1", "http://llm-b:1"], concurrency=4)
        pool = make_pool("llm", workers)
        await pool.probe_all()
        qm = QueueMetrics.create(ServiceMetrics("q"))
        queues = [
            BoundedQueue(name, capacity=64, sla_s=600, retry_after_cap_s=30, metrics=qm)
            for name in ("chat1to1", "shorts", "scenes", "reply")
        ]
        for q in queues:
            pool.on_change(lambda cap, q=q: q.set_consumers(cap))
        tasks = [asyncio.create_task(q.submit(lambda: call(pool))) for q in queues for _ in range(10)]
        # Every queue has 8 consumers (the pool's capacity): 32 would run at once without one shared budget.
        await until(lambda: sum(workers.in_flight.values()) == 8)
        waiting = sum(q.in_flight for q in queues) - 8
        workers.release.set()
        results = await asyncio.gather(*tasks)
        for q in queues:
            await q.close()
        return workers.peak, [waiting, results]

    peak, (waiting, results) = asyncio.run(scenario())
    assert peak == {"http://llm-a:1": 4, "http://llm-b:1": 4}
    assert waiting > 0  # consumers beyond the budget waited for a slot instead of calling
    assert len(results) == 40


def test_least_loaded_routing_with_round_robin_among_ties() -> None:
    async def scenario() -> list[str]:
        workers = Workers(["http://a:1", "http://b:1", "http://c:1"])
        workers.release.set()
        pool = make_pool("p", workers)
        await pool.probe_all()
        order = [(await call(pool))["worker"] for _ in range(6)]
        # Now hold one call on the worker that is next in turn: the next two calls avoid it.
        workers.release.clear()
        held = asyncio.create_task(call(pool))
        await until(lambda: sum(workers.in_flight.values()) == 1)
        busy = next(u for u, n in workers.in_flight.items() if n)
        workers.release.set()
        others = [(await call(pool))["worker"] for _ in range(2)]
        await held
        return [*order, busy, *others]

    seen = asyncio.run(scenario())
    assert seen[:6] == ["http://a:1", "http://b:1", "http://c:1"] * 2
    busy, others = seen[6], seen[7:]
    assert busy == "http://a:1"
    # With a at one call in flight, b and c are less loaded; each gets one, in turn.
    assert sorted(others) == ["http://b:1", "http://c:1"]


def test_shared_worker_has_one_budget_across_pools() -> None:
    async def scenario() -> int:
        workers = Workers(["http://w:1"], concurrency=2)
        registry: dict[str, Worker] = {}
        general, role = (make_pool(n, workers, registry=registry) for n in ("text2img", "chat1to1"))
        await general.probe_all()
        await role.probe_all()
        tasks = [asyncio.create_task(call(p)) for p in (general, role) for _ in range(3)]
        await until(lambda: workers.in_flight["http://w:1"] == 2)
        await asyncio.sleep(0)
        workers.release.set()
        await asyncio.gather(*tasks)
        return workers.peak["http://w:1"]

    assert asyncio.run(scenario()) == 2


def test_busy_worker_429_is_retried_once_then_passed_on() -> None:
    async def scenario() -> tuple[dict[str, Any], BaseException, collections.Counter[str]]:
        workers = Workers(["http://busy:1", "http://free:1"])
        workers.release.set()
        workers.generate_status["http://busy:1"] = 429
        pool = make_pool("p", workers)
        await pool.probe_all()
        ok = await call(pool)  # first in turn is the busy one: retried on the free one
        workers.generate_status["http://free:1"] = 429
        with pytest.raises(UpstreamBusy) as err:
            await call(pool)
        return ok, err.value, workers.calls

    ok, err, calls = asyncio.run(scenario())
    assert ok["worker"] == "http://free:1"
    assert isinstance(err, Overloaded) and err.status_code == 429
    assert err.headers() == {"Retry-After": "7"}
    assert calls == {"http://busy:1": 2, "http://free:1": 2}


def test_failed_probe_takes_a_worker_out_for_its_cooldown() -> None:
    async def scenario() -> list[int]:
        workers = Workers(["http://a:1", "http://b:1"])
        pool = make_pool("p", workers, cooldown_s=60.0)
        await pool.probe_all()
        seen = [pool.healthy_count]
        workers.health_status["http://a:1"] = 503
        await pool.probe_all()
        seen.append(pool.healthy_count)
        # It answers well again at once, but stays out until its cool-down has passed.
        workers.health_status["http://a:1"] = 200
        await pool.probe_all()
        seen.append(pool.healthy_count)
        pool.workers[0].ejected_until = 0.0  # the cool-down is over
        await pool.probe_all()
        seen.append(pool.healthy_count)
        return seen

    assert asyncio.run(scenario()) == [2, 1, 1, 2]


def test_calls_in_flight_to_an_unreachable_worker_are_resent_at_once() -> None:
    async def scenario() -> tuple[dict[str, Any], collections.Counter[str]]:
        workers = Workers(["http://frozen:1", "http://ok:1"])
        pool = make_pool("p", workers)
        await pool.probe_all()
        task = asyncio.create_task(call(pool))
        await until(lambda: workers.in_flight["http://frozen:1"] == 1)
        # The frozen worker stops answering its probe; the held call is abandoned and sent to the other.

        async def unreachable(request: httpx.Request) -> httpx.Response:
            if request.url.host == "frozen" and request.url.path == "/healthz":
                raise httpx.ConnectTimeout("no answer", request=request)
            return await workers(request)

        pool.client._transport = httpx.MockTransport(unreachable)
        await pool.probe_all()
        await until(lambda: workers.in_flight["http://ok:1"] == 1)
        workers.release.set()
        return await task, workers.calls

    body, calls = asyncio.run(scenario())
    assert body["worker"] == "http://ok:1"
    assert calls == {"http://frozen:1": 1, "http://ok:1": 1}


def test_no_worker_left_fails_waiting_calls_at_once() -> None:
    async def scenario() -> BaseException | None:
        workers = Workers(["http://only:1"], concurrency=1)
        pool = make_pool("p", workers, cooldown_s=60.0)
        await pool.probe_all()
        first = asyncio.create_task(call(pool))
        await until(lambda: workers.in_flight["http://only:1"] == 1)
        second = asyncio.create_task(call(pool))  # waits for the only slot
        await until(lambda: len(pool._slot_waiters) == 1)
        workers.health_status["http://only:1"] = 503  # draining: the call it holds finishes there
        await pool.probe_all()
        error = await asyncio.gather(second, return_exceptions=True)
        workers.release.set()
        await first
        return error[0]

    err = asyncio.run(scenario())
    assert isinstance(err, NoHealthyWorker)


def test_a_cancelled_call_keeps_its_slot_until_the_worker_answers() -> None:
    """The worker computes the answer anyway: freeing the slot at once would overfill it."""

    async def scenario() -> tuple[int, int, dict[str, Any]]:
        workers = Workers(["http://w:1"], concurrency=1)
        pool = make_pool("llm", workers)
        await pool.probe_all()
        first = asyncio.create_task(call(pool))
        await until(lambda: workers.in_flight["http://w:1"] == 1)
        first.cancel()  # the client went away
        second = asyncio.create_task(call(pool))
        await until(lambda: len(pool._slot_waiters) == 1)
        waiting_while_busy = workers.in_flight["http://w:1"]
        workers.release.set()
        body = await second
        await asyncio.gather(first, return_exceptions=True)
        return waiting_while_busy, workers.peak["http://w:1"], body

    busy, peak, body = asyncio.run(scenario())
    assert busy == 1
    assert peak == 1
    assert body["worker"] == "http://w:1"


def test_queues_sharing_a_pool_split_its_budget_into_consumers() -> None:
    from services.interface.admission import build_queues
    from services.interface.settings import InterfaceSettings

    async def scenario() -> dict[str, int]:
        llm = make_pool("llm", Workers(["http://llm:1"], concurrency=8))
        image = make_pool("image", Workers(["http://img:1"], concurrency=4))
        await llm.probe_all()
        await image.probe_all()
        pools_for = {
            "profile": [image],
            "text2img": [image],
            "chat1to1": [llm, image],
            "shorts": [llm, image],
            "scenes": [llm, image],
            "private": [image],
            "reply": [llm],
        }
        queues = build_queues(InterfaceSettings(), ServiceMetrics("shares"), pools_for)
        consumers = {name: q.consumers for name, q in queues.items()}
        for q in queues.values():
            await q.close()
        return consumers

    consumers = asyncio.run(scenario())
    # llm: 8 slots over 4 queues = 2 each; image: 4 slots over 6 queues = 1 each (rounded up).
    assert consumers == {
        "profile": 1,
        "text2img": 1,
        "chat1to1": 1,
        "shorts": 1,
        "scenes": 1,
        "private": 1,
        "reply": 2,
    }
