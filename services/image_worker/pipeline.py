"""One Z-Image pipeline on one device: loading and a synchronous batched call.

A diffusers pipeline object is not safe for concurrent calls (its scheduler keeps per-call state), so a
``DevicePipeline`` is only ever driven by one runner task at a time; see ``batcher.py``. The same holds for
its tokenizer (a Rust tokenizer with truncation/padding state): prompts are counted inside ``run``, on the
thread that runs the pipeline, never on the event loop while a batch is in flight. Counting on the loop once
gave wrong counts (64 instead of 532) and failed batches under concurrent load.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shared.logging_config import quiet_progress_bars
from shared.torch_devices import resolve_dtype

log = logging.getLogger(__name__)
_TOKEN_BUCKET = 64
# ZImageTransformer2DModel pads the caption to a multiple of this (diffusers' SEQ_MULTI_OF).
_CAPTION_PAD = 32


@dataclass(frozen=True, slots=True)
class ImageJob:
    prompt: str
    negative_prompt: str | None
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float

    def batch_key(self) -> tuple[int, int, int, float, bool]:
        """Jobs that agree on this run as one pipeline call."""
        return (self.width, self.height, self.steps, self.guidance_scale, self.negative_prompt is not None)


class ModelLoadError(RuntimeError):
    pass


class ModelMissing(ModelLoadError):
    """The configured local model directory does not exist."""


def caption_token_limit(axes_lens: list[int] | tuple[int, ...]) -> int:
    """The longest caption (in tokens) whose RoPE positions fit the transformer's first axis.

    The transformer gives caption tokens positions 1..L (L padded to a multiple of 32) and the image tokens
    position L + 1 on axis 0, so L + 1 must stay below ``axes_lens[0]``. The production config (1024) is far
    above the 512-token default; a checkpoint with a short axis (the tiny test model has 256) would otherwise
    fail with an IndexError inside the model on every long prompt.
    """
    return (axes_lens[0] - 2) // _CAPTION_PAD * _CAPTION_PAD


def looks_like_local_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


class DevicePipeline:
    def __init__(self, model_id: str, device: str, dtype_spec: str, max_sequence_length: int) -> None:
        self.model_id = model_id
        self.device = device
        self.dtype = resolve_dtype(dtype_spec, device)
        self.max_sequence_length = max_sequence_length
        self.pipe: Any = None

    def load(self, *, attention_backend: str | None = None, compile_transformer: bool = False) -> None:
        from diffusers import ZImagePipeline

        quiet_progress_bars()

        if looks_like_local_path(self.model_id) and not Path(self.model_id).expanduser().is_dir():
            raise ModelMissing(f"model path {self.model_id} does not exist")
        try:
            pipe = ZImagePipeline.from_pretrained(self.model_id, dtype=self.dtype)
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelLoadError(
                f"could not load {self.model_id}: {type(exc).__name__}: {first_line}"
            ) from exc
        axes_lens = getattr(pipe.transformer.config, "axes_lens", None)
        if axes_lens:
            limit = caption_token_limit(axes_lens)
            if limit < self.max_sequence_length:
                log.warning(
                    "max_sequence_length lowered to what the transformer's RoPE axis allows",
                    extra={"asked": self.max_sequence_length, "used": limit},
                )
                self.max_sequence_length = limit
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if attention_backend:
            pipe.transformer.set_attention_backend(attention_backend)
        if compile_transformer:
            pipe.transformer.compile()
        self.pipe = pipe

    def count_tokens(self, prompt: str) -> int:
        """Tokens the text encoder sees for this prompt, counted the way the pipeline templates it."""
        tokenizer = self.pipe.tokenizer
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
        return len(tokenizer(text).input_ids)

    def sequence_length_for(self, token_counts: list[int]) -> int:
        # The pipeline pads every prompt to this length; padding only the bucket the batch needs saves
        # text-encoder time without changing results (causal encoder, padded tail is masked out).
        longest = max(token_counts)
        bucket = -(-longest // _TOKEN_BUCKET) * _TOKEN_BUCKET
        return max(_TOKEN_BUCKET, min(bucket, self.max_sequence_length))

    @torch.inference_mode()
    def run(self, jobs: list[ImageJob]) -> tuple[list[Image.Image], list[int]]:
        """One pipeline call for the batch; returns the images and each prompt's token count."""
        token_counts = [self.count_tokens(job.prompt) for job in jobs]
        first = jobs[0]
        generators = [torch.Generator(device=self.device).manual_seed(job.seed) for job in jobs]
        negative = [job.negative_prompt or "" for job in jobs] if first.negative_prompt is not None else None
        started = time.perf_counter()
        out = self.pipe(
            prompt=[job.prompt for job in jobs],
            negative_prompt=negative,
            height=first.height,
            width=first.width,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
            max_sequence_length=self.sequence_length_for(token_counts),
            output_type="pil",
        )
        images = list(out.images)
        if len(images) != len(jobs):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(jobs)} prompts")
        log.debug(
            "batch done", extra={"n": len(jobs), "ms": round((time.perf_counter() - started) * 1000, 1)}
        )
        return images, token_counts
