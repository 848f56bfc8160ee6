"""Time per identity compare: one reference and 1-4 candidates, split by stage (median of N runs).

Runs the worker's own comparer in-process on a JSON body as the route receives it (parse -> decode ->
detect -> embed): the astronaut photo as the reference and as every candidate, JPEG, so every image has a
face and every stage runs. Without ``--vlm`` it uses the tiny Qwen2-VL, so the embed column measures the
code path, not a 7B vision tower; the detector is nudenet's (the tiny stack's).

``python -m bench.bench_identity [--runs 10] [--vlm PATH_OR_ID] [--crop-side 224]``
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import print_table, tiny_model_dir, write_results
from devtools.photos import astronaut, encode
from services.selfie_feature_worker.app import load_analyzer, load_identity
from services.selfie_feature_worker.settings import SelfieSettings
from shared.models import MAX_IDENTITY_CANDIDATES

STAGES = ("parse", "decode", "detect", "embed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--vlm", help="VLM id or path (default: the tiny Qwen2-VL)")
    parser.add_argument("--crop-side", type=int, default=224)
    args = parser.parse_args(argv)

    vlm = args.vlm or str(tiny_model_dir("qwen_vl"))
    settings = SelfieSettings(
        detector_weights="nudenet",
        yolo_config_dir=Path(tempfile.mkdtemp(prefix="imgpod-bench-yolo-")),
        vlm_model=vlm,
        vlm_max_pixels=224 * 224 if args.vlm is None else SelfieSettings().vlm_max_pixels,
        identity_crop_side=args.crop_side,
    )
    started = time.perf_counter()
    analyzer = load_analyzer(settings)
    comparer, error = load_identity(settings, analyzer)
    if comparer is None:
        raise SystemExit(f"no comparer: {error or 'identity_embedder is off'}")
    load_s = time.perf_counter() - started
    photo = base64.b64encode(encode(astronaut(), "JPEG", quality=92)).decode("ascii")

    rows = []
    results = {}
    for n in range(1, MAX_IDENTITY_CANDIDATES + 1):
        body = json.dumps({"reference": photo, "candidates": [photo] * n}).encode()
        comparer.compare_json(body)  # warm-up for this batch shape
        per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
        totals: list[float] = []
        for _ in range(args.runs):
            started = time.perf_counter()
            response = comparer.compare_json(body)
            totals.append((time.perf_counter() - started) * 1000)
            for stage in STAGES:
                per_stage[stage].append(response.timings_ms[stage])
        assert all(s.similarity is not None for s in response.scores)
        medians = {stage: round(statistics.median(values), 1) for stage, values in per_stage.items()}
        total = round(statistics.median(totals), 1)
        rows.append([n, *medians.values(), total, round(max(totals), 1), round(total / (n + 1), 1)])
        results[str(n)] = {**medians, "total": total, "max_total": round(max(totals), 1)}

    print(
        f"embedder={comparer.embedder.name} meaningful={comparer.embedder.meaningful} "
        f"detector={analyzer.detector.name} device={analyzer.vlm.device} dtype={analyzer.vlm.dtype_name} "
        f"crop={args.crop_side}px load={load_s:.1f}s runs={args.runs} image=astronaut 512x512 JPEG "
        f"({len(photo) * 3 // 4} bytes)"
    )
    print_table(
        "median ms per compare (1 reference + n candidates)",
        ["n", *STAGES, "total", "max total", "per image"],
        rows,
    )
    write_results(
        "bench_identity",
        {
            "embedder": comparer.embedder.name,
            "device": analyzer.vlm.device,
            "runs": args.runs,
            "by_n": results,
        },
    )


if __name__ == "__main__":
    main()
