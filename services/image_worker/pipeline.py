"""One Z-Image pipeline on one device: loading and a synchronous batched call, observed step by step.

A diffusers pipeline object is not safe for concurrent calls (its scheduler keeps per-call state), so a
``DevicePipeline`` is only ever driven by one runner task at a time; see ``batcher.py``. The same holds for
its tokenizer (a Rust tokenizer with truncation/padding state): prompts are counted inside ``run``, on the
thread that runs the pipeline, never on the event loop while a batch is in flight. Counting on the loop once
gave wrong counts (64 instead of 532) and failed batches under concurrent load.

Each call reports its denoising steps and stops work for jobs whose callers went away (``StepHook``): a call
whose every job is canceled ends at the next step, before the VAE decode; a canceled job in a call that goes
on leaves the call's tensors where the pipeline allows it (see ``StepHook.__call__``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from services.image_worker.model_files import verify_pipeline_dir
from shared.image_params import image_seeds
from shared.logging_config import quiet_progress_bars
from shared.public_names import is_local_model
from shared.torch_devices import resolve_dtype

log = logging.getLogger(__name__)
_TOKEN_BUCKET = 64
# ZImageTransformer2DModel pads the caption to a multiple of this (diffusers' SEQ_MULTI_OF).
_CAPTION_PAD = 32

# Called on the pipeline's thread after each denoising step: (steps done, steps in the call).
StepListener = Callable[[int, int], None]
# Called on the pipeline's thread: the indexes (in the call's job list) of the jobs whose callers went away.
CancelCheck = Callable[[], Collection[int]]
# Called on the pipeline's thread with a partial image: (job index in the call, step, steps, image).
PreviewListener = Callable[[int, int, int, Image.Image], None]


def preview_steps(total_steps: int, partial_images: int) -> tuple[int, ...]:
    """The steps after which a job's partial images are taken: evenly spread, never the last step (that one
    is the image itself). Fewer than asked when the steps are too few; the OpenAI API allows that."""
    wanted = {round(total_steps * j / (partial_images + 1)) for j in range(1, partial_images + 1)}
    return tuple(sorted(step for step in wanted if 0 < step < total_steps))


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
    # Steps after which the job's first image is decoded as a partial image (``preview_steps``); not part of
    # the batch key: a preview is a decode of one row, whatever the call's other jobs do.
    previews: tuple[int, ...] = ()
    # Image-to-image: how far from ``init_image`` (0, 1]; None for text-to-image. Part of the batch key: the
    # strength fixes the call's timesteps, so text-to-image and each strength run in calls of their own.
    strength: float | None = None
    # The start image, already width x height (``fit_init_image``); every image of the job starts from it.
    init_image: Image.Image | None = field(default=None, compare=False, repr=False)

    def batch_key(self) -> tuple[int, int, int, float, bool, float | None]:
        """Jobs that agree on this run as one pipeline call."""
        return (
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.negative_prompt is not None,
            self.strength,
        )

    @property
    def steps_run(self) -> int:
        """Denoising steps the call really runs: all of them for text-to-image, the last part for img2img."""
        return self.steps if self.strength is None else img2img_steps(self.steps, self.strength)

    @property
    def seeds(self) -> list[int]:
        return image_seeds(self.seed, self.count)

    @property
    def cost(self) -> int:
        """What the job takes of a batch: its images, twice over with guidance (the transformer runs each
        image's latents once with the prompt and once with the negative prompt, in one batch)."""
        return self.count * (2 if self.guidance_scale > 0 else 1)


def img2img_steps(steps: int, strength: float) -> int:
    """Steps ZImageImg2ImgPipeline runs for ``num_inference_steps=steps`` at ``strength``.

    Its ``get_timesteps`` skips the first ``int(steps - steps * strength)`` timesteps (scheduler order 1):
    8 steps at 0.6 run 5. Kept in step with the installed pipeline by a test that counts the steps it runs.
    """
    init_timestep = min(steps * strength, steps)
    return steps - int(max(steps - init_timestep, 0))


def fit_init_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """The start image at the job's size: scaled to cover it, then the overflow cropped evenly from both sides
    (a portrait avatar for a landscape image keeps its middle band, never a squashed face)."""
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))


class ModelLoadError(RuntimeError):
    pass


class GenerationCanceled(Exception):
    """Every job of a pipeline call was canceled: the call stopped after a step, with no images."""


