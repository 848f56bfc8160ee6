"""Overload: one tiny worker behind an interface with a small queue, offered 1x to 10x its capacity.

Capacity is measured first (sequential calls through the interface); then each load level sends an open-loop
stream for a few seconds. Per level: admitted p50/p99 latency, 429 rate, how fast a 429 comes back
(p50/p99), and the 5xx count (which should be zero: overload must turn into 429s, not errors).

    python -m bench.bench_overload [--multipliers 1,2,5,10] [--seconds 5] [--queue 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from bench.common import open_loop, percentile, print_table, tiny_model_dir, write_results
from bench.stack import worker_and_interface

# Heavy enough on the tiny CPU model (tenths of a second) that 10x capacity stays a modest request rate.
BODY = {"prompt": "a busy harbour at dusk", "width": 256, "height": 256, "steps": 4, "seed": 1}


def measure_capacity(url: str, calls: int) -> float:
    with httpx.Client(timeout=120) as http:
        http.post(url, json=BODY).raise_for_status()
        started = time.perf_counter()
        for _ in range(calls):
            http.post(url, json=BODY).raise_for_status()
        return calls / (time.perf_counter() - started)


async def level(url: str, rate: float, seconds: float) -> dict[str, Any]:
    count = max(1, int(rate * seconds))
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=500)) as http:

        async def call() -> int:
            return (await http.post(url, json=BODY)).status_code

        outcomes, wall = await open_loop(call, rate, count)
    ok = [o.seconds * 1000 for o in outcomes if o.status == 200]
    refused = [o.seconds * 1000 for o in outcomes if o.status == 429]
    return {
        "offered_per_s": round(rate, 2),
        "sent": count,
        "ok": len(ok),
        "admitted_p50_ms": round(statistics.median(ok), 1) if ok else None,
        "admitted_p99_ms": round(percentile(ok, 99), 1) if ok else None,
        "rate_429": round(len(refused) / count, 3),
        "t429_p50_ms": round(statistics.median(refused), 1) if refused else None,
        "t429_p99_ms": round(percentile(refused, 99), 1) if refused else None,
        "errors_5xx": sum(1 for o in outcomes if o.status is not None and o.status >= 500),
        "transport_errors": sum(1 for o in outcomes if o.status is None),
        "goodput_per_s": round(len(ok) / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--multipliers", default="1,2,5,10")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--queue", type=int, default=4, help="text2img queue capacity")
    parser.add_argument("--capacity-calls", type=int, default=8)
    args = parser.parse_args()
    multipliers = [float(m) for m in args.multipliers.split(",")]
    overrides = json.dumps({"text2img": {"capacity": args.queue, "sla_ms": 10_000}})
    interface_extra = {"INTERFACE_QUEUE_OVERRIDES": overrides, "INTERFACE_PER_WORKER_CONCURRENCY": "1"}

    with worker_and_interface(tiny_model_dir(), interface_extra=interface_extra) as (_, api):
        url = api.url + "/v1/imagegen"
        capacity = measure_capacity(url, args.capacity_calls)
        rows = []
        for m in multipliers:
            rows.append({"multiplier": m, **asyncio.run(level(url, capacity * m, args.seconds))})
            time.sleep(1.0)  # let the queue drain between levels

    print(f"\nmeasured capacity: {capacity:.2f} req/s (256x256, 4 steps, queue capacity {args.queue})")
    print_table(
        "Offered load vs capacity",
        ["load", "req/s", "sent", "ok", "ok p50 ms", "ok p99 ms", "429 rate", "429 p50", "429 p99", "5xx"],
        [
            [
                f"{r['multiplier']:g}x",
                r["offered_per_s"],
                r["sent"],
                r["ok"],
                r["admitted_p50_ms"],
                r["admitted_p99_ms"],
                r["rate_429"],
                r["t429_p50_ms"],
                r["t429_p99_ms"],
                r["errors_5xx"] + r["transport_errors"],
            ]
            for r in rows
        ],
    )
    write_results(
        "bench_overload",
        {"body": BODY, "queue_capacity": args.queue, "capacity_per_s": round(capacity, 3), "levels": rows},
    )


if __name__ == "__main__":
    main()
