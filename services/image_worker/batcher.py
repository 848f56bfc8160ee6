"""Micro-batching scheduler: one runner task per device pipeline, all pulling from one pending list.

Why a list and not an asyncio.Queue: a runner that has taken a job looks for more *compatible* jobs (same
size, steps, guidance) anywhere in the pending list and leaves the others in order for the next call.
``max_batch`` bounds what one call holds in images (``ImageJob.cost``: a job of n images costs n, twice that
with guidance), so GPU memory stays bounded however requests split their images; ``BatchPolicy`` lowers that
bound by image size (batching large images gains nothing). A job is never split across calls, and the first
job of a call is always taken (the engine refuses jobs of more than ``max_batch`` images; a guided one may
fill twice that).
Each device is driven by exactly one runner, so a pipeline never sees two calls at once, and several
devices in one worker share the load without any routing logic.

A submitter hears its job's denoising steps (``on_progress``, on the event loop) and goes away by cancelling
``submit``: the job is marked canceled, and the pipeline call it is in drops it at its next step (and stops
there when nobody in the call is left; ``DevicePipeline.run``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from PIL import Image

from services.image_worker.batch_policy import BatchPolicy
from services.image_worker.pipeline import (
    DevicePipeline,
    GenerationCanceled,
    ImageJob,
    PreviewListener,
    StepListener,
)
from shared.errors import InferenceFailed
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)
# (steps done, steps in the call), called on the event loop.
ProgressListener = Callable[[int, int], None]
# (step, steps in the call, the job's first image as that step leaves it), called on the event loop.
PartialListener = Callable[[int, int, Image.Image], None]


@dataclass(slots=True)
class ImageResult:
    # The job's images, in the order of its seeds.
    images: list[Image.Image]
    prompt_tokens: int
    device: str
    # Images in the pipeline call this job was part of (its own and its neighbours').
    batch_size: int
    queue_ms: float
    inference_ms: float

    @property
    def image(self) -> Image.Image:
        return self.images[0]


@dataclass(slots=True)
class _Pending:
    job: ImageJob
    future: asyncio.Future[ImageResult]
    on_progress: ProgressListener | None = None
    on_partial: PartialListener | None = None
    # Set on the loop when the submitter goes away; read by the pipeline's thread at each step (a plain
    # attribute: one writer, and a reader that only needs to see it by the next step).
    canceled: bool = False
    # The last step passed on: a call retried after a failed batch starts again at step 1, and the
    # submitter hears each step once, in order.
    reported: int = 0
    partial_reported: int = 0
    enqueued: float = field(default_factory=time.perf_counter)


def runner_labels(devices: list[str]) -> list[str]:
    """One metric label per runner: the device name, suffixed ``#i`` when a device is listed twice.

    ``IMAGE_DEVICES=cpu,cpu`` (or two pipelines on one large GPU) would otherwise merge both runners into one
    time series, and nobody could see whether the second pipeline serves at all.
    """
    return [f"{d}#{i}" if devices.count(d) > 1 else d for i, d in enumerate(devices)]


class Batcher:
    def __init__(
        self,
        pipelines: list[DevicePipeline],
        *,
        max_batch: int,
        batch_wait_ms: float,
        metrics: ServiceMetrics,
        max_batch_by_pixels: dict[int, int] | None = None,
    ) -> None:
        self.pipelines = pipelines
        self.max_batch = max_batch
        self.policy = BatchPolicy(max_batch, max_batch_by_pixels or {})
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._pending: deque[_Pending] = deque()
        self._cond = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self.labels = runner_labels([pipe.device for pipe in pipelines])
        self.m_batch = metrics.histogram(
            "imgpod_image_batch_size", "Images per pipeline call", buckets=(1, 2, 4, 8, 16, 32)
        )
        self.m_infer = metrics.histogram("imgpod_model_inference_seconds", "Pipeline call time", ("device",))
        self.m_depth = metrics.gauge("imgpod_image_pending", "Jobs waiting for a pipeline")
        self.m_failed = metrics.counter("imgpod_image_failures_total", "Jobs that failed in the pipeline")
        self.m_canceled = metrics.counter(
            "imgpod_image_canceled_total", "Jobs whose caller went away before their images were made"
        )
        self.m_steps = metrics.counter(
            "imgpod_image_steps_total", "Denoising steps run, one per image in the call per step"
        )

    @property
    def concurrency(self) -> int:
        return len(self.pipelines)

    def start(self) -> None:
        for pipe, label in zip(self.pipelines, self.labels, strict=True):
            self._tasks.append(asyncio.create_task(self._runner(pipe, label), name=f"image-runner-{label}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(InferenceFailed("worker is shutting down"))

    async def submit(
        self,
        job: ImageJob,
        on_progress: ProgressListener | None = None,
        on_partial: PartialListener | None = None,
    ) -> ImageResult:
        """The job's images; ``on_progress(step, total)`` hears each denoising step of its pipeline call,
        ``on_partial(step, total, image)`` gets its partial images (``job.previews``)."""
        future: asyncio.Future[ImageResult] = asyncio.get_running_loop().create_future()
        item = _Pending(job, future, on_progress, on_partial)
        async with self._cond:
            self._pending.append(item)
            self.m_depth.set(len(self._pending))
            self._cond.notify_all()
        try:
            return await future
        except asyncio.CancelledError:
            # The caller went away (client disconnect, timeout): a pending job is skipped, a running one
            # leaves its pipeline call at the next step.
            if future.cancelled():
                item.canceled = True
                self.m_canceled.inc()
            raise

    def _limit(self, batch: list[_Pending]) -> int:
        first = batch[0].job
        return self.policy.limit_for(first.width, first.height)

    def _take_compatible(self, batch: list[_Pending]) -> None:
        key = batch[0].job.batch_key()
        limit = self._limit(batch)
        cost = sum(p.job.cost for p in batch)
        keep: deque[_Pending] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():
                continue
            if cost + item.job.cost <= limit and item.job.batch_key() == key:
                batch.append(item)
                cost += item.job.cost
            else:
                keep.append(item)
        self._pending = keep

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        async with self._cond:
            while True:
                await self._cond.wait_for(lambda: bool(self._pending))
                first = self._pending.popleft()
                if not first.future.done():
                    break
            batch = [first]
            self._take_compatible(batch)
            deadline = loop.time() + self.batch_wait_s
            while sum(p.job.cost for p in batch) < self._limit(batch):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except TimeoutError:
                    break
                self._take_compatible(batch)
            self.m_depth.set(len(self._pending))
        return batch

    async def _runner(self, pipe: DevicePipeline, label: str) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._serve(pipe, label, batch)
            except Exception as exc:
                # A runner that dies leaves its device idle and every later request waiting forever while
                # /healthz still says ok; fail this batch and keep serving instead.
                log.exception("image runner error", extra={"device": label})
                for item in batch:
                    self._fail(item, exc)

    async def _call(
        self, pipe: DevicePipeline, batch: list[_Pending]
    ) -> tuple[list[list[Image.Image]], list[int]]:
        """One pipeline call off the loop, its steps relayed to the submitters and counted."""
        loop = asyncio.get_running_loop()

        def relay(step: int, total: int) -> None:
            loop.call_soon_threadsafe(self._relay, batch, step, total)

        # No listener, no loop wake-up per step.
        on_step: StepListener | None = relay if any(p.on_progress for p in batch) else None

        def canceled() -> list[int]:
            return [index for index, item in enumerate(batch) if item.canceled]

        def partial(index: int, step: int, total: int, image: Image.Image) -> None:
            loop.call_soon_threadsafe(self._relay_partial, batch[index], step, total, image)

        # No listener, no decode: a job's previews are only made for a submitter that takes them.
        wants_partials = any(p.on_partial and p.job.previews for p in batch)
        on_preview: PreviewListener | None = partial if wants_partials else None
        jobs = [p.job if p.on_partial else replace(p.job, previews=()) for p in batch]
        before = pipe.image_steps
        try:
            return await asyncio.to_thread(pipe.run, jobs, on_step, canceled, on_preview)
        finally:
            self.m_steps.inc(pipe.image_steps - before)

    def _relay(self, batch: list[_Pending], step: int, total: int) -> None:
        for item in batch:
            if item.on_progress is None or item.future.done() or step <= item.reported:
                continue
            item.reported = step
            try:
                item.on_progress(step, total)
            except Exception:
                # A listener's fault must not reach the other jobs of the call.
                log.exception("progress listener failed")

    def _relay_partial(self, item: _Pending, step: int, total: int, image: Image.Image) -> None:
        # A retried call makes its partial images again: each is passed on once, like the steps.
        if item.on_partial is None or item.future.done() or step <= item.partial_reported:
            return
        item.partial_reported = step
        try:
            item.on_partial(step, total, image)
        except Exception:
            log.exception("partial image listener failed")

    async def _serve(self, pipe: DevicePipeline, label: str, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            images, tokens = await self._call(pipe, batch)
        except GenerationCanceled:
            # Everyone in the call went away: nothing failed and nobody waits for a retry.
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            # One bad item must not fail the others: run them one by one to find it.
            log.warning("batch failed, retrying items alone", extra={"n": len(batch)}, exc_info=exc)
            for item in batch:
                await self._run_single(pipe, label, item)
            return
        elapsed = time.perf_counter() - started
        # The images the call was asked for, canceled ones included: what it held of the device.
        n = sum(item.job.count for item in batch)
        self._observe(label, n, elapsed)
        for item, job_images, count in zip(batch, images, tokens, strict=True):
            self._resolve(item, job_images, count, pipe.device, n, started, elapsed)

    async def _run_single(self, pipe: DevicePipeline, label: str, item: _Pending) -> None:
        if item.future.done():
            return
        started = time.perf_counter()
        try:
            (images,), (count,) = await self._call(pipe, [item])
        except GenerationCanceled:
            return
        except Exception as exc:
            self._fail(item, exc)
            return
        elapsed = time.perf_counter() - started
        self._observe(label, len(images), elapsed)
        self._resolve(item, images, count, pipe.device, len(images), started, elapsed)

    def _observe(self, label: str, n: int, elapsed: float) -> None:
        self.m_batch.observe(n)
        self.m_infer.labels(label).observe(elapsed)

    def _resolve(
        self,
        item: _Pending,
        images: list[Image.Image],
        tokens: int,
        device: str,
        n: int,
        started: float,
        elapsed: float,
    ) -> None:
        if item.future.done():
            return
        item.future.set_result(
            ImageResult(
                images=images,
                prompt_tokens=tokens,
                device=device,
                batch_size=n,
                queue_ms=(started - item.enqueued) * 1000,
                inference_ms=elapsed * 1000,
            )
        )

    def _fail(self, item: _Pending, exc: Exception) -> None:
        self.m_failed.inc()
        log.error("image generation failed", exc_info=exc)
        if not item.future.done():
            # The cause stays in the log (with the request id of whoever submitted it); the body is public.
            item.future.set_exception(InferenceFailed("image generation failed"))
