"""BoundedQueue admission, consumers and cancellation, on the real asyncio machinery."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from shared.errors import NoHealthyWorker, Overloaded
from shared.metrics import ServiceMetrics
from shared.queue_manager import BoundedQueue, QueueMetrics
from tests.helpers.waiting import until


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
        await until(lambda: q.in_flight == 1)  # the consumer took the first item
        tasks += [asyncio.create_task(q.submit(slow)) for _ in range(5)]
        await until(lambda: sum(t.done() for t in tasks) == 3)
        assert q.depth == 2
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
        await until(lambda: q.in_flight == 1)
        # One running: the next would wait 0.6 s and then take 0.6 s itself, 1.2 s past the 1 s SLA.
        tasks += [asyncio.create_task(q.submit(slow)) for _ in range(4)]
        await until(lambda: sum(t.done() for t in tasks) == 4)
        release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await q.close()
        return out

    results = run(scenario)
    assert results[0] == 1
    assert all(isinstance(r, Overloaded) for r in results[1:])


def test_retry_after_is_capped() -> None:
    async def scenario() -> Overloaded:
        q = make_queue(capacity=1, sla_s=1000.0, cap_s=5.0)
        q.mean_service_s = 500.0
        release = asyncio.Event()
        tasks = [asyncio.create_task(q.submit(release.wait)) for _ in range(3)]
        await until(lambda: any(t.done() for t in tasks))
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
        release = asyncio.Event()

        async def work() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

        tasks = [asyncio.create_task(q.submit(work)) for _ in range(6)]
        # Three run and three wait: with a fourth consumer a fourth item would be running, not queued.
        await until(lambda: running == 3 and q.depth == 3)
        release.set()
        await asyncio.gather(*tasks)
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
        await until(lambda: log == ["start a"])
        queued = asyncio.create_task(q.submit(make("b")))
        await until(lambda: q.depth == 1)
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        # The dropped item no longer counts against the queue, before any consumer has looked at it.
        assert q.depth == 0
        await until(lambda: q.in_flight == 0)

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


def test_estimate_learns_only_from_work_that_succeeded() -> None:
    """Twenty fast failures must not teach admission that work is fast."""

    async def scenario() -> tuple[float, float]:
        q = make_queue(capacity=50, sla_s=30.0)
        q.mean_service_s = 10.0

        async def fails_fast() -> None:
            raise ValueError("blocked")

        for _ in range(20):
            with pytest.raises(ValueError):
                await q.submit(fails_fast)
        after_failures = q.mean_service_s

        async def succeeds() -> str:
            return "ok"

        await q.submit(succeeds)
        await q.close()
        return after_failures, q.mean_service_s

    after_failures, after_success = run(scenario)
    assert after_failures == 10.0
    assert after_success < 10.0


def test_retry_after_comes_from_the_wait_estimate() -> None:
    async def scenario() -> Overloaded:
        q = make_queue(capacity=2, sla_s=600.0, cap_s=60.0)
        q.mean_service_s = 3.0
        release = asyncio.Event()
        tasks = [asyncio.create_task(q.submit(release.wait))]
        await until(lambda: q.in_flight == 1)
        tasks += [asyncio.create_task(q.submit(release.wait)) for _ in range(3)]
        await until(lambda: any(t.done() for t in tasks))
        err = next(t.exception() for t in tasks if t.done())
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await q.close()
        return err  # type: ignore[return-value]

    err = run(scenario)
    # One running and two queued, one consumer, 3 s each: a new item would start in about 9 s.
    assert isinstance(err, Overloaded)
    assert err.headers()["Retry-After"] == "9"


def test_a_free_consumer_always_admits_so_the_estimate_can_learn() -> None:
    """Even when the learnt service time is over the SLA: refusing would not make anyone faster, and a queue
    that refused everything would never learn that the workers got faster again."""

    async def scenario() -> str:
        q = make_queue(capacity=5, sla_s=1.0)
        q.mean_service_s = 30.0

        async def quick() -> str:
            return "ok"

        out = await q.submit(quick)
        await q.close()
        return out

    assert run(scenario) == "ok"


def test_varying_service_times_widen_the_admission_margin() -> None:
    """The SLA is a promise about the tail: the same mean with a wide spread admits less."""

    async def admitted_second(observations: list[float]) -> bool:
        q = make_queue(capacity=5, sla_s=12.0)
        for seconds in observations:
            q.observe_service(seconds)
        release = asyncio.Event()
        first = asyncio.create_task(q.submit(release.wait))
        await until(lambda: q.in_flight == 1)
        second = asyncio.create_task(q.submit(release.wait))
        await until(lambda: second.done() or q.depth == 1)
        ok = not second.done()
        release.set()
        await asyncio.gather(first, second, return_exceptions=True)
        await q.close()
        return ok

    steady = [5.0] * 40
    spread = [1.0, 9.0] * 20
    assert run(lambda: admitted_second(steady)) is True
    assert run(lambda: admitted_second(spread)) is False


# --- fair share between owners (API keys) ------------------------------------------------------------------


def owned_queue(capacity: int, consumers: int, max_share: float, sla_s: float = 600.0) -> BoundedQueue:
    q = BoundedQueue(
        "test",
        capacity=capacity,
        sla_s=sla_s,
        retry_after_cap_s=30.0,
        metrics=QueueMetrics.create(ServiceMetrics("t")),
        max_share=max_share,
    )
    q.set_consumers(consumers)
    return q


def test_one_owner_holds_at_most_its_share_and_the_others_still_get_in() -> None:
    async def scenario() -> tuple[list[Any], list[Any], int]:
        # Places: 4 waiting + 1 running; half of them, rounded down, is 2 per owner.
        q = owned_queue(capacity=4, consumers=1, max_share=0.5)
        release = asyncio.Event()
        a = [asyncio.create_task(q.submit(release.wait, owner="a")) for _ in range(5)]
        await until(lambda: sum(t.done() for t in a) == 3)
        b = [asyncio.create_task(q.submit(release.wait, owner="b")) for _ in range(2)]
        await until(lambda: q.depth == 3)
        limit = q.share_limit
        release.set()
        out = (
            await asyncio.gather(*a, return_exceptions=True),
            await asyncio.gather(*b, return_exceptions=True),
        )
        await q.close()
        return *out, limit

    a, b, limit = run(scenario)
    assert limit == 2
    assert [r is True for r in a] == [True, True, False, False, False]
    for err in a[2:]:
        assert isinstance(err, Overloaded) and err.reason == "key_share"
        assert err.body()["reason"] == "key_share" and int(err.headers()["Retry-After"]) >= 1
    # The queue itself had room: the other owner was not refused.
    assert b == [True, True]


def test_the_open_owner_is_never_bounded_by_share() -> None:
    """No API keys configured: one owner (None), who may fill the whole queue as before."""

    async def scenario() -> list[Any]:
        q = owned_queue(capacity=4, consumers=1, max_share=0.5)
        release = asyncio.Event()
        tasks = [asyncio.create_task(q.submit(release.wait))]
        await until(lambda: q.in_flight == 1)
        tasks += [asyncio.create_task(q.submit(release.wait)) for _ in range(5)]
        await until(lambda: sum(t.done() for t in tasks) == 1)
        release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await q.close()
        return out

    results = run(scenario)
    assert results.count(True) == 5
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 1 and refused[0].reason == "queue_full"


def test_an_owner_with_nothing_waiting_goes_before_a_backlog_then_owners_take_turns() -> None:
    async def scenario() -> list[str]:
        q = owned_queue(capacity=20, consumers=1, max_share=1.0)
        gates = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1", "c1", "c2", "c3")}
        order: list[str] = []

        def work(name: str) -> Callable[[], Awaitable[None]]:
            async def run_it() -> None:
                order.append(name)
                await gates[name].wait()

            return run_it

        tasks = [asyncio.create_task(q.submit(work("a1"), owner="a"))]
        await until(lambda: order == ["a1"])
        tasks += [asyncio.create_task(q.submit(work(n), owner="a")) for n in ("a2", "a3", "a4")]
        await until(lambda: q.depth == 3)
        tasks += [asyncio.create_task(q.submit(work(n), owner="c")) for n in ("c1", "c2", "c3")]
        await until(lambda: q.depth == 6)
        tasks.append(asyncio.create_task(q.submit(work("b1"), owner="b")))
        await until(lambda: q.depth == 7)
        for _ in range(8):
            gates[order[-1]].set()
            await until(lambda: len(order) == 8 or gates[order[-1]].is_set() is False)
        await asyncio.gather(*tasks)
        await q.close()
        return order

    # a2 came while a's lane was empty (a1 was running), c1 while c's was: both fresh, first come first
    # served, then b1 (fresh); then a and c, each with a backlog, alternate.
    assert run(scenario) == ["a1", "a2", "c1", "b1", "a3", "c2", "a4", "c3"]


def test_the_wait_estimate_is_the_new_items_own_place_in_the_turns() -> None:
    """A's backlog makes A's next item too slow for the SLA, while B's single request, which goes before that
    backlog, is admitted: the whole queue's depth would have refused it too."""

    async def scenario() -> tuple[Any, Any]:
        q = owned_queue(capacity=20, consumers=1, max_share=1.0, sla_s=3.5)
        q.mean_service_s = 1.0
        release = asyncio.Event()
        tasks = [asyncio.create_task(q.submit(release.wait, owner="a"))]
        await until(lambda: q.in_flight == 1)
        # A's waiting items may be over the SLA (the first two were admitted while the estimate allowed it).
        q.sla_s = 600.0
        tasks += [asyncio.create_task(q.submit(release.wait, owner="a")) for _ in range(2)]
        await until(lambda: q.depth == 2)
        q.sla_s = 3.5
        # A's next: 1 running + 2 of its own ahead = 3 s + 1 s of its own > 3.5. B's: 1 running + the one
        # fresh lane's first item = 2 s + 1 s.
        a_next = asyncio.create_task(q.submit(release.wait, owner="a"))
        b_first = asyncio.create_task(q.submit(release.wait, owner="b"))
        await until(lambda: a_next.done() and q.depth == 3)
        release.set()
        await asyncio.gather(*tasks, b_first, return_exceptions=True)
        await q.close()
        return a_next.exception(), b_first.result()

    a_refusal, b_result = run(scenario)
    assert isinstance(a_refusal, Overloaded) and a_refusal.reason == "over_sla"
    assert b_result is True


def test_cancelled_items_release_their_owners_share() -> None:
    async def scenario() -> tuple[int, int, Any]:
        q = owned_queue(capacity=4, consumers=1, max_share=0.5)
        release = asyncio.Event()
        running = asyncio.create_task(q.submit(release.wait, owner="a"))
        await until(lambda: q.in_flight == 1)
        queued = asyncio.create_task(q.submit(release.wait, owner="a"))
        await until(lambda: q.depth == 1)
        held_before = q.held_by("a")
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        await until(lambda: q.in_flight == 0)
        held_after = q.held_by("a")
        again = await asyncio.wait_for(q.submit(lambda: asyncio.sleep(0, "ok"), owner="a"), 5)
        await q.close()
        return held_before, held_after, again

    assert run(scenario) == (2, 0, "ok")
