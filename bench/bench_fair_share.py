"""Fair share between API keys under a flood, and what the per-key rate limiter costs per check.

Part 1, real processes: the interface (two API keys) in front of ``bench/echo_worker.py`` with
``ECHO_DELAY_MS``, a worker with a fixed service time, so the capacity is exactly concurrency / delay. B alone
first (its unloaded latency); then key A sends at ``--flood`` x the capacity while key B sends at
1/``--flood`` of it, open loops for ``--seconds``, once per ``--shares`` value of
``INTERFACE_QUEUE_MAX_SHARE_PER_KEY`` (1.0: no bound, the queue as it was; 0.5: a key holds at most half of
the queue's places). Per key: sent, admitted, refused, admitted p50/p95; the interface's refusals by reason.
The load client is the bench's lean one, so its own CPU does not turn into latency (``lag``: how late it sent,
worst case).

Part 2, in process: ``RateLimiter.admit`` with both policies (a request and one image: two hits and two
window reads), microseconds per check over ``--keys`` distinct keys, on the storage the interface uses
(limits' synchronous MemoryStorage), on limits' asyncio MemoryStorage (not used: this is why), and on Redis
over loopback when redis-server is installed (``bash scripts/install_redis.sh``).

    python -m bench.bench_fair_share [--seconds 20] [--flood 10] [--shares 1.0,0.5] [--delay-ms 250] \
        [--concurrency 4] [--queue 8] [--checks 20000] [--keys 1,100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import redis
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindow

from bench.common import Outcome, RawHttpClient, open_loop, percentile, print_table, run_async, write_results
from bench.stack import interface_env
from devtools.service_process import ServiceProcess, free_port
from services.interface.rate_limits import (
    Counters,
    MemoryCounters,
    Policy,
    RateLimiter,
    RedisCounters,
    Window,
)
from services.interface.settings import KeyRateLimits
from shared.metrics import ServiceMetrics

KEY_A, KEY_B = "bench-key-a", "bench-key-b"
PROMPT = json.dumps({"prompt": "a lighthouse at dusk"}).encode()
REASONS = ("key_share", "full", "sla", "rate_limited")


# --- part 1: a flood and a trickle ------------------------------------------------------------------------


def key_figures(outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [o.seconds * 1000 for o in outcomes if o.status == 200]
    return {
        "sent": len(outcomes),
        "admitted": len(ok),
        "refused": sum(o.status == 429 for o in outcomes),
        "other": sum(o.status not in (200, 429) for o in outcomes),
        "p50_ms": round(percentile(ok, 50), 1),
        "p95_ms": round(percentile(ok, 95), 1),
        "lag_ms": round(max((o.lag for o in outcomes), default=0.0) * 1000, 1),
    }


def refusals(api: ServiceProcess) -> dict[str, int]:
    text = httpx.get(api.url + "/metrics", headers={"X-API-Key": KEY_A}, timeout=10).text
    out = {}
    for reason in REASONS:
        match = re.search(
            rf'imgpod_queue_rejected_total\{{queue="text2img",reason="{reason}"\}} ([0-9.e+]+)', text
        )
        out[reason] = int(float(match.group(1))) if match else 0
    return out


async def flood_and_trickle(url: str, capacity: float, flood: float, seconds: float) -> dict[str, Any]:
    a = RawHttpClient(url, PROMPT, {"X-API-Key": KEY_A})
    b = RawHttpClient(url, PROMPT, {"X-API-Key": KEY_B})
    try:
        alone, _ = await open_loop(b.call, 1.0, 10)
        rate_a, rate_b = flood * capacity, capacity / flood

        async def trickle() -> list[Outcome]:
            await asyncio.sleep(1.0)  # once A's flood holds what it may
            return (await open_loop(b.call, rate_b, max(1, int(rate_b * (seconds - 1.5)))))[0]

        (a_out, _), b_out = await asyncio.gather(open_loop(a.call, rate_a, int(rate_a * seconds)), trickle())
    finally:
        await a.aclose()
        await b.aclose()
    return {"unloaded_b": key_figures(alone), "a": key_figures(a_out), "b": key_figures(b_out)}


def fair_share(args: argparse.Namespace) -> list[dict[str, Any]]:
    capacity = args.concurrency / (args.delay_ms / 1000)
    worker_env = {
        "ECHO_DELAY_MS": str(args.delay_ms),
        "ECHO_CONCURRENCY": str(args.concurrency),
    }
    runs = []
    with ServiceProcess("bench.echo_worker", env=worker_env) as worker:
        for share in args.shares:
            env = interface_env(
                worker.url,
                INTERFACE_API_KEYS=f"{KEY_A},{KEY_B}",
                INTERFACE_QUEUE_OVERRIDES=json.dumps({"text2img": {"capacity": args.queue, "sla_ms": 30000}}),
                INTERFACE_QUEUE_MAX_SHARE_PER_KEY=str(share),
                INTERFACE_RETRY_AFTER_CAP_MS="2000",
            )
            with ServiceProcess("services.interface.main", env=env) as api:
                result = run_async(
                    flood_and_trickle(api.url + "/v1/imagegen", capacity, args.flood, args.seconds)
                )
                result |= {"share": share, "capacity_per_s": capacity, "refusals": refusals(api)}
            runs.append(result)
    rows = []
    for r in runs:
        for who in ("unloaded_b", "a", "b"):
            f = r[who]
            label = {"unloaded_b": "B alone", "a": f"A {args.flood:g}x", "b": f"B 1/{args.flood:g}x"}[who]
            rows.append(
                [
                    r["share"],
                    label,
                    f["sent"],
                    f["admitted"],
                    f["refused"],
                    f["other"],
                    f["p50_ms"],
                    f["p95_ms"],
                    f["lag_ms"],
                ]
            )
    print_table(
        f"Fair share: capacity {capacity:g}/s ({args.concurrency} x {args.delay_ms} ms), queue {args.queue}, "
        f"{args.seconds:g} s per run",
        ["share", "key", "sent", "admitted", "429", "other", "p50 ms", "p95 ms", "lag ms"],
        rows,
    )
    print_table(
        "Refusals by reason (imgpod_queue_rejected_total)",
        ["share", *REASONS],
        [[r["share"], *(r["refusals"][k] for k in REASONS)] for r in runs],
    )
    return runs


# --- part 2: the limiter's cost per check -------------------------------------------------------------------


class AsyncMemoryCounters:
    """limits' asyncio MemoryStorage behind the same interface, for comparison only."""

    def __init__(self) -> None:
        self.storage = AsyncMemoryStorage()
        self.strategy = AsyncSlidingWindow(self.storage)

    async def hit(self, policy: Policy, key: str, cost: int) -> bool:
        return await self.strategy.hit(policy.item, key, cost=cost)

    async def window(self, policy: Policy, key: str) -> Window:
        return Window(*await self.storage.get_sliding_window(policy.item.key_for(key), policy.window_s))

    async def windows(self, policies: list[Policy], key: str) -> list[Window]:
        return [await self.window(policy, key) for policy in policies]

    async def close(self) -> None:
        return None


