"""The latency model's FLOPs formula against torch's own FLOP counter, and its figures for the real config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.latency_model import (
    GPUS,
    block_flops,
    gpu_for,
    image_tokens,
    predicted_seconds,
    read_config,
    step_flops,
)

SMALL = {
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 128,
    "n_layers": 2,
    "n_refiner_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 64,
    "axes_dims": [16, 24, 24],
    "axes_lens": [256, 64, 64],
}


@pytest.fixture
def restores_attention_backend() -> Iterator[None]:
    # set_attention_backend also sets diffusers' process-wide active backend: put it back for later tests.
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


@pytest.mark.usefixtures("restores_attention_backend")
def test_step_formula_matches_torchs_flop_counter() -> None:
    """A forward of the real class on a small config: the formula's FLOPs within 2% of what torch counts
    (what it leaves out, the adaLN and timestep MLPs, is per image, not per token)."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**SMALL).eval()
    # The math kernel runs attention as matmuls, which the counter sees (it has no rule for CPU flash SDPA).
    model.set_attention_backend("_native_math")
    side, caption = 256, 64  # 256 image tokens, 64 caption tokens: both multiples of the 32 padding
    latents = [torch.randn(16, 1, side // 8, side // 8)]
    captions = [torch.randn(caption, SMALL["cap_feat_dim"])]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(latents, torch.tensor([0.5]), captions, return_dict=False)
    counted = counter.get_total_flops()
    predicted = step_flops(side, side, caption, SMALL)
    assert abs(predicted - counted) / counted < 0.02, (predicted, counted)


def test_real_config_figures() -> None:
    config = read_config("transformer")
    assert (config["dim"], config["n_layers"], config["n_heads"]) == (3840, 30, 30)
    assert [image_tokens(s, s, config) for s in (512, 768, 1024)] == [1024, 2304, 4096]
    # Per token per block, linear: 2 x (4 d^2 + 3 d f) with f = 10240, i.e. 2 x 176.9 M weights.
    assert block_flops(1, 3840) - 4 * 3840 == 2 * (4 * 3840**2 + 3 * 3840 * 10240)
    step = step_flops(1024, 1024, 512, config)
    assert 60e12 < step < 65e12
    # Attention grows with the square of the sequence: a 1024x1024 step is ~3.4x a 512x512 one, not 4x.
    assert 3.0 < step / step_flops(512, 512, 512, config) < 3.6


def test_prediction_and_gpu_names() -> None:
    h100 = gpu_for("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100.peak_bf16_tflops == 989.4
    assert gpu_for("NVIDIA H100 PCIe") is None
    assert gpu_for("NVIDIA L40S").name == "L40S"  # type: ignore[union-attr]
    assert gpu_for("NVIDIA A40").name == "A40"  # type: ignore[union-attr]
    assert gpu_for("NVIDIA GeForce RTX 4090").name == "RTX 4090"  # type: ignore[union-attr]
    assert {g.name for g in GPUS} >= {"H100 SXM", "A100", "L40S", "RTX 4090", "A40"}
    assert predicted_seconds(400e12, 1000.0, 0.4) == 1.0
