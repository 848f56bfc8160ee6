"""The image engine: loads one pipeline per device in the background and turns requests into jobs."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from PIL import Image

from services.image_worker.batcher import Batcher, ImageResult, ProgressListener
from services.image_worker.devices import resolve_devices
from services.image_worker.model_files import ModelFilesInvalid
from services.image_worker.output_safety import OutputSafetyChecker, SafetyVerdict
from services.image_worker.pipeline import (
    AttentionBackendUnavailable,
    DevicePipeline,
    ImageJob,
    ModelLoadError,
    ModelMissing,
    fit_init_image,
    preview_steps,
)
from services.image_worker.settings import ImageSettings
from shared.errors import (
    InferenceTimeout,
    ModelUnavailable,
    Overloaded,
    PayloadTooLarge,
    PolicyBlocked,
    UnsupportedMedia,
    ValidationFailed,
)
from shared.images import decode_base64_field, decode_upload, encode_image_base64
from shared.metrics import ServiceMetrics
from shared.models import MAX_SEED
from shared.pixel_budget import PixelBudget
from shared.public_names import public_model_id
from shared.roles import RoleName, policy_for
from shared.test_hooks import Gate

log = logging.getLogger(__name__)
# (step, steps in the call, the partial image as base64 PNG), called on the event loop.
PartialImageListener = Callable[[int, int, str], None]
EngineState = Literal["loading", "ok", "error"]


@dataclass(frozen=True, slots=True)
class GenerationParams:
    prompt: str
    negative_prompt: str | None
    seed: int | None
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    # Images of this prompt, made in one pipeline call with seeds seed, seed+1, ...
    n: int = 1
    # Partial images of the first image, taken during the denoising (``preview_steps``).
    partial_images: int = 0
    # Image-to-image: the start image as the request's base64 (decoded by ``admit_decoded``, in a thread)
    # and how far from it; without an image the strength is checked against the bounds but not used.
    init_image: str | None = None
    strength: float | None = None


@dataclass(slots=True)
class Generated:
    result: ImageResult
    job: ImageJob
    prompt_tokens: int
    prompt_truncated: bool
    safety_checked: bool


@dataclass(slots=True)
class Admission:
    """A request the worker took: its job holds ``job.count`` of the worker's bound until released."""

    batcher: Batcher
    job: ImageJob
    started: float
    released: bool = False


