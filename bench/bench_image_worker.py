"""One image worker over HTTP on the tiny model: builder time, start-up time, 64x64 and 256x256 latency.

``python -m bench.bench_image_worker`` prints a table and writes bench/results/image_worker.json.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import print_table, write_results
from bench.latency_model import prediction_for_local_gpu
from bench.stack import AUTH, worker_env
from devtools.service_process import ServiceProcess
from shared.tiny_models.build import build_all

REPEATS = 5


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model_dir = build_all(Path(tmp), only=["zimage"])["zimage"]
        build_s = time.perf_counter() - started

        started = time.perf_counter()
        with ServiceProcess("services.chat1to1_worker.main", env=worker_env(model_dir)) as worker:
            startup_s = time.perf_counter() - started
            rows = []
            results: dict[str, object] = {
                "build_tiny_zimage_s": round(build_s, 2),
                "startup_s": round(startup_s, 2),
            }
            for side in (64, 256):
                body = {"prompt": "a red fox in a snowy forest", "width": side, "height": side, "seed": 1}
                httpx.post(
                    worker.url + "/v1/generate", json=body, headers=AUTH, timeout=120
                )  # warm this size
                wall, inference = [], []
                for _ in range(REPEATS):
                    t = time.perf_counter()
                    resp = httpx.post(worker.url + "/v1/generate", json=body, headers=AUTH, timeout=120)
                    wall.append((time.perf_counter() - t) * 1000)
                    inference.append(resp.json()["timings_ms"]["inference"])
                median_wall, median_inference = statistics.median(wall), statistics.median(inference)
                rows.append((f"{side}x{side}", median_wall, median_inference))
                results[f"{side}x{side}"] = {
                    "median_http_ms": median_wall,
                    "median_inference_ms": median_inference,
                }
    print_table(
        f"tiny Z-Image worker, CPU (build {build_s:.1f} s, start-up {startup_s:.1f} s), median of {REPEATS}",
        ("size", "HTTP ms", "inference ms"),
        rows,
    )
    # The tiny model says nothing of a GPU's speed; beside it, what the production model should take.
    for side in (512, 1024):
        line = prediction_for_local_gpu(side, side, steps=8)
        if line:
            print(f"production Z-Image Turbo on this GPU, {line}")
    write_results("image_worker", results)


if __name__ == "__main__":
    main()
