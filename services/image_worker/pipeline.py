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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from services.image_worker.model_files import verify_pipeline_dir
from shared.image_params import image_seeds
from shared.logging_config import quiet_progress_bars
from shared.public_names import is_local_model
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
    # Images of this prompt, seeds seed, seed+1, ... (``image_seeds``): all in the same pipeline call.
    count: int = 1

    def batch_key(self) -> tuple[int, int, int, float, bool]:
        """Jobs that agree on this run as one pipeline call."""
        return (self.width, self.height, self.steps, self.guidance_scale, self.negative_prompt is not None)

    @property
    def seeds(self) -> list[int]:
        return image_seeds(self.seed, self.count)

    @property
    def cost(self) -> int:
        """What the job takes of a batch: its images, twice over with guidance (the transformer runs each
        image's latents once with the prompt and once with the negative prompt, in one batch)."""
        return self.count * (2 if self.guidance_scale > 0 else 1)


class ModelLoadError(RuntimeError):
    pass


class ModelMissing(ModelLoadError):
    """The configured local model directory does not exist."""


class AttentionBackendUnavailable(ModelLoadError):
    """The configured attention backend is a diffusers name, but not usable here (package, GPU)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"attention backend {backend} is not usable: {reason}")
        self.backend = backend


def caption_token_limit(axes_lens: list[int] | tuple[int, ...]) -> int:
    """The longest caption (in tokens) whose RoPE positions fit the transformer's first axis.

    The transformer gives caption tokens positions 1..L (L padded to a multiple of 32) and the image tokens
    position L + 1 on axis 0, so L + 1 must stay below ``axes_lens[0]``. The production config (1024) is far
    above the 512-token default; a checkpoint with a short axis (the tiny test model has 256) would otherwise
    fail with an IndexError inside the model on every long prompt.
    """
    return (axes_lens[0] - 2) // _CAPTION_PAD * _CAPTION_PAD


class DevicePipeline:
    def __init__(
        self,
        model_id: str,
        device: str,
        dtype_spec: str,
        max_sequence_length: int,
        *,
        revision: str | None = None,
        vae_tiling_above: int = 0,
    ) -> None:
        self.model_id = model_id
        self.device = device
        self.dtype = resolve_dtype(dtype_spec, device)
        self.max_sequence_length = max_sequence_length
        self.revision = revision
        self.vae_tiling_above = vae_tiling_above
        self.pipe: Any = None
        # Pipeline calls per (width, height), warm-up included: whether a request is the first at its size.
        self.calls_by_shape: Counter[tuple[int, int]] = Counter()
        self.tiled_calls = 0

    def local_dir(self) -> Path | None:
        """The folder the pipeline loads from: the local path, or the hub cache's snapshot when present."""
        if is_local_model(self.model_id):
            return Path(self.model_id).expanduser()
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.model_id, revision=self.revision, local_files_only=True))
        except Exception:
            return None

    def load(self, *, attention_backend: str | None = None, compile_transformer: bool = False) -> None:
        from diffusers import ZImagePipeline

        quiet_progress_bars()

        if is_local_model(self.model_id) and not Path(self.model_id).expanduser().is_dir():
            raise ModelMissing(f"model path {self.model_id} does not exist")
        # Checked before loading: a truncated shard otherwise fails inside diffusers with a library message.
        folder = self.local_dir()
        if folder is not None:
            verify_pipeline_dir(folder)
        try:
            pipe = ZImagePipeline.from_pretrained(self.model_id, dtype=self.dtype, revision=self.revision)
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
        if folder is None and (folder := self.local_dir()) is not None:
            verify_pipeline_dir(folder)  # downloaded by from_pretrained just now
        if attention_backend:
            try:
                pipe.transformer.set_attention_backend(attention_backend)
            except (RuntimeError, ValueError, ImportError) as exc:
                raise AttentionBackendUnavailable(attention_backend, str(exc)[:300]) from exc
        if compile_transformer:
            # Regional compilation (the class's ``_repeated_blocks``, each ZImageTransformerBlock): blocks
            # share a few compiled graphs, so start-up compiles a block or two, not the whole model.
            pipe.transformer.compile_repeated_blocks()
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
    def run(self, jobs: list[ImageJob]) -> tuple[list[list[Image.Image]], list[int]]:
        """One pipeline call for the batch; returns each job's images and each prompt's token count.

        A job of ``count`` images is ``count`` entries of the call, one generator (one seed) each, rather
        than ``num_images_per_prompt``: that argument is per call, and one call mixes jobs of any count.
        """
        token_counts = [self.count_tokens(job.prompt) for job in jobs]
        first = jobs[0]
        entries = [(job, seed) for job in jobs for seed in job.seeds]
        generators = [torch.Generator(device=self.device).manual_seed(seed) for _, seed in entries]
        negative = None
        if first.negative_prompt is not None:
            negative = [job.negative_prompt or "" for job, _ in entries]
        tiled = 0 < self.vae_tiling_above < max(first.width, first.height)
        # Per call, not once at load: tiled decoding is slower and blends seams, so sizes at or under the
        # threshold keep the plain decoder. Safe because one runner drives this pipeline at a time.
        if tiled:
            self.pipe.vae.enable_tiling()
            self.tiled_calls += 1
        else:
            self.pipe.vae.disable_tiling()
        self.calls_by_shape[(first.width, first.height)] += 1
        started = time.perf_counter()
        out = self.pipe(
            prompt=[job.prompt for job, _ in entries],
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
        if len(images) != len(entries):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(entries)} asked")
        log.debug(
            "batch done", extra={"n": len(entries), "ms": round((time.perf_counter() - started) * 1000, 1)}
        )
        per_job: list[list[Image.Image]] = []
        for job in jobs:
            per_job.append(images[: job.count])
            images = images[job.count :]
        return per_job, token_counts
