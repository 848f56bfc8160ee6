"""Bounded concurrent load against the interface: throughput, p50/p99 latency, 429s and errors.

Closed loop: --concurrency clients each send requests back to back until --requests are sent or
--duration seconds pass, whichever comes first. It only ever targets the configured interface URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testing.client import add_config_arg

BODIES: dict[str, tuple[str, dict[str, object]]] = {
    "imagegen": ("/v1/imagegen", {"prompt": "a lighthouse on a cliff at dawn", "width": 64, "height": 64}),
    "private": ("/v1/chat/private/imagegen", {"prompt": "a cosy reading nook", "width": 64, "height": 64}),
    "chat1to1": ("/v1/chat/1to1/imagegen", {"message": "a picture of you hiking", "width": 64, "height": 64}),
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    config = json.loads(args.config.read_text())
    headers = {"X-API-Key": config["api_key"]} if config.get("api_key") else {}
    path, body = BODIES[args.endpoint]
    latencies: list[float] = []
    codes: dict[int, int] = {}
    transport_errors = 0
    sent = 0
    deadline = time.monotonic() + args.duration

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent, transport_errors
        while sent < args.requests and time.monotonic() < deadline:
            sent += 1
            started = time.perf_counter()
            try:
                resp = await client.post(path, json=body)
            except httpx.HTTPError:
                transport_errors += 1
                continue
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=config["interface_base_url"].rstrip("/"), headers=headers, timeout=args.timeout
    ) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    return {
        "endpoint": args.endpoint,
        "concurrency": args.concurrency,
        "sent": sent,
        "ok": codes.get(200, 0),
        "rejected_429": codes.get(429, 0),
        "errors_5xx": sum(n for c, n in codes.items() if c >= 500),
        "transport_errors": transport_errors,
        "status_counts": codes,
        "throughput_rps": round(codes.get(200, 0) / wall, 2),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arg(parser)
    parser.add_argument("--endpoint", choices=sorted(BODIES), default="imagegen")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40, help="upper bound of requests sent")
    parser.add_argument("--duration", type=float, default=60.0, help="upper bound in seconds")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.duration <= 0:
        parser.error("concurrency, requests and duration must be positive")
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
