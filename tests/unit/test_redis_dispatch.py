"""RedisDispatcher: two replicas (two dispatchers with their own connections) on one real redis-server.

The bounds are those of each replica's local BoundedQueue (capacity 2, one consumer per replica unless a test
says otherwise); what is checked is that they hold for both replicas together, that any replica runs any
job, and that a replica that dies holding a job neither loses it nor keeps its place counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from services.interface.jobs.records import JobRecord, new_job_id
from services.interface.jobs.redis_dispatch import RedisDispatcher, RouteLoad
from services.interface.jobs.redis_store import connect
from shared.errors import NoHealthyWorker, Overloaded
from shared.metrics import ServiceMetrics
from shared.queue_manager import BoundedQueue, QueueMetrics
from tests.helpers.redis_server import running_redis_server
from tests.helpers.waiting import until

ROUTE = "text2img"
HEARTBEAT_S, CLAIM_IDLE_S = 0.1, 0.5


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


class Jobs:
    """The runs of every replica: who started which job, each blocked until the test releases it. A job
    marked cancelled returns at once, as the manager's run does for a job no longer queued."""

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.finished: list[str] = []
        self.canceled: set[str] = set()
        self.seconds: dict[str, float] = {}
        self.clock = [0.0]
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, job_id: str) -> asyncio.Event:
        return self._gates.setdefault(job_id, asyncio.Event())

    def release(self, *job_ids: str) -> None:
        for job_id in job_ids:
            self.gate(job_id).set()

    def runner(self, replica: str) -> Callable[[str], Awaitable[None]]:
        async def run(job_id: str) -> None:
            self.started.append((replica, job_id))
            if job_id in self.canceled:
                return
            if job_id in self.seconds:
                self.clock[0] += self.seconds[job_id]  # a job that "takes" that long, on the fake clock
            else:
                await self.gate(job_id).wait()
            self.finished.append(job_id)

        return run

    def where(self, job_id: str) -> list[str]:
        return [replica for replica, started in self.started if started == job_id]


class Replica:
    def __init__(self, name: str, url: str, prefix: str, jobs: Jobs, consumers: int, **options: Any) -> None:
        self.name = name
        self.client = connect(url)
        self.queue = BoundedQueue(
            ROUTE,
            capacity=options.pop("capacity", 2),
            sla_s=options.pop("sla_s", 60.0),
            retry_after_cap_s=30.0,
            metrics=QueueMetrics.create(ServiceMetrics(f"t-{name}")),
            max_share=options.pop("max_share", 1.0),
        )
        self.queue.set_consumers(consumers)
        options = {"heartbeat_s": HEARTBEAT_S, "claim_idle_s": CLAIM_IDLE_S, **options}
        self.dispatcher = RedisDispatcher(
            self.client,
            {ROUTE: self.queue},
            replica=name,
            prefix=prefix,
            clock=lambda: jobs.clock[0],
            **options,
        )
        self.jobs = jobs

    async def start(self) -> None:
        await self.dispatcher.start(self.jobs.runner(self.name))

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.queue.close()
        await self.client.aclose()

    async def kill(self) -> None:
        """Stop as a killed process does: no acknowledgement, no hand-over, no goodbye to Redis."""
        d = self.dispatcher
        tasks = [*d._readers.values(), *d._handlers, d._heartbeat]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.dispatcher.closing = True  # its close below only releases the connections
        self.dispatcher._running.clear()

    async def enqueue(self, owner: str | None = "k1", weight: int = 1) -> JobRecord:
        record = JobRecord(id=new_job_id(), route=ROUTE, owner=owner, spec={}, weight=weight)
        await self.dispatcher.enqueue(record)
        return record

    async def load(self) -> RouteLoad:
        return await self.dispatcher.load(ROUTE)


Scenario = Callable[[Replica, Replica, Jobs], Awaitable[None]]


def run_replicas(url: str, scenario: Scenario, a: dict[str, Any], b: dict[str, Any]) -> None:
    async def main() -> None:
        jobs = Jobs()
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        one = Replica("a", url, prefix, jobs, **a)
        two = Replica("b", url, prefix, jobs, **b)
        await one.start()
        await two.start()
        try:
            await scenario(one, two, jobs)
        finally:
            jobs.release(*(job_id for _, job_id in jobs.started))
            await one.close()
            await two.close()

    asyncio.run(main())


async def running(jobs: Jobs, n: int) -> None:
    await until(lambda: len(jobs.started) >= n, 10, f"{n} job(s) started")


async def settled(replica: Replica, waiting: int = 0, running_units: int = 0) -> None:
    async def check() -> bool:
        load = await replica.load()
        return (load.waiting, load.running) == (waiting, running_units)

    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"load never {waiting} waiting / {running_units} running: {await replica.load()}")