async def us_per_check(counters: Counters, keys: int, checks: int) -> tuple[float, float]:
    """Wall and the loop thread's CPU per check, in microseconds (Redis: the wall includes the round trips,
    the CPU is what the client costs the loop)."""
    huge = KeyRateLimits(requests_per_minute=10**9, images_per_hour=10**9)
    limiter = RateLimiter(huge, {}, counters, ServiceMetrics("bench"))
    ids = [f"key-{i}" for i in range(keys)]
    for key in ids:  # every key has counts, as on a server that has seen them all
        await limiter.admit(key, 1)
    # The loop turn between two requests (``sleep(0)``) is measured alone and taken off: what the storage
    # schedules on the loop (limits' asyncio memory storage sweeps in a task) still counts.
    started, cpu = time.perf_counter(), time.thread_time()
    for _ in range(checks):
        await asyncio.sleep(0)
    turn, turn_cpu = time.perf_counter() - started, time.thread_time() - cpu
    started, cpu = time.perf_counter(), time.thread_time()
    for i in range(checks):
        await limiter.admit(ids[i % keys], 1)
        await asyncio.sleep(0)
    spent, spent_cpu = time.perf_counter() - started - turn, time.thread_time() - cpu - turn_cpu
    await limiter.close()
    return round(spent / checks * 1e6, 1), round(spent_cpu / checks * 1e6, 1)


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    server = shutil.which("redis-server")
    if server is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [*cmd, "--dir", scratch], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def limiter_cost(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with redis_server() as redis_url:
        stores: list[tuple[str, Any]] = [
            ("memory (limits sync MemoryStorage, used)", MemoryCounters),
            ("limits asyncio MemoryStorage (not used)", AsyncMemoryCounters),
        ]
        if redis_url:
            stores.append(("redis over loopback", lambda: RedisCounters(redis_url, 1.0)))
        for name, make in stores:
            for keys in args.keys:
                # The asyncio memory storage sweeps every key per hit: fewer checks keep it to seconds.
                checks = args.checks if "asyncio" not in name or keys < 1000 else max(200, args.checks // 20)
                if name.startswith("redis"):
                    checks = max(200, args.checks // 10)
                wall, cpu = run_async(us_per_check(make(), keys, checks))
                results.append(
                    {
                        "storage": name,
                        "keys": keys,
                        "checks": checks,
                        "us_per_check": wall,
                        "loop_cpu_us": cpu,
                    }
                )
    print_table(
        "Rate limiter: one admission check (a request and an image: 2 hits + 2 window reads)",
        ["storage", "keys", "checks", "us per check", "loop CPU us"],
        [[r["storage"], r["keys"], r["checks"], r["us_per_check"], r["loop_cpu_us"]] for r in results],
    )
    if not redis_url:
        print("(redis-server not installed: no Redis row; bash scripts/install_redis.sh)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--flood", type=float, default=10.0, help="A at this x capacity, B at 1/this")
    parser.add_argument("--shares", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 0.5])
    parser.add_argument("--delay-ms", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--keys", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000])
    parser.add_argument("--skip-load", action="store_true", help="only part 2")
    args = parser.parse_args()
    data: dict[str, Any] = {"args": vars(args)}
    if not args.skip_load:
        data["fair_share"] = fair_share(args)
    data["limiter_cost"] = limiter_cost(args)
    write_results("fair_share", data)


if __name__ == "__main__":
    main()
