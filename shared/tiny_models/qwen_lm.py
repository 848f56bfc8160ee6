"""Tiny Qwen2.5-style causal LM (``Qwen2ForCausalLM``) with the ChatML tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared.tiny_models.tokenizer import build_tokenizer


def save_tiny_causal_lm(
    out: Path, tokenizer: Any, model_class: type[Any], config_class: type[Any], **config: Any
) -> Path:
    """A 2-layer, 32-wide random causal LM of ``model_class`` with the tokenizer's special ids, saved as
    ``from_pretrained`` reads a real checkpoint."""
    from transformers import GenerationConfig

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = model_class(
        config_class(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=eos,
            pad_token_id=pad,
            bos_token_id=pad,
            tie_word_embeddings=True,
            **config,
        )
    )
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=pad)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_qwen_lm(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return save_tiny_causal_lm(out, tokenizer, Qwen2ForCausalLM, Qwen2Config, max_position_embeddings=2048)
