"""Soak: mixed traffic over every public flow at multiples of the measured capacity, with a worker killed.

The whole local stack runs as real processes (``bench/soak_stack.py``: LLM, selfie worker, four role image
workers and two general image workers behind the interface's text2img pool). The harness

1. measures capacity: a closed loop of the good mix for a few seconds, successful requests per second;
   then warms up with a short unjudged burst at the top load level, so the RSS baseline already holds the
   most requests at once the run will see;
2. per load level (default 1x, 2x, 5x that capacity) drives an open loop (fixed arrival rate, whatever the
   answers) for a bounded time, SIGKILLs one of the two text2img workers part-way through, and starts it
   again before the next level. So that the kill cuts work off instead of landing while the worker happens
   to be idle, the victim runs with its test gate (``shared/test_hooks.py``, on that worker only): at
   ``kill_at`` the gate closes, and the worker dies as soon as a request it was sent is parked there;
3. checks and prints, per level, these invariants:

   - every request got exactly one response: an HTTP answer carrying its own request id, no transport
     error, nothing past the client's bound, and the interface counted as many answers as were sent;
   - only 200, declared 4xx (401, 413, 415, 422), 429, 503 and 504: never a 502 or a 500;
   - every 429 carries Retry-After, and 429s come back within 20 ms p99 (speed);
   - admitted (200) p99 within the interface's queue SLA (speed);
   - per-worker peak in flight (``imgpod_http_in_flight_max``) <= what the interface may send it: the
     worker's advertised ``concurrency`` x ``max_batch`` bounded by the interface's per-pool setting;
   - ``/healthz`` p99 of the interface and every worker < 50 ms, polled a few times a second (speed);
   - RSS of every service grows < 10 % from the end of the warm-up to the end of each level.

The mix also carries a few requests that must be refused with a declared 4xx (policy block, bad field,
wrong key, non-image upload), so those paths are under load too. Every loop is bounded in count and time,
and all traffic goes to loopback.

    python -m bench.soak [--seconds 30] [--loads 1,2,5] [--capacity-seconds 6] [--no-kill]

Speed invariants are printed and judged here, and only asserted by a benchmark run: the test suite's short
run (``tests/integration/test_soak.py``) asserts the others.

This module holds the command line and the run's order of events; the traffic is ``bench/soak_traffic.py``,
the observers ``bench/soak_observers.py``, the judging ``bench/soak_invariants.py`` and the tables
``bench/soak_report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import write_results
from bench.soak_invariants import LevelResult, SoakResult, judge
from bench.soak_observers import (
    HealthPoller,
    PeakTracker,
    cpu_delta,
    cpu_of,
    interface_counters,
    rss_of,
    sample,
    scrape,
    served_by_interface,
)
from bench.soak_report import print_level, print_summary
from bench.soak_stack import TEXT2IMG, VICTIM, WORKER_AUTH, SoakStack, StackConfig, soak_stack
from bench.soak_traffic import build_mix, measure_capacity, open_loop, schedule


@dataclass(slots=True)
class SoakConfig:
    loads: tuple[float, ...] = (1.0, 2.0, 5.0)
    seconds: float = 30.0  # arrival window of each load level
    capacity_seconds: float = 6.0
    capacity_clients: int = 12
    # After the capacity run: seconds of open-loop traffic at the top load level, not judged (0: none).
    warmup_burst_s: float = 3.0
    # Load levels (multipliers) during which the victim is killed; None: every level.
    kill_loads: tuple[float, ...] | None = None
    kill_at: float = 0.4  # fraction of the arrival window
    kill_wait_busy_s: float = 5.0  # at most this long after kill_at for the victim to hold a request
    request_timeout_s: float = 60.0  # the client's bound: past it a request counts as hung
    health_rate_hz: float = 4.0
    seed: int = 7
    max_requests_per_level: int = 5000
    log_dir: Path | None = None  # the services' logs, kept; None: a temporary directory
    stack: StackConfig = field(default_factory=StackConfig)

    def kills_in(self, load: float) -> bool:
        return self.kill_loads is None or load in self.kill_loads


def hold_and_wait(stack: SoakStack, name: str, timeout_s: float) -> float | None:
    """Make sure the worker holds requests when it dies; how many it held (None: unknown).

    Killing a worker that happens to be idle tests nothing. With its test gate (``victim_gate``) the next
    requests it gets park there, and this returns once one has (bounded); without, it polls the worker's
    ``imgpod_http_in_flight`` until that is 1 or more.
    """
    url = stack.procs[name].url
    deadline = time.monotonic() + timeout_s
    try:
        gated = httpx.post(url + "/v1/test/gate/close", headers=WORKER_AUTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        gated = False
    value: float | None = None
    while time.monotonic() < deadline:
        if gated:
            try:
                gate = httpx.get(url + "/v1/test/gate", headers=WORKER_AUTH, timeout=2).json()
                value = float(gate["parked"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                value = None
        else:
            value = sample(scrape(url, WORKER_AUTH, timeout_s=1.0), "imgpod_http_in_flight")
            if value is None:
                return None
        if value is not None and value >= 1:
            return value
        time.sleep(0.01)
    return value


def wait_idle(stack: SoakStack, timeout_s: float = 60.0) -> bool:
    """Until every interface queue is empty and idle (bounded); True when it got there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            queues = httpx.get(stack.interface.url + "/healthz", timeout=5).json().get("queues", {})
            if all(q.get("depth", 0) == 0 and q.get("in_flight", 0) == 0 for q in queues.values()):
                return True
        time.sleep(0.25)
    return False


# --- the run ---------------------------------------------------------------------------------------------


