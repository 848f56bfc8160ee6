"""Added latency of the OpenAI-compatible route over the native one, on the same interface and upstream.

``--calls`` sequential pairs, interleaved (native ``POST /v1/imagegen``, then ``POST /v1/images/generations``
with ``response_format=b64_json``, same prompt, size and seed), so both see the same machine state. Prints
median and p90 of each and the added milliseconds per call (paired: the median of the per-pair differences).

    python -m bench.bench_openai_images [--calls 100] [--upstream tiny|echo]

``tiny`` (default) is one tiny Z-Image worker on CPU (64x64, 1 step); ``echo`` is ``bench/echo_worker.py``,
a server that answers at once, so the interface's own share is all there is to see.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx

from bench.common import percentile, print_table, tiny_model_dir, write_results
from bench.stack import echo_and_interface, worker_and_interface


def _timed(client: httpx.Client, path: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    resp = client.post(path, json=body)
    elapsed = time.perf_counter() - started
    resp.raise_for_status()
    return elapsed


def measure(url: str, calls: int) -> dict[str, list[float]]:
    native = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "seed": 1}
    compat = {"prompt": "a lighthouse at dusk", "size": "64x64", "response_format": "b64_json", "seed": 1}
    out: dict[str, list[float]] = {"native": [], "openai": []}
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(3):  # warm-up: connections, first-call costs
            _timed(client, "/v1/imagegen", native)
            _timed(client, "/v1/images/generations", compat)
        for i in range(calls):
            # Alternate which goes first, so neither always runs right after the other.
            order = [("native", "/v1/imagegen", native), ("openai", "/v1/images/generations", compat)]
            for name, path, body in order if i % 2 == 0 else order[::-1]:
                out[name].append(_timed(client, path, body))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--upstream", choices=("tiny", "echo"), default="tiny")
    args = parser.parse_args(argv)
    if args.upstream == "tiny":
        stack = worker_and_interface(tiny_model_dir(), worker_extra={"IMAGE_DEFAULT_STEPS": "1"})
    else:
        stack = echo_and_interface()
    with stack as (_, api):
        times = measure(api.url, args.calls)
    ms = {k: [s * 1000 for s in v] for k, v in times.items()}
    added = [o - n for n, o in zip(ms["native"], ms["openai"], strict=True)]
    rows = [[name, round(statistics.median(v), 2), round(percentile(v, 90), 2)] for name, v in ms.items()] + [
        ["added (paired)", round(statistics.median(added), 2), round(percentile(added, 90), 2)]
    ]
    print_table(
        f"native vs OpenAI route, {args.calls} pairs, upstream {args.upstream}",
        ["", "p50 ms", "p90 ms"],
        rows,
    )
    write_results(f"openai_images-{args.upstream}", {"calls": args.calls, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
