"""Image-to-image on the image worker's pipeline, tiny Z-Image checkpoint, CPU.

* memory: parameter bytes held by the text-to-image pipeline alone and by both pipelines together (the
  img2img pipeline is built from the loaded one's modules, so the expected difference is 0), and the
  process RSS before and after building the img2img pipeline as ``DevicePipeline.load`` does;
* time per call: text-to-image against image-to-image at ``--strength`` (which runs only the last part of
  the schedule, after one VAE encode), same size, steps and seed, alternated;
* request side: decoding a base64 start image and fitting it to the job's size (in a thread in the worker),
  and parsing a JSON body that carries it (on the event loop, by FastAPI, before any of our code runs).

The tiny checkpoint's modules are small, so the RSS figures show the cost of the pipeline object itself;
the parameter bytes are what scales to the real model (about 20 GB in bfloat16).

    python -m bench.bench_img2img [--calls 10] [--steps 8] [--size 256] [--strength 0.6]
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import percentile, print_table, tiny_model_dir, write_results
from services.image_worker.engine import ImageEngine
from services.image_worker.pipeline import DevicePipeline, ImageJob, img2img_steps
from services.image_worker.settings import ImageSettings
from shared.metrics import ServiceMetrics
from shared.models import GenerateRequest


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parameter_bytes(*pipelines: Any) -> int:
    """Bytes of every distinct parameter storage of the pipelines' models, counted once however shared."""
    seen: dict[int, int] = {}
    for pipe in pipelines:
        for name in ("transformer", "vae", "text_encoder"):
            for param in getattr(pipe, name).parameters():
                seen[param.data_ptr()] = param.numel() * param.element_size()
    return sum(seen.values())


def timed(fn: Callable[[], object], calls: int) -> list[float]:
    out: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def avatar(size: int) -> Image.Image:
    # Smooth content with some texture: compresses like a photo, not like noise or a flat colour.
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(0)
    rgb = np.stack([x * 255, y * 255, (x + y) * 127], -1) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def as_base64(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--strength", type=float, default=0.6)
    args = parser.parse_args(argv)
    from diffusers import ZImageImg2ImgPipeline

    model = tiny_model_dir()
    device_pipe = DevicePipeline(str(model), "cpu", "auto", 64)
    device_pipe.load()
    # Measured from here: the text-to-image pipeline alone, then the img2img one built as load() builds it.
    device_pipe.img2img = None
    gc.collect()
    rss_before = rss_bytes()
    params_before = parameter_bytes(device_pipe.pipe)
    device_pipe.img2img = ZImageImg2ImgPipeline(**device_pipe.pipe.components)
    device_pipe.img2img.set_progress_bar_config(disable=True)
    gc.collect()
    rss_after = rss_bytes()
    params_after = parameter_bytes(device_pipe.pipe, device_pipe.img2img)

    size, steps = args.size, args.steps
    init = avatar(size)
    t2i = ImageJob("a woman in a cafe", None, 1, size, size, steps, 0.0)
    i2i = ImageJob(
        "a woman in a cafe", None, 1, size, size, steps, 0.0, strength=args.strength, init_image=init
    )
    device_pipe.run([t2i])  # first call at this size, for both
    device_pipe.run([i2i])
    t2i_ms: list[float] = []
    i2i_ms: list[float] = []
    for i in range(args.calls):
        order = ((t2i, t2i_ms), (i2i, i2i_ms)) if i % 2 == 0 else ((i2i, i2i_ms), (t2i, t2i_ms))
        for job, out in order:
            out.extend(timed(lambda job=job: device_pipe.run([job]), 1))

    # The request side, at a real avatar's size: 1024x1024 start image, fitted to a 768x768 job.
    settings = ImageSettings(model_id=str(model), devices="cpu", warmup=False, output_safety="off")
    engine = ImageEngine(settings, ServiceMetrics("bench_img2img"))
    request_rows: list[list[Any]] = []
    for fmt in ("JPEG", "PNG"):
        data = as_base64(avatar(1024), fmt)
        decode_ms = timed(lambda data=data: engine.init_image_for(data, 768, 768), args.calls)
        raw = json.dumps({"prompt": "a woman in a cafe", "init_image": data}).encode()
        parse_ms = timed(lambda raw=raw: GenerateRequest.model_validate(json.loads(raw)), args.calls)
        request_rows.append([f"decode + fit ({fmt}, thread)", len(data), *stats(decode_ms)])
        request_rows.append([f"JSON parse + validate ({fmt}, loop)", len(raw), *stats(parse_ms)])

    mib = 1024 * 1024
    memory_rows: list[list[Any]] = [
        ["parameter bytes", params_before, params_after, params_after - params_before],
        [
            "process RSS (MiB)",
            round(rss_before / mib, 2),
            round(rss_after / mib, 2),
            round((rss_after - rss_before) / mib, 2),
        ],
    ]
    print_table(
        "memory: text-to-image pipeline, then with the img2img pipeline built on it",
        ["", "before", "after", "extra"],
        memory_rows,
    )
    ran = img2img_steps(steps, args.strength)
    call_rows: list[list[Any]] = [
        ["text-to-image", steps, *stats(t2i_ms)],
        [f"img2img, strength {args.strength:g}", ran, *stats(i2i_ms)],
    ]
    print_table(
        f"time per call, {size}x{size}, {steps} steps, {args.calls} calls each (ms)",
        ["", "steps run", "p50", "p90"],
        call_rows,
    )
    print_table(
        f"start image, 1024x1024 to 768x768, {args.calls} calls each (ms)",
        ["", "base64 chars", "p50", "p90"],
        request_rows,
    )
    write_results(
        "bench_img2img",
        {"args": vars(args), "memory": memory_rows, "calls": call_rows, "request": request_rows},
    )
    return 0


def stats(ms: list[float]) -> list[float]:
    return [round(statistics.median(ms), 2), round(percentile(ms, 90), 2)]


if __name__ == "__main__":
    raise SystemExit(main())
