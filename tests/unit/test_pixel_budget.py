"""The pixel budget with real threads: bounded, first come first served, never deadlocked, typed when busy.

Every wait is for a state the test observes (``waiting``, ``in_use_px``); no assertion depends on timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared.errors import Overloaded
from shared.pixel_budget import DecodeBusy, PixelBudget, trim_heap
from tests.helpers.waiting import wait_until


def in_thread(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_a_request_larger_than_the_budget_is_clamped_and_runs_alone() -> None:
    budget = PixelBudget(100, trim_after_px=None)
    with budget.reserve(10_000) as held:
        assert held == 100 and budget.in_use_px == 100
    assert budget.in_use_px == 0
    # While it holds everything, everyone else waits (here: past a short timeout); once it is done, the next
    # oversized request gets the whole budget rather than waiting for room that cannot exist.
    with budget.reserve(10_000), pytest.raises(DecodeBusy), budget.reserve(1, timeout_s=0.01):
        pass
    with budget.reserve(10_000):
        pass


def test_concurrent_holders_never_exceed_the_capacity() -> None:
    budget = PixelBudget(10, trim_after_px=None)
    release = threading.Event()
    seen: list[int] = []
    lock = threading.Lock()

    def hold(px: int) -> None:
        with budget.reserve(px):
            with lock:
                seen.append(budget.in_use_px)
            release.wait()

    threads = []
    # Started one by one, so the arrival order is known: two 4s fit, the third 4 waits, and what comes after
    # it queues behind it (first come, first served) although the 1 would fit.
    for px, holders, waiting in ((4, 1, 0), (4, 2, 0), (4, 2, 1), (30, 2, 2), (1, 2, 3)):
        threads.append(in_thread(lambda px=px: hold(px)))
        wait_until(lambda h=holders, w=waiting: (len(seen), budget.waiting) == (h, w), what=f"{px} placed")
    assert budget.in_use_px == 8
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a reservation deadlocked"
    assert len(seen) == 5 and max(seen) <= 10
    assert budget.in_use_px == 0 and budget.waiting == 0


def test_waiters_are_served_in_arrival_order() -> None:
    budget = PixelBudget(10, trim_after_px=None)
    order: list[str] = []

    def take(name: str, px: int) -> None:
        with budget.reserve(px):
            order.append(name)

    with budget.reserve(6):
        big = in_thread(lambda: take("big", 8))
        wait_until(lambda: budget.waiting == 1, what="the large request waiting")
        # 2 px would fit next to the 6 held, but the large request came first: it must not be starved.
        small = in_thread(lambda: take("small", 2))
        wait_until(lambda: budget.waiting == 2, what="the small request queued behind it")
        assert order == []
    big.join(timeout=30)
    small.join(timeout=30)
    assert order == ["big", "small"]


def test_a_timed_out_waiter_leaves_the_queue_and_is_a_429() -> None:
    budget = PixelBudget(10, timeout_s=0.05, trim_after_px=None)
    with budget.reserve(10):
        with pytest.raises(DecodeBusy) as caught, budget.reserve(5):
            pass
        assert budget.waiting == 0
    error = caught.value
    assert isinstance(error, Overloaded) and error.status_code == 429
    assert int(error.headers()["Retry-After"]) >= 1
    assert error.body()["stage"] == "decode"
    # The budget is whole again after the timeout.
    with budget.reserve(10) as held:
        assert held == 10


def test_invalid_budgets_are_refused() -> None:
    with pytest.raises(ValueError):
        PixelBudget(0)
    with pytest.raises(ValueError):
        PixelBudget(10, timeout_s=0)


def test_large_reservations_trim_the_heap_when_the_budget_empties() -> None:
    budget = PixelBudget(100, trim_after_px=50)
    can_trim = trim_heap()  # False on a C library without malloc_trim: then nothing is counted
    with budget.reserve(60):
        with budget.reserve(40):
            pass
        assert budget.trims == 0  # small, and the budget was not empty
    assert budget.trims == (1 if can_trim else 0)
    with budget.reserve(10):
        pass
    assert budget.trims == (1 if can_trim else 0)  # small reservations leave the heap alone
