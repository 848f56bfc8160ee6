"""BoundedQueue admission, consumers and cancellation, on the real asyncio machinery."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.errors import NoHealthyWorker, Overloaded
from shared.metrics import ServiceMetrics
from shared.queue_manager import BoundedQueue, QueueMetrics


def make_queue(
    capacity: int = 2, sla_s: float = 60.0, cap_s: float = 30.0, consumers: int = 1
) -> BoundedQueue:
    q = BoundedQueue(
        "test",
        capacity=capacity,
        sla_s=sla_s,
        retry_after_cap_s=cap_s,
        metrics=QueueMetrics.create(ServiceMetrics("t")),
    )
    q.set_consumers(consumers)
    return q


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    async def scenario() -> tuple[list[Any], BoundedQueue]:
        q = make_queue(capacity=2)
        release = asyncio.Event()

        async def slow() -> str:
            await release.wait()
            return "done"

        tasks = [asyncio.create_task(q.submit(slow))]
        await asyncio.sleep(0.01)  # the consumer takes the first item
        tasks += [asyncio.create_task(q.submit(slow)) for _ in range(5)]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await q.close()
        return results, q

    results, _ = run(scenario)
    done = [r for r in results if r == "done"]
    refused = [r for r in results if isinstance(r, Overloaded)]
    # One runs, two wait in the queue, three are refused at once.
    assert len(done) == 3
    assert len(refused) == 3
    for err in refused:
        assert 1 <= int(err.headers()["Retry-After"]) <= 30
        assert err.status_code == 429


def test_sla_refuses_when_estimated_wait_is_too_long() -> None:
    async def scenario() -> list[Any]:
        q = make_queue(capacity=100, sla_s=1.0)
        q.mean_service_s = 0.6
        release = asyncio.Event()

        async def slow() -> int:
            await release.wait()
            return 1

        tasks = [asyncio.create_task(q.submit(slow))]
        await asyncio.sleep(0.01)
        # One running + one queued: the next would wait 2 x 0.6 s = 1.2 s, past the 1 s SLA.
        tasks += [asyncio.create_task(q.submit(slow)) for _ in range(4)]
        await asyncio.sleep(0.05)
        release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await q.close()
        return out

    results = run(scenario)
    assert results[:2] == [1, 1]
    assert all(isinstance(r, Overloaded) for r in results[2:])


def test_retry_after_is_capped() -> None:
    async def scenario() -> Overloaded:
        q = make_queue(capacity=1, sla_s=1000.0, cap_s=5.0)
        q.mean_service_s = 500.0
        release = asyncio.Event()
        tasks = [asyncio.create_task(q.submit(release.wait)) for _ in range(3)]
        await asyncio.sleep(0.05)
        err = next(r for r in [t.exception() if t.done() else None for t in tasks] if r is not None)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await q.close()
        return err  # type: ignore[return-value]

    err = run(scenario)
    assert isinstance(err, Overloaded)
    assert err.headers()["Retry-After"] == "5"


def test_no_consumers_means_no_healthy_worker() -> None:
    async def scenario() -> None:
        q = make_queue(consumers=0)

        async def work() -> int:
            return 1

        with pytest.raises(NoHealthyWorker):
            await q.submit(work)
        await q.close()

    run(scenario)


def test_consumers_follow_capacity() -> None:
    async def scenario() -> int:
        q = make_queue(capacity=10, consumers=3)
        running = 0
        peak = 0

        async def work() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1

        await asyncio.gather(*(q.submit(work) for _ in range(6)))
        await q.close()
        return peak

    assert run(scenario) == 3


def test_cancelled_caller_drops_queued_work_and_stops_running_work() -> None:
    async def scenario() -> tuple[list[str], BoundedQueue]:
        q = make_queue(capacity=5)
        log: list[str] = []

        def make(name: str) -> Callable[[], Awaitable[None]]:
            async def work() -> None:
                log.append(f"start {name}")
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    log.append(f"cancelled {name}")
                    raise

            return work

        running = asyncio.create_task(q.submit(make("a")))
        queued = asyncio.create_task(q.submit(make("b")))
        await asyncio.sleep(0.05)
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        await asyncio.sleep(0.05)

        async def after() -> str:
            return "ok"

        log.append(await q.submit(after))
        await q.close()
        return log, q

    log, q = run(scenario)
    assert log == ["start a", "cancelled a", "ok"]
    assert q.in_flight == 0


def test_errors_reach_the_caller_and_the_consumer_survives() -> None:
    async def scenario() -> list[Any]:
        q = make_queue(capacity=5)

        async def boom() -> None:
            raise ValueError("bad")

        async def fine() -> str:
            return "fine"

        out = [await asyncio.gather(q.submit(boom), return_exceptions=True), await q.submit(fine)]
        await q.close()
        return out

    (err,), ok = run(scenario)
    assert isinstance(err, ValueError)
    assert ok == "fine"


def test_work_runs_in_the_submitters_context() -> None:
    """Consumers are long-lived tasks; the request id of the submitter must still be visible to the work."""
    from shared.request_context import get_request_id, reset_request_id, set_request_id

    async def scenario() -> list[str | None]:
        q = make_queue(capacity=5, consumers=1)

        async def work() -> str | None:
            return get_request_id()

        seen = []
        for rid in ("req-a", "req-b"):
            token = set_request_id(rid)
            seen.append(await q.submit(work))
            reset_request_id(token)
        await q.close()
        return seen

    assert run(scenario) == ["req-a", "req-b"]
