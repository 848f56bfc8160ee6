"""What partial images cost the image worker, on one tiny Z-Image worker (CPU).

The same streamed request (``Accept: application/x-ndjson``) with 0, 1 and 3 partial images, interleaved
over ``--calls`` rounds: the end-to-end time of each, its ratio to the call without partial images, and when
the first partial image reached the client (as a share of the call). A partial image is one VAE decode of one
row between two steps, then a PNG encode (and, on a moderated route, the pixel check) in a thread, so its
cost follows the decode's share of the call: large on the tiny model (its transformer is almost free), a few
percent on the production model (a 1024x1024 decode next to 8 steps of a 6B transformer).

    python -m bench.bench_partial_images [--calls 10] [--size 256] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx

from bench.common import percentile, print_table, tiny_model_dir, write_results
from bench.stack import AUTH, worker_env
from devtools.service_process import ServiceProcess
from shared.progress_stream import MEDIA_TYPE, Final, Progress, parse_line

ROUTE = "/v1/chat/1to1/generate"


def streamed(client: httpx.Client, body: dict[str, Any]) -> tuple[float, float | None, int]:
    """Seconds for the call, seconds until the first partial image, partial images received."""
    started = time.perf_counter()
    first: float | None = None
    partials = 0
    with client.stream("POST", ROUTE, json=body, headers={"Accept": MEDIA_TYPE}) as resp:
        for line in resp.iter_lines():
            item = parse_line(line)
            if isinstance(item, Progress) and item.partial_image is not None:
                partials += 1
                if first is None:
                    first = time.perf_counter() - started
            elif isinstance(item, Final) and item.status != 200:
                raise RuntimeError(f"stream ended with {item.status}")
    return time.perf_counter() - started, first, partials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size, "steps": args.steps}
    counts = (0, 1, 3)
    times: dict[int, list[float]] = {k: [] for k in counts}
    firsts: dict[int, list[float]] = {k: [] for k in counts}
    received: dict[int, set[int]] = {k: set() for k in counts}
    with (
        ServiceProcess("services.chat1to1_worker.main", env=worker_env(tiny_model_dir())) as worker,
        httpx.Client(base_url=worker.url, headers=AUTH, timeout=300) as client,
    ):
        streamed(client, {**body, "seed": 0})  # first call at this size
        for i in range(args.calls):
            order = counts if i % 2 == 0 else counts[::-1]
            for k in order:
                total, first, got = streamed(client, {**body, "seed": i, "partial_images": k})
                times[k].append(total)
                received[k].add(got)
                if first is not None:
                    firsts[k].append(first / total)
    base = statistics.median(times[0])
    rows: list[list[Any]] = []
    for k in counts:
        p50 = statistics.median(times[k])
        first_share = round(statistics.median(firsts[k]), 2) if firsts[k] else "-"
        rows.append(
            [
                k,
                sorted(received[k]),
                round(p50 * 1000, 1),
                round(percentile(times[k], 90) * 1000, 1),
                round(p50 / base, 3),
                first_share,
            ]
        )
    print_table(
        f"partial images, {args.size}x{args.size}, {args.steps} steps, {args.calls} calls each (tiny, CPU)",
        [
            "partial_images",
            "received",
            "p50 ms",
            "p90 ms",
            "x no partials",
            "first partial at (share of call)",
        ],
        rows,
    )
    write_results(
        "bench_partial_images", {"calls": args.calls, "size": args.size, "steps": args.steps, "rows": rows}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