def run_soak(
    cfg: SoakConfig | None = None,
    models: dict[str, Path] | None = None,
    *,
    print_tables: bool = True,
) -> SoakResult:
    """Start the stack, measure capacity, run every load level, judge and (optionally) print."""
    cfg = cfg or SoakConfig()
    mix = build_mix()
    good_share = sum(f.weight for f in mix if f.good) / sum(f.weight for f in mix)
    levels: list[LevelResult] = []
    restarts: list[float] = []
    with (
        soak_stack(cfg.stack, models, cfg.log_dir) as stack,
        HealthPoller(stack, cfg.health_rate_hz) as poller,
    ):
        capacity, cap_records = _run(
            measure_capacity(
                stack, mix, cfg.capacity_seconds, cfg.capacity_clients, cfg.request_timeout_s, cfg.seed
            )
        )
        capacity = max(capacity, 0.5)
        wait_idle(stack)
        rss_after_capacity = rss_of(stack)
        warmup: dict[str, int] = {}
        if cfg.warmup_burst_s > 0:
            # Steady state includes the most requests at once the run will see: a short burst at the top
            # level, so RSS growth afterwards is memory that keeps growing, not the allocator's high-water.
            rate = capacity * max(cfg.loads) / good_share
            plan = schedule(mix, max(1, round(rate * cfg.warmup_burst_s)), cfg.seed - 1)
            burst = _run(open_loop(stack, plan, rate, "warmup", cfg.request_timeout_s, None, lambda: None))
            warmup = dict(Counter("transport" if r.status is None else str(r.status) for r in burst.records))
            wait_idle(stack)
        peaks = PeakTracker(stack)
        peaks.read()
        rss_start = rss_of(stack)

        def arm_kill() -> float | None:
            peaks.read([VICTIM])
            return hold_and_wait(stack, VICTIM, cfg.kill_wait_busy_s)

        for n, load in enumerate(cfg.loads):
            rate = capacity * load / good_share
            count = min(cfg.max_requests_per_level, max(1, round(rate * cfg.seconds)))
            plan = schedule(mix, count, cfg.seed + n + 1)
            kill_s = cfg.seconds * cfg.kill_at if cfg.kills_in(load) else None
            before = served_by_interface(stack)
            cpu_start = cpu_of(stack)
            run = _run(
                open_loop(
                    stack,
                    plan,
                    rate,
                    f"{load:g}x",
                    cfg.request_timeout_s,
                    kill_s,
                    arm_kill,
                )
            )
            wait_idle(stack)
            time.sleep(0.3)  # the interface counts an answer just after sending it
            after = served_by_interface(stack)
            peaks.read()
            cpu = cpu_delta(cpu_start, cpu_of(stack))
            result = judge(
                load,
                rate,
                run,
                cfg.stack.sla_ms,
                None if before is None or after is None else after - before,
                poller.window(run.began, run.ended),
                peaks.peaks(),
                rss_start,
                rss_of(stack),
                set(stack.restarted) | ({VICTIM} if kill_s is not None else set()),
                interface_counters(stack),
                cpu,
            )
            levels.append(result)
            if print_tables:
                print_level(result, capacity)
            if kill_s is not None and n + 1 < len(cfg.loads):
                restarts.append(round(stack.restart(VICTIM), 1))
                peaks.read([VICTIM])
    result = SoakResult(
        capacity_per_s=round(capacity, 3),
        capacity_sample=dict(Counter(str(r.status) for r in cap_records)),
        warmup_sample=warmup,
        rss_mb={
            "after_capacity": {n: round(v / 2**20, 1) for n, v in rss_after_capacity.items()},
            "baseline": {n: round(v / 2**20, 1) for n, v in rss_start.items()},
        },
        levels=levels,
        restart_s=restarts,
        config=dataclasses.asdict(cfg) | {"text2img_workers": list(TEXT2IMG), "victim": VICTIM},
    )
    if print_tables:
        print_summary(result)
    return result


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="arrival window per load level")
    parser.add_argument("--loads", default="1,2,5", help="multiples of the measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--capacity-clients", type=int, default=12)
    parser.add_argument("--warmup-burst", type=float, default=3.0, help="seconds at the top level, unjudged")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of each level's window")
    parser.add_argument("--no-kill", action="store_true", help="keep both text2img workers alive")
    parser.add_argument("--sla-ms", type=float, default=10_000.0)
    parser.add_argument("--queue-capacity", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=60.0, help="client bound per request, seconds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    loads = tuple(float(x) for x in args.loads.split(","))
    if not loads or any(x <= 0 for x in loads) or args.seconds <= 0 or not 0 < args.kill_at < 1:
        parser.error("loads and seconds must be positive, --kill-at within (0, 1)")
    cfg = SoakConfig(
        loads=loads,
        seconds=args.seconds,
        capacity_seconds=args.capacity_seconds,
        capacity_clients=args.capacity_clients,
        warmup_burst_s=args.warmup_burst,
        kill_loads=() if args.no_kill else None,
        kill_at=args.kill_at,
        request_timeout_s=args.timeout,
        seed=args.seed,
        log_dir=Path(tempfile.mkdtemp(prefix="imgpod-soak-logs-")),
        stack=StackConfig(sla_ms=args.sla_ms, queue_capacity=args.queue_capacity),
    )
    print(f"service logs: {cfg.log_dir}")
    result = run_soak(cfg)
    write_results("soak", result.to_json())
    failed = result.failed(include_speed=True)
    for load, inv in failed:
        print(f"FAIL {load:g}x: {inv.name}: {inv.value} (limit {inv.limit})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
