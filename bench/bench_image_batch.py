"""Image throughput (images/s) by batch size, through ``DevicePipeline.run`` (what the batcher calls).

Default: the tiny Z-Image checkpoint on CPU at 64x64 and 256x256, batch 1, 2, 4, 8, and the batch-4 /
batch-1 throughput ratio. ``--real-size``: a ``ZImageTransformer2DModel`` with the production (Z-Image
Turbo, 6B) configuration and random weights, 1024x1024 latents, 8 steps, bf16 on CUDA, with and without
``torch.compile``; transformer-only timing. Skipped with a message when no CUDA device is present.

    python -m bench.bench_image_batch [--sizes 64,256] [--batches 1,2,4,8] [--steps 4] [--reps 3]
    python -m bench.bench_image_batch --real-size [--batches 1,2,4] [--reps 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.common import print_table, tiny_model_dir, write_results
from bench.latency_model import (
    DEFAULT_UTILISATION,
    gpu_for,
    predicted_seconds,
    prediction_for_local_gpu,
    read_config,
    step_flops,
)
from services.image_worker.pipeline import DevicePipeline, ImageJob

# ZImageTransformer2DModel's production configuration (Tongyi-MAI/Z-Image-Turbo, transformer/config.json);
# these are also the defaults of the class in diffusers 0.42.
REAL_TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1024, 512, 512],
}
VAE_SCALE = 8  # the Flux-style VAE downsamples 8x
CAPTION_TOKENS = 128  # a typical expanded prompt


def tiny_throughput(sizes: list[int], batches: list[int], steps: int, reps: int) -> list[dict[str, Any]]:
    pipe = DevicePipeline(str(tiny_model_dir()), "cpu", "float32", 64)
    pipe.load()
    rows = []
    for size in sizes:
        for batch in batches:
            jobs = [ImageJob(f"a red fox {i}", None, i, size, size, steps, 0.0) for i in range(batch)]
            pipe.run(jobs)  # warm-up at this shape
            started = time.perf_counter()
            for _ in range(reps):
                pipe.run(jobs)
            elapsed = time.perf_counter() - started
            rows.append(
                {
                    "size": size,
                    "batch": batch,
                    "steps": steps,
                    "call_ms": round(elapsed / reps * 1000, 1),
                    "images_per_s": round(batch * reps / elapsed, 2),
                }
            )
    return rows


def ratio(rows: list[dict[str, Any]], size: int, num: int = 4, den: int = 1) -> float | None:
    by = {r["batch"]: r["images_per_s"] for r in rows if r["size"] == size}
    return round(by[num] / by[den], 2) if num in by and den in by else None


def real_size(batches: list[int], steps: int, reps: int, device: str, config: dict[str, Any]) -> list[dict]:
    from diffusers import ZImageTransformer2DModel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = ZImageTransformer2DModel(**config).to(dtype).eval()
    latent = 1024 // VAE_SCALE if device.startswith("cuda") else 32
    rows = []
    for compiled in (False, True):
        net = torch.compile(model) if compiled else model
        for batch in batches:
            x = [torch.randn(config["in_channels"], 1, latent, latent, device=device, dtype=dtype)] * batch
            caps = [torch.randn(CAPTION_TOKENS, config["cap_feat_dim"], device=device, dtype=dtype)] * batch

            def denoise(net: Any = net, x: list = x, caps: list = caps, batch: int = batch) -> None:
                for step in range(steps):
                    t = torch.full((batch,), 1.0 - step / steps, device=device, dtype=dtype)
                    net(x, t, caps, return_dict=False)

            with torch.inference_mode():
                denoise()  # warm-up (and compilation)
                denoise()
                _sync(device)
                started = time.perf_counter()
                for _ in range(reps):
                    denoise()
                _sync(device)
            elapsed = (time.perf_counter() - started) / reps
            rows.append(
                {
                    "compiled": compiled,
                    "batch": batch,
                    "steps": steps,
                    "denoise_ms": round(elapsed * 1000, 1),
                    "images_per_s": round(batch / elapsed, 3),
                }
            )
            print(rows[-1], flush=True)
    return rows


def predicted_ms(rows: list[dict[str, Any]]) -> dict[int, float]:
    """The latency model's ms per denoise call for each batch measured, on this GPU (empty if not in it)."""
    gpu = gpu_for(torch.cuda.get_device_name())
    if gpu is None:
        return {}
    config = read_config("transformer")
    return {
        r["batch"]: round(
            predicted_seconds(
                r["batch"] * r["steps"] * step_flops(1024, 1024, CAPTION_TOKENS, config),
                gpu.peak_bf16_tflops,
                DEFAULT_UTILISATION,
            )
            * 1000,
            1,
        )
        for r in rows
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--real-size", action="store_true", help="production-size transformer on CUDA")
    parser.add_argument(
        "--smoke-on-cpu", action="store_true", help="run the --real-size code path with a tiny config on CPU"
    )
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    if args.real_size or args.smoke_on_cpu:
        if args.smoke_on_cpu:
            tiny = {**REAL_TRANSFORMER_CONFIG, "dim": 64, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2}
            tiny.update(n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12])
            rows = real_size(batches, 2, 1, "cpu", tiny)
            name = "bench_image_batch_real_smoke"
        elif not torch.cuda.is_available():
            print("--real-size skipped: no CUDA device on this machine (it needs a GPU with ~16 GB free).")
            write_results("bench_image_batch_real", {"skipped": "no CUDA device"})
            return
        else:
            rows = real_size(batches, 8, args.reps, "cuda", REAL_TRANSFORMER_CONFIG)
            name = "bench_image_batch_real"
        predicted = predicted_ms(rows) if not args.smoke_on_cpu else {}
        print_table(
            "Z-Image transformer, production config, random weights, 1024x1024, bf16 (transformer only)",
            ["compiled", "batch", "steps", "denoise ms", "images/s", "predicted ms"],
            [
                [
                    r["compiled"],
                    r["batch"],
                    r["steps"],
                    r["denoise_ms"],
                    r["images_per_s"],
                    predicted.get(r["batch"]),
                ]
                for r in rows
            ],
        )
        if predicted:
            print(prediction_for_local_gpu(1024, 1024, 8, CAPTION_TOKENS))
        write_results(
            name,
            {
                "device": torch.cuda.get_device_name() if not args.smoke_on_cpu else "cpu",
                "config": REAL_TRANSFORMER_CONFIG,
                "rows": rows,
            },
        )
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = tiny_throughput(sizes, batches, args.steps, args.reps)
    print_table(
        f"Tiny Z-Image on CPU, {args.steps} steps, DevicePipeline.run",
        ["size", "batch", "call ms", "images/s"],
        [[r["size"], r["batch"], r["call_ms"], r["images_per_s"]] for r in rows],
    )
    ratios = {size: ratio(rows, size) for size in sizes}
    for size, value in ratios.items():
        print(f"batch-4 / batch-1 throughput at {size}x{size}: {value}")
    write_results("bench_image_batch", {"rows": rows, "ratio_b4_b1": ratios})


if __name__ == "__main__":
    main()
