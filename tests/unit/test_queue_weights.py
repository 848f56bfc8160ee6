"""Weighted queue items (a request for n images): n places of the queue's bounds, never one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.errors import Overloaded
from tests.helpers.waiting import until
from tests.unit.test_queue_manager import make_queue, run


def test_a_heavy_item_takes_its_weight_of_the_capacity() -> None:
    """Capacity 4 with one item running: two items of 2 fill the queue; a third of 1 is refused as full,
    where four unweighted items would all have been queued."""

    async def scenario() -> tuple[list[Any], list[int]]:
        q = make_queue(capacity=4)
        release = asyncio.Event()

        async def slow() -> str:
            await release.wait()
            return "done"

        tasks = [asyncio.create_task(q.submit(slow))]
        await until(lambda: q.in_flight == 1)
        tasks += [asyncio.create_task(q.submit(slow, 2)) for _ in range(2)]
        await until(lambda: q.depth == 4)
        with pytest.raises(Overloaded):
            await q.submit(slow)
        depth_when_full = q.depth
        release.set()
        results = await asyncio.gather(*tasks)
        # Every unit came back: nothing waits, nothing runs.
        counts = [depth_when_full, q.depth, q.in_flight]
        await q.close()
        return results, counts

    results, (full, depth, in_flight) = run(scenario)
    assert results == ["done"] * 3
    assert (full, depth, in_flight) == (4, 0, 0)


def test_an_item_heavier_than_the_free_room_is_refused_not_squeezed_in() -> None:
    async def scenario() -> None:
        q = make_queue(capacity=4)
        release = asyncio.Event()

        async def slow() -> None:
            await release.wait()

        running = asyncio.create_task(q.submit(slow))
        await until(lambda: q.in_flight == 1)
        waiting = asyncio.create_task(q.submit(slow, 3))
        await until(lambda: q.depth == 3)
        with pytest.raises(Overloaded):
            await q.submit(slow, 2)  # 3 + 2 > 4
        release.set()
        await asyncio.gather(running, waiting)
        await q.close()

    run(scenario)


def test_the_wait_estimate_counts_units_in_flight() -> None:
    """One consumer, mean service 1 s: an item of weight 3 in flight puts 3 units ahead of the next, so the
    SLA check sees a 3 s wait where an unweighted item would show 1 s."""

    async def scenario() -> tuple[float, float]:
        q = make_queue(capacity=100, sla_s=100.0, consumers=1)
        q.mean_service_s = 1.0
        release = asyncio.Event()

        async def slow() -> None:
            await release.wait()

        heavy = asyncio.create_task(q.submit(slow, 3))
        await until(lambda: q.in_flight == 3)
        waited = q.estimated_wait_s()
        release.set()
        await heavy
        idle = q.estimated_wait_s()
        await q.close()
        return waited, idle

    waited, idle = run(scenario)
    assert waited == pytest.approx(3.0)
    assert idle == 0.0


def test_a_lone_item_heavier_than_the_capacity_is_still_served() -> None:
    async def scenario() -> Any:
        q = make_queue(capacity=2)

        async def quick() -> str:
            return "ok"

        result = await q.submit(quick, 4)
        await q.close()
        return result

    assert run(scenario) == "ok"
