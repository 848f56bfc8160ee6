"""Tiny Z-Image Turbo: the real ``ZImagePipeline`` classes with a few thousand random weights."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.tiny_models.tokenizer import build_tokenizer


def build_zimage(out: Path, seed: int = 0) -> Path:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,  # the pipeline reads hidden_states[-2]
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=1024,
        )
    )
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,  # = text encoder hidden size
        axes_dims=[8, 4, 4],  # sums to dim / n_heads
        axes_lens=[256, 64, 64],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        # Four blocks give the production VAE's 8x downscale, so a 256x256 image is 1024 latent tokens
        # for the transformer, as it would be at real scale, not 16k.
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        shift_factor=0.1159,  # the pipeline needs it set
        scaling_factor=0.3611,
    )
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out
