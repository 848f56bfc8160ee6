"""Interface overhead: ``/v1/imagegen`` through the interface vs the worker's ``/v1/generate`` directly.

One tiny image worker on CPU (64x64, 1 step, so the model cost is small and the overhead shows), the
interface in front of it. Closed loop: 200 sequential calls to each, interleaved, in the same run (median and
p99). Open loop: fixed request rates, a bounded count of calls each.

    python -m bench.bench_interface_overhead [--calls 200] [--rates 2,5,10] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from bench.common import open_loop, print_table, summary_ms, tiny_model_dir, write_results
from bench.stack import AUTH, worker_and_interface

BODY = {"prompt": "a lighthouse on a cliff", "width": 64, "height": 64, "steps": 1, "seed": 7}


def closed_loop(direct: str, via: str, calls: int) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"direct": [], "interface": []}
    with httpx.Client(timeout=60) as http:
        for _ in range(5):  # warm connections and code paths
            http.post(direct, json=BODY, headers=AUTH)
            http.post(via, json=BODY)
        for _ in range(calls):
            for name, url, headers in (("direct", direct, AUTH), ("interface", via, {})):
                started = time.perf_counter()
                resp = http.post(url, json=BODY, headers=headers)
                lat[name].append(time.perf_counter() - started)
                resp.raise_for_status()
    d, i = summary_ms(lat["direct"]), summary_ms(lat["interface"])
    return {
        "direct": d,
        "interface": i,
        "added_p50_ms": round(i["p50_ms"] - d["p50_ms"], 2),
        "added_p99_ms": round(i["p99_ms"] - d["p99_ms"], 2),
    }


async def rate_run(url: str, headers: dict[str, str], rate: float, count: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:

        async def call() -> int:
            return (await http.post(url, json=BODY, headers=headers)).status_code

        outcomes, wall = await open_loop(call, rate, count)
    ok = [o.seconds for o in outcomes if o.status == 200]
    return {**summary_ms(ok), "errors": sum(o.status != 200 for o in outcomes), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rates", default="2,5,10")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each open-loop rate")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    with worker_and_interface(tiny_model_dir()) as (worker, api):
        direct, via = worker.url + "/v1/generate", api.url + "/v1/imagegen"
        closed = closed_loop(direct, via, args.calls)
        open_rows = []
        for rate in rates:
            count = max(1, int(rate * args.seconds))
            d = asyncio.run(rate_run(direct, AUTH, rate, count))
            i = asyncio.run(rate_run(via, {}, rate, count))
            open_rows.append({"rate_per_s": rate, "count": count, "direct": d, "interface": i})

    print_table(
        f"Closed loop, {args.calls} sequential calls each (interleaved), 64x64, 1 step",
        ["path", "n", "p50 ms", "p99 ms", "mean ms"],
        [
            [name, s["n"], s["p50_ms"], s["p99_ms"], s["mean_ms"]]
            for name, s in (("direct", closed["direct"]), ("interface", closed["interface"]))
        ]
        + [["added", "", closed["added_p50_ms"], closed["added_p99_ms"], ""]],
    )
    print_table(
        "Open loop, fixed rates",
        ["req/s", "n", "direct p50", "direct p99", "iface p50", "iface p99", "added p50", "errors"],
        [
            [
                r["rate_per_s"],
                r["count"],
                r["direct"]["p50_ms"],
                r["direct"]["p99_ms"],
                r["interface"]["p50_ms"],
                r["interface"]["p99_ms"],
                round(r["interface"]["p50_ms"] - r["direct"]["p50_ms"], 2),
                r["direct"]["errors"] + r["interface"]["errors"],
            ]
            for r in open_rows
        ],
    )
    write_results("bench_interface_overhead", {"body": BODY, "closed_loop": closed, "open_loop": open_rows})


if __name__ == "__main__":
    main()