class ImageEngine:
    def __init__(self, settings: ImageSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state: EngineState = "loading"
        self.error: str | None = None
        self.devices: list[str] = []
        self.dtype: str | None = None
        self.batcher: Batcher | None = None
        self._pipelines: list[DevicePipeline] = []
        self.safety: OutputSafetyChecker | None = None
        # Set only when the test_hooks setting is on: parks generations after admission.
        self.gate: Gate | None = None
        # Requests this worker holds (at the gate, pending, running): the bound behind its 429.
        self.held = 0
        self._mean_request_s = 1.0
        self.m_unsafe = metrics.counter(
            "imgpod_output_safety_blocked_total", "Generated images withheld as unsafe"
        )
        self.m_partials = metrics.counter(
            "imgpod_partial_images_total", "Partial images taken during denoising, by outcome", ("outcome",)
        )
        self.m_img2img = metrics.counter(
            "imgpod_image_img2img_total", "Image-to-image jobs run (requests with an init image)"
        )
        # Start images decode in threads; together they hold at most two of the largest at full size.
        self.decode_budget = PixelBudget(2 * settings.init_image_max_pixels)

    def checks_output(self, route_role: RoleName) -> bool:
        """Whether images made on a route of this role get the pixel check (the route's role, not ours)."""
        mode = self.settings.output_safety
        return mode == "on" or (mode == "auto" and policy_for(route_role).pixel_check)

    @property
    def route_roles(self) -> tuple[RoleName, ...]:
        """The roles of the routes this worker serves: the general /v1/generate and its own role's route."""
        return ("general", self.settings.role) if self.settings.role != "general" else ("general",)

    async def start(self) -> None:
        """Load every pipeline off the event loop; failures are kept for /healthz, never raised."""
        started = time.perf_counter()
        try:
            self.devices = resolve_devices(self.settings.devices)
            pipelines = [
                DevicePipeline(
                    self.settings.model_id,
                    d,
                    self.settings.dtype,
                    self.settings.max_sequence_length,
                    revision=self.settings.model_revision,
                    vae_tiling_above=self.settings.vae_tiling_above,
                )
                for d in self.devices
            ]
            for pipe in pipelines:
                await asyncio.to_thread(
                    pipe.load,
                    attention_backend=self.settings.attention_backend,
                    compile_transformer=self.settings.compile,
                )
                if self.settings.warmup:
                    await asyncio.to_thread(self._warm_up, pipe)
            if any(self.checks_output(r) for r in self.route_roles):
                # A moderated role without its output check must not serve: fail visibly instead.
                try:
                    self.safety = await asyncio.to_thread(
                        OutputSafetyChecker,
                        self.settings.output_safety_blocking,
                        self.settings.output_safety_model,
                    )
                except Exception as exc:
                    raise SafetyCheckerUnavailable(
                        f"output safety checker unavailable: {type(exc).__name__}: {exc}"
                    ) from exc
            self._pipelines = pipelines
            self.dtype = str(pipelines[0].dtype).removeprefix("torch.")
            self.batcher = Batcher(
                pipelines,
                max_batch=self.settings.max_batch,
                batch_wait_ms=self.settings.batch_wait_ms,
                metrics=self.metrics,
                max_batch_by_pixels=self.settings.max_batch_by_pixels,
            )
            self.batcher.start()
            self.state = "ok"
            log.info(
                "image model ready",
                extra={"model": self.settings.model_id, "s": round(time.perf_counter() - started, 2)},
            )
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        # Health and 503 bodies are public (unauthenticated /healthz): a category, never the path or the
        # library's message. The whole cause goes to the log.
        self.state = "error"
        self.error = _public_load_error(exc)
        log.error("image model unavailable", extra={"detail": self.error}, exc_info=exc)

    @property
    def public_model(self) -> str:
        return public_model_id(self.settings.model_id, self.settings.served_model_name)

    def _warm_up(self, pipe: DevicePipeline) -> None:
        # The first call at a size pays for kernel selection, allocator growth and (with ``compile``) the
        # compilation for that shape; pay it for every configured size before reporting healthy.
        for width, height in self.settings.warmup_shapes:
            pipe.run([ImageJob("warm-up", None, 0, width, height, 1, 0.0)])

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self._pipelines.clear()

    def require_ready(self) -> Batcher:
        if self.state == "ok" and self.batcher is not None:
            return self.batcher
        if self.state == "loading":
            raise ModelUnavailable("image model is still loading; retry shortly")
        raise ModelUnavailable(f"image model unavailable: {self.error}")

    def make_job(self, params: GenerationParams) -> ImageJob:
        s = self.settings
        width = params.width or s.default_width
        height = params.height or s.default_height
        for name, side in (("width", width), ("height", height)):
            if side % 16:
                raise ValidationFailed(f"{name} must be a multiple of 16")
            if side > s.max_side:
                raise ValidationFailed(f"{name} {side} is over the limit of {s.max_side}")
        if width * height > s.max_pixels:
            raise ValidationFailed(f"{width}x{height} is over the limit of {s.max_pixels} pixels")
        steps = params.steps or s.default_steps
        if steps > s.max_steps:
            raise ValidationFailed(f"steps {steps} is over the limit of {s.max_steps}", param="steps")
        guidance = s.default_guidance if params.guidance_scale is None else params.guidance_scale
        if guidance > s.max_guidance:
            raise ValidationFailed(
                f"guidance_scale {guidance:g} is over the limit of {s.max_guidance:g}", param="guidance_scale"
            )
        if params.n > s.max_n:
            raise ValidationFailed(f"n {params.n} is over the limit of {s.max_n}", param="n")
        seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
        # At guidance 0 the pipeline never encodes the negative prompt; dropping it here also lets the job
        # batch with jobs that have none.
        negative = params.negative_prompt.strip() if params.negative_prompt and guidance > 0 else None
        strength = self._strength(params)
        job = ImageJob(
            params.prompt, negative or None, seed, width, height, steps, guidance, params.n, (), strength
        )
        if params.partial_images:
            # Over the steps the call runs: image-to-image skips the first part of the schedule.
            job = replace(job, previews=preview_steps(job.steps_run, params.partial_images))
        return job

    def _strength(self, params: GenerationParams) -> float | None:
        """The job's image-to-image strength (the role's default when the request gives none), in bounds."""
        s = self.settings
        if params.strength is not None and not (
            s.img2img_min_strength <= params.strength <= s.img2img_max_strength
        ):
            raise ValidationFailed(
                f"strength {params.strength:g} is outside this worker's bounds "
                f"[{s.img2img_min_strength:g}, {s.img2img_max_strength:g}]",
                param="strength",
            )
        if params.init_image is None:
            return None
        return s.img2img_strength if params.strength is None else params.strength

    def init_image_for(self, data: str, width: int, height: int) -> Image.Image:
        """The request's start image decoded within the limits and fitted to the job's size (run in a thread).

        Refusals name ``init_image``: 413 over the byte or pixel limit, 422 for anything that is not a JPEG,
        PNG or WebP image (a JSON field has no media type of its own to answer 415 about).
        """
        s = self.settings
        raw = decode_base64_field(data, "init_image", s.init_image_max_bytes)
        try:
            decoded = decode_upload(
                raw,
                max_bytes=s.init_image_max_bytes,
                max_pixels=s.init_image_max_pixels,
                budget=self.decode_budget,
            )
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(f"init_image: {exc.detail}", param="init_image") from None
        except (UnsupportedMedia, ValidationFailed) as exc:
            raise ValidationFailed(f"init_image: {exc.detail}", param="init_image") from None
        return fit_init_image(decoded.image, width, height)

    async def generate(
        self,
        params: GenerationParams,
        route_role: RoleName,
        on_progress: ProgressListener | None = None,
        on_partial: PartialImageListener | None = None,
    ) -> Generated:
        """``admit_decoded`` then ``run_admitted``; ``on_progress(step, total)`` hears each denoising step."""
        return await self.run_admitted(await self.admit_decoded(params), route_role, on_progress, on_partial)

    async def admit_decoded(self, params: GenerationParams) -> Admission:
        """``admit``, then the start image (if any) decoded off the loop into the admitted job.

        The decode comes after the cheap refusals (and the worker's bound), so a full or misconfigured worker
        never decodes; a refused image gives the bound back at once.
        """
        admission = self.admit(params)
        if params.init_image is None:
            return admission
        job = admission.job
        try:
            image = await asyncio.to_thread(self.init_image_for, params.init_image, job.width, job.height)
        except BaseException:
            self.release(admission)
            raise
        admission.job = replace(job, init_image=image)
        return admission

    def admit(self, params: GenerationParams) -> Admission:
        """Every refusal that comes before the work (not ready, invalid, the worker's 429), raised here.

        Split from the run so a streamed answer can refuse with a plain HTTP error before its stream starts.
        The caller must pass the admission to ``run_admitted`` or ``release`` it.
        """
        batcher = self.require_ready()
        job = self.make_job(params)
        # Counted in images, like the batches: a request of n images holds n of the worker's bound (a lone
        # request is always taken, so n over the bound cannot wait forever).
        if self.held and self.held + job.count > self.settings.queue_limit:
            # Busy, not broken: the interface tries another worker or passes the 429 on with this estimate.
            slots = max(1, batcher.concurrency * self.settings.max_batch)
            raise Overloaded(
                "image worker is full; retry later",
                retry_after_s=self.held / slots * self._mean_request_s,
                stage="image",
            )
        self.held += job.count
        return Admission(batcher, job, time.perf_counter())

    def release(self, admission: Admission) -> None:
        """Give back what the admission holds of the bound; once, however many paths end the request."""
        if admission.released:
            return
        admission.released = True
        self.held -= admission.job.count
        self._mean_request_s += 0.2 * (time.perf_counter() - admission.started - self._mean_request_s)

    async def run_admitted(
        self,
        admission: Admission,
        route_role: RoleName,
        on_progress: ProgressListener | None = None,
        on_partial: PartialImageListener | None = None,
    ) -> Generated:
        """The generation; cancelling it (the caller went away) stops the job at its pipeline's next step.

        ``on_partial(step, total, b64_png)`` gets the job's partial images, each one through the same pixel
        check as the final images on a route that has it (a partial image that fails it is withheld, and the
        final images are checked as always). Every partial image is passed on before this returns.
        """
        partials = _Partials(self, self.checks_output(route_role), on_partial) if on_partial else None
        if admission.job.strength is not None:
            self.m_img2img.inc()
        try:
            generated = await self._generate(
                admission.batcher,
                admission.job,
                self.checks_output(route_role),
                on_progress,
                partials.take if partials else None,
            )
        except BaseException:
            if partials is not None:
                partials.drop()
            raise
        finally:
            self.release(admission)
        if partials is not None:
            await partials.flush()
        return generated

    def partial_payload(self, image: Image.Image, check_pixels: bool) -> str | None:
        """A partial image as base64 PNG, or None when the pixel check withholds it (run in a thread)."""
        if check_pixels:
            assert self.safety is not None, "loaded at start-up for every route role that checks pixels"
            if not self.safety.check(image).safe:
                return None
        return encode_image_base64(image, "png")

    async def _generate(
        self,
        batcher: Batcher,
        job: ImageJob,
        check_pixels: bool,
        on_progress: ProgressListener | None,
        on_partial: Callable[[int, int, Image.Image], None] | None = None,
    ) -> Generated:
        if self.gate is not None:
            await self.gate.passthrough()
        try:
            result = await asyncio.wait_for(
                batcher.submit(job, on_progress, on_partial), self.settings.inference_timeout_s
            )
        except TimeoutError as exc:
            raise InferenceTimeout(
                f"image generation took longer than {self.settings.inference_timeout_s:g} s", stage="image"
            ) from exc
        if check_pixels:
            assert self.safety is not None, "loaded at start-up for every route role that checks pixels"
            safety = self.safety
            verdicts: list[SafetyVerdict] = await asyncio.to_thread(
                lambda: [safety.check(image) for image in result.images]
            )
            unsafe = sum(not v.safe for v in verdicts)
            if unsafe:
                # The whole answer is withheld: a request of n images gets n images or none, so a client
                # never mistakes a short answer for the set it asked for.
                self.m_unsafe.inc(unsafe)
                raise PolicyBlocked("a generated image did not pass the safety check", stage="output_safety")
        # The pipeline's limit, which load() may have lowered below the setting to fit the checkpoint.
        tokens = result.prompt_tokens
        truncated = tokens > self._pipelines[0].max_sequence_length
        return Generated(result, job, tokens, truncated, safety_checked=check_pixels)


class _Partials:
    """A generation's partial images on their way out: checked and encoded in a thread, in step order."""

    def __init__(self, engine: ImageEngine, check_pixels: bool, listener: PartialImageListener) -> None:
        self.engine = engine
        self.check_pixels = check_pixels
        self.listener = listener
        self.tasks: list[asyncio.Task[None]] = []

    def take(self, step: int, total: int, image: Image.Image) -> None:
        # Chained on the previous one, so the listener hears them in step order.
        previous = self.tasks[-1] if self.tasks else None
        self.tasks.append(asyncio.create_task(self._send(previous, step, total, image)))

    async def _send(
        self, previous: asyncio.Task[None] | None, step: int, total: int, image: Image.Image
    ) -> None:
        payload = await asyncio.to_thread(self.engine.partial_payload, image, self.check_pixels)
        if previous is not None:
            await asyncio.wait({previous})
        if payload is None:
            self.engine.m_partials.labels("withheld").inc()
            return
        self.engine.m_partials.labels("sent").inc()
        self.listener(step, total, payload)

    def drop(self) -> None:
        """The generation failed or was cancelled: its partial images go nowhere."""
        for task in self.tasks:
            task.cancel()

    async def flush(self) -> None:
        """Every partial image passed on (or found withheld) before the final answer goes out."""
        for outcome in await asyncio.gather(*self.tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("partial image failed", exc_info=outcome)


class SafetyCheckerUnavailable(ModelLoadError):
    """A role whose routes check pixels could not load its checker: it must not serve without it."""


def _public_load_error(exc: Exception) -> str:
    if isinstance(exc, ModelMissing):
        return "the image model's files were not found on this worker"
    if isinstance(exc, SafetyCheckerUnavailable):
        return "the output safety checker could not be loaded"
    if isinstance(exc, ModelFilesInvalid):
        return "the image model's files on this worker are incomplete or truncated; fetch them again"
    if isinstance(exc, AttentionBackendUnavailable):
        # The name is the operator's own setting, not a secret; the library's reason stays in the log.
        return f"attention backend {exc.backend} is not usable on this worker"
    return "the image model could not be loaded"
