"""Run every bench in turn (each in its own process) and print a short summary from their JSON results.

python -m bench.bench_all
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

from bench.common import REPO_ROOT, RESULTS_DIR

BENCHES = ["bench_interface_overhead", "bench_overload", "bench_image_batch", "bench_policy", "bench_guard"]


def main() -> None:
    ran: dict[str, str] = {}
    for name in BENCHES:
        if importlib.util.find_spec(f"bench.{name}") is None:
            ran[name] = "not present"
            continue
        print(f"\n===== {name} =====", flush=True)
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=REPO_ROOT)
        ran[name] = f"rc={rc} in {time.perf_counter() - started:.0f}s"
    if importlib.util.find_spec("bench.bench_image_batch") is not None:
        subprocess.call([sys.executable, "-m", "bench.bench_image_batch", "--real-size"], cwd=REPO_ROOT)

    print("\n===== summary =====")
    for name, status in ran.items():
        print(f"{name}: {status}")
    overhead = _load("bench_interface_overhead")
    if overhead:
        c = overhead["closed_loop"]
        print(
            f"interface overhead over {c['direct']['n']} calls: "
            f"+{c['added_p50_ms']} ms median, +{c['added_p99_ms']} ms p99"
        )
    overload = _load("bench_overload")
    if overload:
        for r in overload["levels"]:
            print(
                f"overload {r['multiplier']:g}x: 429 rate {r['rate_429']}, ok p99 {r['admitted_p99_ms']} ms, "
                f"429 p99 {r['t429_p99_ms']} ms, 5xx {r['errors_5xx']}"
            )
    guard = _load("bench_guard")
    if guard:
        print(
            f"guard (tiny, CPU): /v1/moderate p50 {guard['moderate_direct']['p50_ms']} ms; added to a "
            f"private image {guard['private image']['added_median_ms']} ms, to a 1:1 chat image "
            f"{guard['1:1 chat image']['added_median_ms']} ms"
        )
    batch = _load("bench_image_batch")
    if batch:
        print(f"batch-4 / batch-1 images/s (tiny, CPU): {batch['ratio_b4_b1']}")


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    main()
