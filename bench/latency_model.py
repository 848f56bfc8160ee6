"""A FLOPs latency model of Z-Image Turbo: work per denoising step, predicted seconds per image per GPU.

``python -m bench.latency_model [--utilisation 0.4] [--steps 8] [--caption-tokens 512]`` prints the table;
``bench/bench_image_worker.py`` and ``bench/bench_image_batch.py`` print the prediction for the local GPU
beside what they measure.

The transformer is the real one's configuration (``shared/model_configs/z_image_turbo/transformer``, the
public Tongyi-MAI/Z-Image-Turbo config; its README gives the source). One denoising step is one transformer
forward per image (Turbo runs without classifier-free guidance; guidance doubles it). With d = ``dim``
(3840), f = the SwiGLU width int(d / 3 * 8) (10240), N = image tokens = (H / 16) x (W / 16) (the VAE's 8x
down-scaling, then 2x2 patches), C = caption tokens (the templated prompt's own tokens, padded to a multiple
of 32: the pipeline drops the tokenizer's padding before the transformer; at most ``max_sequence_length``,
512, the default here and so an upper bound), a block over a sequence of S tokens costs

    linear(S)    = 2 * S * (4 * d^2 + 3 * d * f)      Q, K, V, out projections; w1, w3, w2 of the MLP
    attention(S) = 4 * S^2 * d                        Q K^T and (softmax) V, all heads together

(a multiply-add is 2 FLOPs), and a step is

    30 main blocks over S = N + C, 2 noise-refiner blocks over N, 2 context-refiner blocks over C,
    plus the patch embedder (2 N 64 d), the caption embedder (2 C 2560 d) and the final layer (2 N d 64).

Normalisations, RoPE, the per-image adaLN and timestep MLP are left out: under 0.1% at these sizes
(``tests/unit/test_latency_model.py`` checks the formula against torch's FLOP counter on a small config).
The text encoder (Qwen3-4B, once per image: 2 x its non-embedding parameters x C) is added to the image's
total; the VAE decoder is not modelled.

Predicted seconds per image = (steps x step FLOPs + text-encoder FLOPs) / (peak dense bf16 FLOP/s x
utilisation). Peak figures are the vendors' published dense (no sparsity) bf16 tensor-core numbers.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "shared" / "model_configs" / "z_image_turbo"
SIZES = (512, 768, 1024)
DEFAULT_UTILISATION = 0.40
DEFAULT_STEPS = 8
# The pipeline's max_sequence_length: the longest caption, so the table is an upper bound for long prompts.
DEFAULT_CAPTION_TOKENS = 512
VAE_SCALE = 8


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    peak_bf16_tflops: float  # dense, no sparsity
    source: str
    # Substring of ``torch.cuda.get_device_name()`` that identifies it (the H100 PCIe has a lower peak).
    match: str = ""
    unless: str = "\0"


# Published dense bf16 tensor-core peaks (the datasheets print the sparse figure, twice these, beside them).
GPUS: tuple[Gpu, ...] = (
    Gpu(
        "H100 SXM",
        989.4,
        "NVIDIA H100 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity",
        "H100",
        "PCIE",
    ),
    Gpu("H200 SXM", 989.4, "NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS sparse", "H200"),
    Gpu("A100", 312.0, "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity)", "A100"),
    Gpu("L40S", 362.05, "NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS (733 with sparsity)", "L40S"),
    Gpu(
        "RTX 4090",
        165.2,
        "NVIDIA Ada Lovelace architecture whitepaper: peak BF16 tensor TFLOPS with FP32 accumulate 165.2",
        "4090",
    ),
    Gpu("A40", 149.7, "NVIDIA A40 datasheet: BF16 Tensor Core 149.7 TFLOPS (299.4 with sparsity)", "A40"),
)


def read_config(component: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIG_ROOT / component / "config.json").read_text())
    return data


def image_tokens(width: int, height: int, config: dict[str, Any]) -> int:
    patch = config["all_patch_size"][0]
    return (height // VAE_SCALE // patch) * (width // VAE_SCALE // patch)


def block_flops(seq: int, dim: int) -> int:
    ffn = int(dim / 3 * 8)
    linear = 2 * seq * (4 * dim * dim + 3 * dim * ffn)
    attention = 4 * seq * seq * dim
    return linear + attention


def step_flops(width: int, height: int, caption_tokens: int, config: dict[str, Any]) -> int:
    """FLOPs of one transformer forward for one image (one denoising step without guidance)."""
    d = config["dim"]
    n = image_tokens(width, height, config)
    c = caption_tokens
    patch_in = config["all_patch_size"][0] ** 2 * config["all_f_patch_size"][0] * config["in_channels"]
    flops = config["n_layers"] * block_flops(n + c, d)
    flops += config["n_refiner_layers"] * (block_flops(n, d) + block_flops(c, d))
    flops += 2 * n * patch_in * d  # patch embedder
    flops += 2 * c * config["cap_feat_dim"] * d  # caption embedder
    flops += 2 * n * d * patch_in  # final layer (out_channels = in_channels)
    return flops


def text_encoder_flops(caption_tokens: int, config: dict[str, Any]) -> int:
    """2 x non-embedding parameters x tokens (attention over <= 512 tokens adds under 2%, left out)."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config["intermediate_size"]
    return 2 * layers * per_layer * caption_tokens