class StepHook:
    """diffusers' ``callback_on_step_end`` for one call: reports each step, acts on cancels.

    The call's entries (one latent row and one prompt embedding per image) belong to jobs; ``row_jobs`` says
    whose each row still in the call is, so a canceled job's rows can leave the call and the images that come
    out are matched to their jobs by position.
    """

    # What the callback asks the pipeline for: both are in ``_callback_tensor_inputs`` of ZImagePipeline and
    # of ZImageImg2ImgPipeline, whose loop takes them back from the callback the same way.
    TENSOR_INPUTS = ("latents", "prompt_embeds")

    def __init__(
        self,
        row_jobs: list[int],
        total_steps: int,
        *,
        guided: bool,
        on_step: StepListener | None = None,
        canceled: CancelCheck | None = None,
        previews: dict[int, tuple[int, ...]] | None = None,
        on_preview: PreviewListener | None = None,
    ) -> None:
        self.row_jobs = list(row_jobs)
        self.jobs = frozenset(row_jobs)
        self.total_steps = total_steps
        self.guided = guided
        self.on_step = on_step
        self.canceled = canceled
        self.gone: frozenset[int] = frozenset()
        # Image-steps run: one per row per step, so a canceled job's rows stop counting when they leave.
        self.denoised = 0
        # step -> jobs that want a partial image after it.
        self.previews: dict[int, list[int]] = {}
        if on_preview is not None:
            for job, steps in (previews or {}).items():
                for step in steps:
                    self.previews.setdefault(step, []).append(job)
        self.on_preview = on_preview
        # The latents before this step, row for row with ``row_jobs``: with them a partial image is the
        # step's estimate of the clean image rather than the noisy latents (see ``clean_estimate``).
        self.previous: Any = None

    def __call__(self, pipe: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.denoised += len(self.row_jobs)
        if self.canceled is not None:
            self.gone = frozenset(self.canceled()) & self.jobs
            if self.gone == self.jobs:
                # Nobody waits for any image of this call: no more steps, no decode.
                raise GenerationCanceled(f"all {len(self.jobs)} jobs canceled after step {step_index + 1}")
            if self.gone and not self.guided:
                out = self.drop_rows(tensors)
        if self.previews:
            self.preview(pipe, step_index, tensors, out)
        if self.on_step is not None:
            self.on_step(step_index + 1, self.total_steps)
        return out

    def preview(self, pipe: Any, step_index: int, tensors: dict[str, Any], out: dict[str, Any]) -> None:
        """Decode the first image of each job that wants a partial image after this step."""
        step = step_index + 1
        latents = out.get("latents", tensors["latents"])
        wanted = [job for job in self.previews.get(step, ()) if job not in self.gone]
        if wanted and self.on_preview is not None:
            # Image-to-image starts partway down the schedule (``begin_index``): its step's sigmas are there.
            offset = getattr(pipe.scheduler, "begin_index", None) or 0
            clean = clean_estimate(pipe.scheduler, offset + step_index, latents, self.previous)
            for job in wanted:
                row = self.row_jobs.index(job)
                self.on_preview(job, step, self.total_steps, decode_latents(pipe, clean[row : row + 1]))
        # Kept only while a later step still has a preview to make; rows as they go into the next step.
        later = any(s > step for s in self.previews)
        self.previous = latents if later else None

    def drop_rows(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """The call's tensors without the rows of canceled jobs; {} when none of them is left in the call.

        Only without guidance (the same in ZImagePipeline and ZImageImg2ImgPipeline, whose loops are alike
        from the start latents on): the unguided step runs the transformer on whatever batch ``latents`` and
        ``prompt_embeds`` hold and steps each row on its own (``timestep`` follows ``latents.shape[0]``;
        ``actual_batch_size`` is read only in the CFG branch), and the decode takes what is left. Under CFG
        the pipeline splits the transformer's output at ``actual_batch_size``, fixed at the start of the call,
        so rows cannot leave: canceled jobs ride along to the end and their images are dropped afterwards.
        """
        keep = [row for row, job in enumerate(self.row_jobs) if job not in self.gone]
        if len(keep) == len(self.row_jobs):
            return {}
        latents = tensors["latents"]
        embeds = tensors["prompt_embeds"]
        self.row_jobs = [self.row_jobs[row] for row in keep]
        index = torch.tensor(keep, device=latents.device)
        return {"latents": latents.index_select(0, index), "prompt_embeds": [embeds[row] for row in keep]}


def init_image_of(job: ImageJob) -> Image.Image:
    if job.init_image is None:
        raise ValueError("an image-to-image job has no init image")
    return job.init_image


def clean_estimate(scheduler: Any, step_index: int, latents: Any, previous: Any) -> Any:
    """The clean latents the flow-matching step points at, from the latents before and after it.

    FlowMatchEulerDiscreteScheduler steps ``x' = x + (s' - s) v`` with ``x = (1 - s) x0 + s noise`` and
    ``v = noise - x0``, so ``x0 = x' - s' v``. Without the latents before the step (the first step, rows
    that changed, or a stochastic scheduler) the latents themselves are the estimate: a noisier preview.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    stochastic = bool(getattr(getattr(scheduler, "config", None), "stochastic_sampling", False))
    if previous is None or sigmas is None or stochastic or previous.shape != latents.shape:
        return latents
    sigma, sigma_next = float(sigmas[step_index]), float(sigmas[step_index + 1])
    if sigma == sigma_next:
        return latents
    velocity = (latents - previous) / (sigma_next - sigma)
    return latents - sigma_next * velocity


def decode_latents(pipe: Any, latents: Any) -> Image.Image:
    """One row of latents as a PIL image, decoded exactly as ZImagePipeline decodes its output."""
    vae = pipe.vae
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    decoded = vae.decode(scaled, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0]


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
        # ZImageImg2ImgPipeline over ``pipe``'s own modules (``load``): no weight is held twice.
        self.img2img: Any = None
        # Pipeline calls per (width, height), warm-up included: whether a request is the first at its size.
        self.calls_by_shape: Counter[tuple[int, int]] = Counter()
        self.tiled_calls = 0
        # Image-steps denoised over all calls (one per image per step), canceled calls included.
        self.image_steps = 0

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
        from diffusers import ZImageImg2ImgPipeline, ZImagePipeline

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
        # Built after the attention backend and compilation, so it runs the same (shared) transformer. The
        # scheduler is shared too: safe, since one runner drives both and set_timesteps resets its state.
        self.img2img = ZImageImg2ImgPipeline(**pipe.components)
        self.img2img.set_progress_bar_config(disable=True)

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
    def run(
        self,
        jobs: list[ImageJob],
        on_step: StepListener | None = None,
        canceled: CancelCheck | None = None,
        on_preview: PreviewListener | None = None,
    ) -> tuple[list[list[Image.Image]], list[int]]:
        """One pipeline call for the batch; returns each job's images and each prompt's token count.

        A job of ``count`` images is ``count`` entries of the call, one generator (one seed) each, rather
        than ``num_images_per_prompt``: that argument is per call, and one call mixes jobs of any count.
        ``on_step`` hears every denoising step; a job in ``canceled()`` gets no images (an empty list), and
        when every job is, the call raises ``GenerationCanceled`` at the next step. ``on_preview`` gets each
        job's partial images (``ImageJob.previews``), decoded on this thread between steps. Image-to-image
        jobs (``strength`` set; never batched with text-to-image) run the img2img pipeline, each entry from
        its job's ``init_image`` and seed; their steps are ``steps_run``. Live jobs get
        the images their seeds make whatever their neighbours do: a canceled neighbour's rows leave the
        call, never move into another job's place.
        """
        if canceled is not None and len(frozenset(canceled()) & frozenset(range(len(jobs)))) == len(jobs):
            raise GenerationCanceled(f"all {len(jobs)} jobs canceled before the call")
        token_counts = [self.count_tokens(job.prompt) for job in jobs]
        first = jobs[0]
        entries = [(index, job, seed) for index, job in enumerate(jobs) for seed in job.seeds]
        generators = [torch.Generator(device=self.device).manual_seed(seed) for _, _, seed in entries]
        negative = None
        if first.negative_prompt is not None:
            negative = [job.negative_prompt or "" for _, job, _ in entries]
        tiled = 0 < self.vae_tiling_above < max(first.width, first.height)
        # Per call, not once at load: tiled decoding is slower and blends seams, so sizes at or under the
        # threshold keep the plain decoder. Safe because one runner drives this pipeline at a time.
        if tiled:
            self.pipe.vae.enable_tiling()
            self.tiled_calls += 1
        else:
            self.pipe.vae.disable_tiling()
        self.calls_by_shape[(first.width, first.height)] += 1
        hook = StepHook(
            [index for index, _, _ in entries],
            first.steps_run,
            guided=first.guidance_scale > 0,
            on_step=on_step,
            canceled=canceled,
            previews={index: job.previews for index, job in enumerate(jobs) if job.previews},
            on_preview=on_preview,
        )
        # Image-to-image: each entry starts from its own job's image (the batch key keeps one strength).
        img2img: dict[str, Any] = {}
        if first.strength is not None:
            img2img = {"image": [init_image_of(job) for _, job, _ in entries], "strength": first.strength}
        started = time.perf_counter()
        try:
            out = (self.img2img if img2img else self.pipe)(
                **img2img,
                prompt=[job.prompt for _, job, _ in entries],
                negative_prompt=negative,
                height=first.height,
                width=first.width,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                max_sequence_length=self.sequence_length_for(token_counts),
                output_type="pil",
                callback_on_step_end=hook,
                callback_on_step_end_tensor_inputs=list(StepHook.TENSOR_INPUTS),
            )
        finally:
            self.image_steps += hook.denoised
        images = list(out.images)
        if len(images) != len(hook.row_jobs):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(hook.row_jobs)} asked")
        log.debug(
            "batch done", extra={"n": len(images), "ms": round((time.perf_counter() - started) * 1000, 1)}
        )
        per_job: list[list[Image.Image]] = [[] for _ in jobs]
        for index, image in zip(hook.row_jobs, images, strict=True):
            # Under CFG a canceled job's rows rode along to the end; their images go nowhere.
            if index not in hook.gone:
                per_job[index].append(image)
        return per_job, token_counts
