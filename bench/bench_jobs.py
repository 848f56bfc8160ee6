"""Jobs: the added latency of the async path over the synchronous one, and jobs/s on one replica vs two.

Latency (``--calls`` interleaved pairs on the same interface and upstream, same prompt and seed): synchronous
``POST /v1/imagegen``, against the async path as a client runs it: ``POST`` with ``Prefer: respond-async``,
then ``GET /v1/jobs/{id}/events`` until the ``completed`` event, then ``GET /v1/jobs/{id}`` for the result.
Prints p50/p90 of each and the paired added milliseconds.

Throughput (``--replicas``, needs ``redis-server``): ``--jobs`` async jobs submitted at once, spread over one
interface or two interface replicas sharing one Redis, all waited for; jobs/s from the first submit to the
last completion. The upstream is the echo worker (``bench/echo_worker.py``, ``ECHO_DELAY_MS`` per call, 8 at
a time), so the interfaces' own cost is what differs.

    python -m bench.bench_jobs [--calls 60] [--upstream tiny|echo] [--replicas] [--jobs 400]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench.common import percentile, print_table, tiny_model_dir, write_results
from bench.stack import echo_and_interface, interface_env, worker_and_interface
from devtools.service_process import ServiceProcess

BODY = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "seed": 1}
ASYNC = {"Prefer": "respond-async"}


def _sync(client: httpx.Client) -> float:
    started = time.perf_counter()
    client.post("/v1/imagegen", json=BODY).raise_for_status()
    return time.perf_counter() - started


def _async(client: httpx.Client) -> float:
    started = time.perf_counter()
    resp = client.post("/v1/imagegen", json=BODY, headers=ASYNC)
    resp.raise_for_status()
    job = resp.json()
    with client.stream("GET", job["urls"]["stream"]) as events:
        for line in events.iter_lines():
            if line.startswith("event:") and line.split(":", 1)[1].strip() in ("completed", "failed"):
                break
    result = client.get(job["urls"]["get"]).json()
    elapsed = time.perf_counter() - started
    if result["status"] != "succeeded":
        raise RuntimeError(f"job ended {result['status']}")
    return elapsed


def progress_lag(url: str, jobs: int, steps: int = 8) -> list[float]:
    """Seconds from the interface publishing a progress event (its ``at``) to this client reading it."""
    lags: list[float] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(jobs):
            body = {**BODY, "seed": 1000 + i, "steps": steps, "width": 256, "height": 256}
            job = client.post("/v1/imagegen", json=body, headers=ASYNC).json()
            with client.stream("GET", job["urls"]["stream"]) as events:
                name = None
                for line in events.iter_lines():
                    if line.startswith("event:"):
                        name = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and name == "progress":
                        lags.append(time.time() - json.loads(line.split(":", 1)[1])["at"])
                    if name in ("completed", "failed"):
                        break
    return lags


def latency(url: str, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sync": [], "async": []}
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(3):
            _sync(client)
            _async(client)
        for i in range(calls):
            order = [("sync", _sync), ("async", _async)]
            for name, call in order if i % 2 == 0 else order[::-1]:
                out[name].append(call(client))
    return out


@contextlib.contextmanager
def replicas(count: int, redis_url: str, upstream: str) -> Iterator[list[ServiceProcess]]:
    env = interface_env(
        upstream,
        INTERFACE_JOBS_REDIS_URL=redis_url,
        INTERFACE_QUEUE_CAPACITY="1000",
        INTERFACE_QUEUE_SLA_MS="600000",
        INTERFACE_PER_WORKER_CONCURRENCY="8",
    )
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(ServiceProcess("services.interface.main", env=env)) for _ in range(count)]


def throughput(apis: list[ServiceProcess], jobs: int) -> float:
    clients = [httpx.Client(base_url=api.url, timeout=120) for api in apis]
    try:
        started = time.perf_counter()
        ids = []
        for i in range(jobs):
            resp = clients[i % len(clients)].post("/v1/imagegen", json={**BODY, "seed": i}, headers=ASYNC)
            resp.raise_for_status()
            ids.append(resp.json()["id"])
        # Jobs end about in the order they were queued: read them in that order and wait at the first one
        # still going, so the polling itself costs the interfaces little.
        pending = list(ids)
        while pending:
            status = clients[len(pending) % len(clients)].get(f"/v1/jobs/{pending[0]}").json()["status"]
            if status in ("queued", "running"):
                time.sleep(0.02)
            else:
                pending.pop(0)
        return jobs / (time.perf_counter() - started)
    finally:
        for client in clients:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--upstream", choices=("tiny", "echo"), default="tiny")
    parser.add_argument("--replicas", action="store_true", help="jobs/s on one replica vs two (Redis)")
    parser.add_argument("--jobs", type=int, default=400)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.upstream == "tiny":
        stack = worker_and_interface(tiny_model_dir(), worker_extra={"IMAGE_DEFAULT_STEPS": "1"})
    else:
        stack = echo_and_interface()
    with stack as (_, api):
        times = latency(api.url, args.calls)
        lags = progress_lag(api.url, 10) if args.upstream == "tiny" else []
    ms = {k: [s * 1000 for s in v] for k, v in times.items()}
    added = [a - s for s, a in zip(ms["sync"], ms["async"], strict=True)]
    rows = [[name, round(statistics.median(v), 2), round(percentile(v, 90), 2)] for name, v in ms.items()]
    rows.append(["added (paired)", round(statistics.median(added), 2), round(percentile(added, 90), 2)])
    print_table(
        f"sync vs async job path, {args.calls} pairs, upstream {args.upstream}",
        ["", "p50 ms", "p90 ms"],
        rows,
    )
    results["latency"] = {"calls": args.calls, "upstream": args.upstream, "rows": rows}
    if lags:
        lag_ms = [lag * 1000 for lag in lags]
        lag_row = [len(lag_ms), round(statistics.median(lag_ms), 2), round(percentile(lag_ms, 99), 2)]
        print_table(
            "progress event: interface publish -> client read", ["events", "p50 ms", "p99 ms"], [lag_row]
        )
        results["progress_lag_ms"] = lag_row
    if args.replicas:
        import tempfile
        from pathlib import Path

        from tests.helpers.redis_server import running_redis_server

        rates = []
        scratch = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
        with (
            running_redis_server(scratch) as server,
            ServiceProcess("bench.echo_worker", env={"ECHO_DELAY_MS": "20"}) as echo,
        ):
            for count in (1, 2):
                with replicas(count, server.url, echo.url) as apis:
                    rates.append([count, round(throughput(apis, args.jobs), 1)])
        print_table(f"async jobs/s, {args.jobs} jobs, echo upstream (20 ms)", ["replicas", "jobs/s"], rates)
        results["throughput"] = rates
    write_results(f"jobs-{args.upstream}", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