def image_flops(size: int, steps: int, caption_tokens: int) -> int:
    transformer = read_config("transformer")
    encoder = read_config("text_encoder")
    step = step_flops(size, size, caption_tokens, transformer)
    return steps * step + text_encoder_flops(caption_tokens, encoder)


def predicted_seconds(flops: float, peak_tflops: float, utilisation: float) -> float:
    return flops / (peak_tflops * 1e12 * utilisation)


def gpu_for(device_name: str) -> Gpu | None:
    """The table's row for a CUDA device name (``torch.cuda.get_device_name()``), if it has one."""
    name = device_name.upper()
    return next((g for g in GPUS if g.match in name and g.unless not in name), None)


def prediction_for_local_gpu(
    width: int, height: int, steps: int, caption_tokens: int = DEFAULT_CAPTION_TOKENS, batch: int = 1
) -> str | None:
    """One line for the benches: predicted ms per call on this machine's GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.cuda.get_device_name()
    gpu = gpu_for(device)
    transformer = read_config("transformer")
    flops = batch * steps * step_flops(width, height, caption_tokens, transformer)
    if gpu is None:
        return f"latency model: no published peak for {device}; {flops / 1e12:.1f} TFLOP per call"
    ms = predicted_seconds(flops, gpu.peak_bf16_tflops, DEFAULT_UTILISATION) * 1000
    return (
        f"latency model ({gpu.name}, {DEFAULT_UTILISATION:.0%} of {gpu.peak_bf16_tflops:g} TFLOPS): "
        f"{flops / 1e12:.1f} TFLOP, predicted {ms:.0f} ms per call of {batch} at {width}x{height}, "
        f"{steps} steps, transformer only"
    )


def table(utilisation: float, steps: int, caption_tokens: int) -> list[dict[str, Any]]:
    transformer = read_config("transformer")
    rows = []
    for size in SIZES:
        step = step_flops(size, size, caption_tokens, transformer)
        total = image_flops(size, steps, caption_tokens)
        rows.append(
            {
                "size": f"{size}x{size}",
                "image_tokens": image_tokens(size, size, transformer),
                "step_tflop": round(step / 1e12, 2),
                "image_tflop": round(total / 1e12, 1),
                "seconds": {
                    g.name: round(predicted_seconds(total, g.peak_bf16_tflops, utilisation), 2) for g in GPUS
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--caption-tokens", type=int, default=DEFAULT_CAPTION_TOKENS)
    args = parser.parse_args()
    rows = table(args.utilisation, args.steps, args.caption_tokens)
    header = ["size", "tokens", "TFLOP/step", "TFLOP/image", *(g.name for g in GPUS)]
    print(
        f"Z-Image Turbo, {args.steps} steps, {args.caption_tokens} caption tokens, batch 1, predicted "
        f"seconds per image at {args.utilisation:.0%} of peak dense bf16"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["size"], r["image_tokens"], r["step_tflop"], r["image_tflop"], *r["seconds"].values()]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for g in GPUS:
        print(f"  {g.name}: {g.peak_bf16_tflops:g} TFLOPS ({g.source})")


if __name__ == "__main__":
    main()
