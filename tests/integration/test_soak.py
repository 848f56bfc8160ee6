"""A short soak: the whole stack under mixed traffic at 1x and 3x its measured capacity, a worker killed.

``bench/soak.py`` does the work (and, run as ``python -m bench.soak``, the long version). This test runs two
load levels of a few seconds each, SIGKILLs one of the two text2img workers part-way through the second, and
asserts every invariant that does not depend on the machine's speed: exactly one answer per request, only
allowed statuses, Retry-After on every 429, per-worker peak in flight within what each worker advertises,
and bounded RSS growth. The speed goals (429 p99 <= 20 ms, /healthz p99 < 50 ms, admitted p99 within the
SLA) are printed here and judged by the benchmark only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakConfig, run_soak
from bench.soak_stack import StackConfig

pytestmark = pytest.mark.integration

LOADS = (1.0, 3.0)


def test_soak_short_run_keeps_every_invariant(tiny_models: dict[str, Path]) -> None:
    cfg = SoakConfig(
        loads=LOADS,
        seconds=8.0,
        capacity_seconds=4.0,
        capacity_clients=8,
        kill_loads=(LOADS[-1],),  # the last level: no restart needed afterwards
        kill_at=0.4,
        request_timeout_s=60.0,
        stack=StackConfig(sla_ms=10_000.0),
    )
    result = run_soak(cfg, tiny_models)

    # The harness did what it claims, so a pass means something: traffic flowed through every good flow,
    # and the victim was serving when it was killed (so the kill cut requests off mid-way).
    assert result.capacity_per_s > 0.5, result.capacity_sample
    assert [lv.load for lv in result.levels] == list(LOADS)
    killed = result.levels[-1]
    assert killed.killed_at_s is not None
    assert (killed.victim_in_flight_at_kill or 0) >= 1, "the victim was idle when it was killed"
    assert all(lv.sent > 0 for lv in result.levels)
    for flow in ("profile", "chat1to1", "shorts", "scenes", "private", "imagegen", "reply"):
        ok = sum(lv.by_flow.get(flow, {}).get("200", 0) for lv in result.levels)
        assert ok > 0, (flow, [lv.by_flow.get(flow) for lv in result.levels])

    failed = result.failed(include_speed=False)
    assert not failed, (
        "\n".join(f"{load:g}x {inv.name}: {inv.value} (limit {inv.limit})" for load, inv in failed)
        + "\n"
        + "\n".join(f"{lv.load:g}x outside allowed: {lv.bad_responses}" for lv in result.levels)
    )
