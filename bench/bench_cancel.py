"""The image worker's progress stream and its cancel, on one tiny Z-Image worker (CPU, 512x512).

Three figures, each over ``--calls`` calls:

* stream cost: a plain call and a streamed one of the same request (paired, alternating), end to end;
* step gap: the time between two progress lines reaching the client (what a progress bar sees);
* cancel: the client closes the stream after step 2; the steps the pipeline still ran for it
  (``imgpod_image_steps_total``) and the time until the worker counted the cancel (/metrics, polled every
  2 ms, so this is an upper bound).

    python -m bench.bench_cancel [--calls 10] [--steps 50]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

import httpx

from bench.common import percentile, print_table, tiny_model_dir, write_results
from bench.stack import AUTH, worker_env
from devtools.service_process import ServiceProcess
from shared.progress_stream import MEDIA_TYPE, Final, Progress, parse_line

ROUTE = "/v1/chat/1to1/generate"


def metric(client: httpx.Client, name: str) -> float:
    text = client.get("/metrics").text
    return next(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " "))


def plain(client: httpx.Client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    client.post(ROUTE, json=body).raise_for_status()
    return time.perf_counter() - started


def streamed(client: httpx.Client, body: dict[str, Any]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    arrivals: list[float] = []
    with client.stream("POST", ROUTE, json=body, headers={"Accept": MEDIA_TYPE}) as resp:
        for line in resp.iter_lines():
            item = parse_line(line)
            if isinstance(item, Progress):
                arrivals.append(time.perf_counter())
            elif isinstance(item, Final) and item.status != 200:
                raise RuntimeError(f"stream ended with {item.status}")
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return time.perf_counter() - started, gaps


def canceled(client: httpx.Client, body: dict[str, Any], steps: int) -> tuple[float, float]:
    """Steps run after the close, and seconds from the close until the worker counted the cancel."""
    before_steps = metric(client, "imgpod_image_steps_total")
    before_canceled = metric(client, "imgpod_image_canceled_total")
    with client.stream("POST", ROUTE, json=body, headers={"Accept": MEDIA_TYPE}) as resp:
        lines = resp.iter_lines()
        for _ in range(2):
            next(lines)
    closed = time.perf_counter()
    while metric(client, "imgpod_image_canceled_total") == before_canceled:
        time.sleep(0.002)
    counted = time.perf_counter() - closed
    while metric(client, "imgpod_image_steps_total") == before_steps:
        time.sleep(0.002)
    ran = metric(client, "imgpod_image_steps_total") - before_steps
    return ran - 2, counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    body = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": args.steps, "seed": 1}
    with (
        ServiceProcess("services.chat1to1_worker.main", env=worker_env(tiny_model_dir())) as worker,
        httpx.Client(base_url=worker.url, headers=AUTH, timeout=120) as client,
    ):
        plain(client, body)  # first call at this size
        plain_s: list[float] = []
        stream_s: list[float] = []
        gaps: list[float] = []
        for i in range(args.calls):
            for kind in ("plain", "stream") if i % 2 == 0 else ("stream", "plain"):
                if kind == "plain":
                    plain_s.append(plain(client, body))
                else:
                    total, call_gaps = streamed(client, body)
                    stream_s.append(total)
                    gaps.extend(call_gaps)
        after_close = [canceled(client, body, args.steps) for _ in range(args.calls)]
    ms = {"plain call": [s * 1000 for s in plain_s], "streamed call": [s * 1000 for s in stream_s]}
    ms["step gap"] = [s * 1000 for s in gaps]
    ms["close -> cancel counted"] = [c * 1000 for _, c in after_close]
    rows: list[list[Any]] = [
        [name, round(statistics.median(v), 2), round(percentile(v, 90), 2)] for name, v in ms.items()
    ]
    extra = [s for s, _ in after_close]
    rows.append(["steps run after close", statistics.median(extra), percentile(extra, 90)])
    print_table(
        f"progress stream and cancel, 512x512, {args.steps} steps, {args.calls} calls each",
        ["", "p50", "p90"],
        rows,
    )
    write_results("bench_cancel", {"calls": args.calls, "steps": args.steps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
