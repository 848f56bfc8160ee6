"""Latency of one selfie analysis on this machine, split by stage (median of N runs after a warm-up).

Runs the worker's own pipeline (decode -> detect -> quality -> crop -> VLM -> parse) in-process on the
astronaut photo as a JPEG upload. Without ``--vlm`` it builds and uses the tiny Qwen2-VL, so the VLM
column measures the code path, not a 7B model.

``python -m bench.bench_selfie [--runs 5] [--backend yolo|haar] [--vlm PATH_OR_ID] [--models DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from devtools.photos import astronaut, encode
from services.selfie_feature_worker.app import load_analyzer
from services.selfie_feature_worker.settings import SelfieSettings
from shared.tiny_models.build import build_all

STAGES = ("decode", "detect", "quality", "vlm")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=("yolo", "haar"), default="yolo")
    parser.add_argument("--vlm", help="VLM id or path (default: the tiny Qwen2-VL)")
    parser.add_argument("--models", type=Path, help="folder for the tiny models (default: a temp dir)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    vlm = args.vlm
    if vlm is None:
        root = args.models or Path(tempfile.mkdtemp(prefix="imgpod-bench-"))
        vlm = str(build_all(root, only=["qwen_vl"])["qwen_vl"])
    settings = SelfieSettings(
        detector_backend=args.backend,
        vlm_model=vlm,
        max_new_tokens=args.max_new_tokens,
        vlm_max_pixels=224 * 224 if args.vlm is None else SelfieSettings().vlm_max_pixels,
    )
    started = time.perf_counter()
    analyzer = load_analyzer(settings)
    load_s = time.perf_counter() - started
    upload = encode(astronaut(), "JPEG", quality=92)
    analyzer.analyze(upload)  # warm-up: first calls pay for lazy init (ONNX session, kernels)

    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: list[float] = []
    for _ in range(args.runs):
        started = time.perf_counter()
        result = analyzer.analyze(upload)
        totals.append((time.perf_counter() - started) * 1000)
        for stage in STAGES:
            per_stage[stage].append(result.timings_ms[stage])

    print(
        f"detector={analyzer.model_info['detector']} vlm={vlm} device={analyzer.vlm.device} "
        f"dtype={analyzer.vlm.dtype_name} max_new_tokens={args.max_new_tokens} load={load_s:.1f}s "
        f"runs={args.runs} image=astronaut 512x512 JPEG ({len(upload)} bytes)"
    )
    print(f"{'stage':<10}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for stage, values in [*per_stage.items(), ("total", totals)]:
        print(f"{stage:<10}{statistics.median(values):>12.1f}{min(values):>10.1f}{max(values):>10.1f}")


if __name__ == "__main__":
    main()
