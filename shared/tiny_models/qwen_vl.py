"""Tiny Qwen2-VL (``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor``) with the ChatML tokenizer.

Saved as a normal checkpoint folder, so ``Qwen2VLForConditionalGeneration.from_pretrained`` and
``AutoProcessor.from_pretrained`` load it exactly as they load ``Qwen/Qwen2-VL-7B-Instruct``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.tiny_models.tokenizer import CHATML_TEMPLATE, build_tokenizer


def build_qwen_vl(out: Path, seed: int = 0) -> Path:
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}
    ids.update(
        {
            tok: tokenizer.convert_tokens_to_ids(tok)
            for tok in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
        }
    )
    eos = ids["<|im_end|>"]
    pad = ids["<|endoftext|>"]
    hidden = 32
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            # transformers 5.x spells it rope_parameters; mrope_section sums to head_dim / 2 (16 / 2).
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
            "bos_token_id": pad,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,  # the merger projects into the text hidden size
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=pad)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHATML_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