def test_the_bounds_hold_for_both_replicas_together(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        first, second = await a.enqueue(), await b.enqueue()
        await running(jobs, 2)
        # One consumer each, so each replica took one.
        assert sorted(r for r, _ in jobs.started) == ["a", "b"]
        load = await b.load()
        assert (load.waiting, load.running, load.consumers) == (0, 2, 2)
        # Six requests at once on both replicas for the two places left: two get in, whichever replica.
        attempts = await asyncio.gather(*((a, b)[i % 2].enqueue() for i in range(6)), return_exceptions=True)
        admitted = [r for r in attempts if isinstance(r, JobRecord)]
        refused = [r for r in attempts if isinstance(r, Overloaded)]
        assert len(admitted) == 2 and len(refused) == 4, attempts
        for error in refused:
            assert error.reason == "queue_full" and int(error.headers()["Retry-After"]) >= 1
        with pytest.raises(Overloaded):
            await a.dispatcher.check(ROUTE, 1, "k2")
        assert (await a.load()).waiting == 2
        jobs.release(first.id, second.id, *(r.id for r in admitted))
        await until(lambda: len(jobs.finished) == 4, 10)
        assert sorted(j for _, j in jobs.started) == sorted([first.id, second.id, *(r.id for r in admitted)])
        await settled(a)
        await a.dispatcher.check(ROUTE, 1, "k2")  # room again

    run_replicas(redis_url, scenario, {"consumers": 1}, {"consumers": 1})


def test_one_key_holds_at_most_its_share_across_replicas(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        # Share 0.5 of capacity 2 + consumers 2: two units per key, held on either replica.
        await a.enqueue("k1")
        await b.enqueue("k1")
        with pytest.raises(Overloaded) as refused:
            await a.enqueue("k1")
        assert refused.value.reason == "key_share"
        await b.enqueue("k2")  # another key still gets in

    options = {"consumers": 1, "max_share": 0.5}
    run_replicas(redis_url, scenario, options, options)


def test_a_job_enqueued_on_one_replica_runs_on_another(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        record = await a.enqueue()
        await running(jobs, 1)
        assert jobs.where(record.id) == ["b"]
        # A cancel reaches the task only where it runs.
        assert not a.dispatcher.stop_local(record.id)
        assert b.dispatcher.stop_local(record.id)
        await settled(a)
        assert jobs.finished == []

        # No consumer left on either replica: 503 at once, nothing queued.
        b.queue.set_consumers(0)

        async def nobody() -> bool:
            return (await a.load()).consumers == 0

        for _ in range(100):
            if await nobody():
                break
            await asyncio.sleep(0.05)
        with pytest.raises(NoHealthyWorker):
            await a.enqueue()
        assert (await a.load()).waiting == 0

    run_replicas(redis_url, scenario, {"consumers": 0}, {"consumers": 1})


def test_a_dead_replicas_job_is_reclaimed_and_counted_once(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        record = await a.enqueue()
        await running(jobs, 1)
        assert jobs.where(record.id) == ["a"]
        b.queue.set_consumers(1)
        # While A lives, its heartbeat keeps the job its own, however long the job takes.
        await asyncio.sleep(3 * CLAIM_IDLE_S)
        assert jobs.where(record.id) == ["a"]

        await a.kill()
        await until(lambda: jobs.where(record.id) == ["a", "b"], 10, "B reclaimed the job")
        # A's unit went with it: the job counts once, as B's.
        await settled(b, running_units=1)
        assert (await b.load()).consumers == 1
        jobs.release(record.id)
        await settled(b)
        later = await b.enqueue()
        await until(lambda: jobs.where(later.id) == ["b"], 10)

    run_replicas(redis_url, scenario, {"consumers": 1}, {"consumers": 0})


def test_a_closing_replica_hands_its_running_job_over_at_once(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        record = await a.enqueue()
        await running(jobs, 1)
        b.queue.set_consumers(1)
        await a.dispatcher.close()
        # The claim idle time is a minute: only the hand-over lets B take it within the wait below.
        await until(lambda: jobs.where(record.id) == ["a", "b"], 10, "B took the handed-over job")
        await settled(b, running_units=1)

    options = {"claim_idle_s": 60.0}
    run_replicas(redis_url, scenario, {"consumers": 1, **options}, {"consumers": 0, **options})


def test_a_withdrawn_job_frees_its_place_at_once(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        first = await a.enqueue()
        await running(jobs, 1)
        second, third = await b.enqueue(), await b.enqueue()
        with pytest.raises(Overloaded):
            await b.enqueue()
        jobs.canceled.add(second.id)
        await a.dispatcher.withdraw(second)
        assert (await b.load()).waiting == 1
        fourth = await b.enqueue()
        # Queued again without admission (a restart's resume): still once in the queue, past the bounds.
        await a.dispatcher.enqueue(third, admit=False)
        assert (await a.load()).waiting == 2
        jobs.release(first.id, third.id, fourth.id)
        await until(lambda: sorted(jobs.finished) == sorted([first.id, third.id, fourth.id]), 10)
        # The withdrawn entry was read and handed to the run, which skipped it; it counted nothing.
        assert jobs.where(second.id) == ["a"] and jobs.where(third.id) == ["a"]
        await settled(b)

    run_replicas(redis_url, scenario, {"consumers": 1}, {"consumers": 0})


def test_a_long_shared_service_time_refuses_for_the_sla_on_every_replica(redis_url: str) -> None:
    async def scenario(a: Replica, b: Replica, jobs: Jobs) -> None:
        slow = JobRecord(id=new_job_id(), route=ROUTE, owner="k1", spec={})
        jobs.seconds[slow.id] = 100.0
        await a.dispatcher.enqueue(slow)
        await until(lambda: jobs.finished == [slow.id], 10)
        # Learned once, by whichever replica ran it: mean 1 + 0.2 x 99, the tail far past the 60 s SLA.
        for replica in (a, b):
            await settled(replica)
            assert (await replica.load()).mean_service_s == pytest.approx(20.8)
        # Jobs that find a free consumer get in whatever the estimate (nothing waits); each one started
        # before the next, or it would be waiting, and refused.
        await a.enqueue()
        await running(jobs, 2)
        await b.enqueue()
        await running(jobs, 3)
        # Both consumers busy: a new job would wait; both replicas refuse it.
        for replica in (a, b):
            with pytest.raises(Overloaded) as refused:
                await replica.enqueue()
            assert refused.value.reason == "over_sla"
            # Retry-After: the estimated wait, one consumer's mean of the two (20.8 / 2), rounded up.
            assert refused.value.headers()["Retry-After"] == "11"

    run_replicas(redis_url, scenario, {"consumers": 1}, {"consumers": 1})
