"""The job store's contract (services/interface/jobs/store.py), the same cases on both stores.

Each case gets two "replicas" of the store: for Redis two instances with their own connections on one real
redis-server (what two interface processes hold); for SQLite one instance twice (it is not shared, so a
deployment on it has one replica). What one replica writes or sends, the other must see.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.interface.jobs.records import JobEvent, JobRecord, JobStatus, Webhook, new_job_id
from services.interface.jobs.redis_store import RedisJobStore, connect
from services.interface.jobs.store import IdempotencyConflict, JobStore, SqliteJobStore
from tests.helpers.redis_server import running_redis_server
from tests.helpers.waiting import until

Replicas = Callable[[], AbstractAsyncContextManager[tuple[JobStore, JobStore]]]
Q, R = JobStatus.queued, JobStatus.running


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Replicas:
    if request.param == "sqlite":

        @asynccontextmanager
        async def sqlite_pair() -> AsyncIterator[tuple[JobStore, JobStore]]:
            store = SqliteJobStore(tmp_path / "jobs.sqlite3")
            await store.start()
            try:
                yield store, store
            finally:
                await store.close()

        return sqlite_pair

    url: str = request.getfixturevalue("redis_url")
    # A prefix of its own per test: the server is shared by the module, the keys are not.
    prefix = f"test-{uuid.uuid4().hex[:8]}:"

    @asynccontextmanager
    async def redis_pair() -> AsyncIterator[tuple[JobStore, JobStore]]:
        clients = [connect(url), connect(url)]
        stores = [RedisJobStore(client, prefix=prefix) for client in clients]
        for store in stores:
            await store.start()
        try:
            yield stores[0], stores[1]
        finally:
            for store in stores:
                await store.close()
            for client in clients:
                await client.aclose()

    return redis_pair


def run(replicas: Replicas, scenario: Callable[[JobStore, JobStore], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with replicas() as (a, b):
            return await scenario(a, b)

    return asyncio.run(main())


def job(route: Any = "text2img", *, owner: str | None = "key1", **fields: Any) -> JobRecord:
    fields.setdefault("spec", {"prompt": "a fox"})
    return JobRecord(id=new_job_id(), route=route, owner=owner, **fields)


def test_a_record_reads_back_the_same_on_another_replica(replicas: Replicas) -> None:
    record = job(
        "profile",
        # Floats at full precision, empty lists and nested objects survive the store's encoding.
        spec={"prompt": "a fox", "seed": 12345678901, "scale": 0.1234567890123456789, "tags": [], "o": {}},
        weight=3,
        asynchronous=True,
        idempotency_key="k",
        body_hash="h",
        webhook=Webhook("https://hooks.example.org/x", ("start", "completed")),
        has_blob=True,
    )

    async def scenario(a: JobStore, b: JobStore) -> None:
        assert await a.create(record, b"\x00selfie\xff") is record
        assert await b.get(record.id) == record
        assert await b.blob(record.id) == b"\x00selfie\xff"
        assert await b.get("job_unknown") is None
        assert await b.blob("job_unknown") is None

    run(replicas, scenario)


def test_an_idempotency_key_returns_the_earlier_job_or_conflicts(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        first = await a.create(job(idempotency_key="k1", body_hash="h1"))
        assert await b.find_idempotent("key1", "k1") == first
        assert await b.find_idempotent("key2", "k1") is None
        again = job(idempotency_key="k1", body_hash="h1")
        assert (await b.create(again)).id == first.id
        assert await a.get(again.id) is None  # nothing inserted
        with pytest.raises(IdempotencyConflict):
            await b.create(job(idempotency_key="k1", body_hash="other"))
        # The key is the owner's: another owner (and the open deployment's None) gets a job of its own.
        other = job(owner="key2", idempotency_key="k1", body_hash="other")
        assert (await b.create(other)).id == other.id
        anonymous = job(owner=None, idempotency_key="k1", body_hash="h1")
        assert (await a.create(anonymous)).id == anonymous.id
        assert (await b.create(job(owner=None, idempotency_key="k1", body_hash="h1"))).id == anonymous.id
        # Two replicas creating with one key at once: one job.
        racing = [job(idempotency_key="k2", body_hash="h") for _ in range(10)]
        made = await asyncio.gather(*((a, b)[i % 2].create(r) for i, r in enumerate(racing)))
        assert len({r.id for r in made}) == 1

    run(replicas, scenario)


def test_a_deleted_job_is_gone_with_its_idempotency_key(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        refused = await a.create(job(idempotency_key="k", body_hash="h", has_blob=True), b"upload")
        kept = await a.create(job())
        await b.delete(refused.id)
        assert await a.get(refused.id) is None and await a.blob(refused.id) is None
        assert await a.find_idempotent("key1", "k") is None
        assert [r.id for r in await a.unfinished()] == [kept.id]
        assert await a.position(kept) == 0
        # The key is free again, for any body.
        retry = job(idempotency_key="k", body_hash="other")
        assert (await b.create(retry)).id == retry.id
        await a.delete("job_unknown")

    run(replicas, scenario)


def test_racing_transitions_have_exactly_one_winner(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        record = await a.create(job())
        starts = [
            (a, b)[i % 2].transition(record.id, {Q}, R, attempts=i + 1, started_at=1.0 + i) for i in range(20)
        ]
        won = [r for r in await asyncio.gather(*starts) if r is not None]
        assert len(won) == 1 and won[0].status is R
        assert await b.get(record.id) == won[0]

        # A cancel, a success and a failure race for the running job: one terminal state, the winner's.
        ends = await asyncio.gather(
            a.transition(record.id, {Q, R}, JobStatus.canceled, finished_at=2.0),
            b.transition(record.id, {R}, JobStatus.succeeded, result={"images": ["x"]}, finished_at=3.0),
            a.transition(record.id, {R}, JobStatus.failed, error={"status": 500}, finished_at=4.0),
        )
        winners = [r for r in ends if r is not None]
        assert len(winners) == 1
        assert await a.get(record.id) == winners[0]
        assert await b.transition(record.id, {Q, R}, JobStatus.canceled) is None
        assert await b.transition("job_unknown", {Q}, R) is None

    run(replicas, scenario)


def test_progress_is_kept_for_running_jobs_only(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        record = await a.create(job())
        await a.set_progress(record.id, 3, 30)
        assert (await b.get(record.id)).step is None  # type: ignore[union-attr]
        await a.transition(record.id, {Q}, R)
        await a.set_progress(record.id, 4, 30)
        got = await b.get(record.id)
        assert got is not None and (got.step, got.total_steps) == (4, 30)
        # A later transition keeps the progress the record had.
        done = await b.transition(record.id, {R}, JobStatus.succeeded, result={"ok": True})
        assert done is not None and (done.step, done.total_steps) == (4, 30)
        assert await a.get(record.id) == done

    run(replicas, scenario)


def test_position_counts_queued_jobs_of_the_route_created_before(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        t = time.time()
        first, second, third = (job(created_at=t + i * 0.001) for i in range(3))
        shorts = job("shorts", created_at=t - 1)
        done = job(created_at=t - 2)
        for record in (first, second, third, shorts, done):
            await (a, b)[hash(record.id) % 2].create(record)
        await a.transition(done.id, {Q}, JobStatus.canceled)
        assert [await b.position(r) for r in (first, second, third, shorts)] == [0, 1, 2, 0]
        await a.transition(first.id, {Q}, R)
        assert [await b.position(r) for r in (second, third)] == [0, 1]
        # Running and queued, oldest first; finished ones are not resumed.
        assert [r.id for r in await b.unfinished()] == [shorts.id, first.id, second.id, third.id]
        await a.transition(second.id, {Q}, JobStatus.canceled)
        assert await b.position(third) == 0

    run(replicas, scenario)


def test_outputs_past_their_expiry_are_listed_until_dropped(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        now = time.time()
        old = await a.create(job(has_blob=True), b"upload")
        fresh = await a.create(job())
        bare = await a.create(job())
        await a.transition(old.id, {Q}, R)
        await a.transition(old.id, {R}, JobStatus.succeeded, result={"img": "x"}, expires_at=now - 1)
        await a.transition(fresh.id, {Q}, JobStatus.succeeded, result={"img": "y"}, expires_at=now + 60)
        # Failed without an upload: no output held, nothing to expire.
        await a.transition(bare.id, {Q}, JobStatus.failed, error={"status": 500}, expires_at=now - 1)
        assert await b.expired_ids(now) == [old.id]
        await b.drop_output(old.id)
        assert await a.expired_ids(now) == []
        kept = await a.get(old.id)
        assert kept is not None and kept.result is None and kept.status is JobStatus.succeeded
        assert await a.blob(old.id) is None
        assert await a.expired_ids(now + 120) == [fresh.id]

    run(replicas, scenario)


def test_events_reach_subscribers_on_every_replica_once(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        record = await a.create(job())
        sent = [
            JobEvent(record.id, "queued", {"position": 0}),
            JobEvent(record.id, "progress", {"step": 1, "total": 2}),
            JobEvent(record.id, "completed", {"status": "succeeded"}),
        ]
        async with b.subscribe(record.id) as there, a.subscribe(record.id) as here:
            for event in sent:
                await a.publish(event)
            # Another job's event goes to its own subscribers only; the end marker follows everything.
            await b.publish(JobEvent("job_other", "queued"))
            marker = JobEvent(record.id, "canceled", {"marker": True})
            await b.publish(marker)
            for queue in (there, here):
                got = [await asyncio.wait_for(queue.get(), 10) for _ in range(4)]
                assert [e.to_dict() for e in got] == [e.to_dict() for e in [*sent, marker]]
                assert queue.empty()

    run(replicas, scenario)


def test_a_cancel_signal_reaches_every_replica_once(replicas: Replicas) -> None:
    async def scenario(a: JobStore, b: JobStore) -> None:
        stores = [a] if b is a else [a, b]
        heard: list[list[str]] = [[] for _ in stores]
        for store, log in zip(stores, heard, strict=True):
            store.hub.on_cancel(log.append)
        await b.signal_cancel("job_1")
        await a.signal_cancel("job_2")
        await until(lambda: all(log == ["job_1", "job_2"] for log in heard), 10)

    run(replicas, scenario)


def test_redis_records_of_finished_jobs_expire_after_the_retention(redis_url: str) -> None:
    async def scenario() -> None:
        client = connect(redis_url)
        store = RedisJobStore(client, prefix=f"ttl-{uuid.uuid4().hex[:8]}:", record_ttl_s=3600)
        try:
            record = await store.create(job(idempotency_key="k", body_hash="h"), b"x")
            key = f"{store.prefix}job:{record.id}"
            assert await client.pttl(key) == -1  # unfinished: kept
            await store.transition(record.id, {Q}, JobStatus.canceled)
            idem = f"{store.prefix}idem:key1:k"
            for name in (key, idem, f"{store.prefix}blob:{record.id}"):
                assert 0 < await client.pttl(name) <= 3_600_000
        finally:
            await client.aclose()

    asyncio.run(scenario())
