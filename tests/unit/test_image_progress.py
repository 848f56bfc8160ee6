"""Per-step progress and cancel inside the image worker: the step hook on tensors, then the real pipeline and
engine on the tiny Z-Image checkpoint (``DevicePipeline.load``, the production loading code)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.pipeline import DevicePipeline, GenerationCanceled, ImageJob, StepHook
from services.image_worker.settings import ImageSettings
from shared.metrics import ServiceMetrics


def call_tensors(rows: int) -> dict[str, Any]:
    """What the pipeline hands the hook: a latent row and a prompt embedding (own length) per entry."""
    latents = torch.arange(rows * 4 * 2 * 2, dtype=torch.float32).reshape(rows, 4, 2, 2)
    embeds = [torch.full((3 + row, 8), float(row)) for row in range(rows)]
    return {"latents": latents, "prompt_embeds": embeds}


def test_hook_reports_each_step_and_keeps_the_call_whole_without_cancels() -> None:
    seen: list[tuple[int, int]] = []
    hook = StepHook([0, 1], 3, guided=False, on_step=lambda s, t: seen.append((s, t)), canceled=lambda: [])
    for i in range(3):
        assert hook(None, i, None, call_tensors(2)) == {}
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert hook.denoised == 6


def test_hook_drops_only_the_canceled_jobs_rows() -> None:
    # Job 0 has two images (rows 0, 1), jobs 1 and 2 one each.
    gone: list[int] = []
    hook = StepHook([0, 0, 1, 2], 10, guided=False, canceled=lambda: gone)
    tensors = call_tensors(4)
    assert hook(None, 0, None, tensors) == {}
    gone.append(0)
    out = hook(None, 1, None, tensors)
    assert torch.equal(out["latents"], tensors["latents"][2:])
    assert all(
        e is tensors["prompt_embeds"][row] for e, row in zip(out["prompt_embeds"], (2, 3), strict=True)
    )
    assert hook.row_jobs == [1, 2]
    # The next step's tensors are the shrunk ones; job 2 goes too, job 1's row is what is left.
    gone.append(2)
    out2 = hook(None, 2, None, out)
    assert torch.equal(out2["latents"], tensors["latents"][2:3])
    assert out2["prompt_embeds"][0] is tensors["prompt_embeds"][2]
    assert hook.row_jobs == [1]
    # A step with nothing new to drop leaves the pipeline's tensors as they are.
    assert hook(None, 3, None, out2) == {}
    assert hook.denoised == 4 + 4 + 2 + 1


def test_hook_under_guidance_lets_canceled_rows_ride_along() -> None:
    hook = StepHook([0, 1], 4, guided=True, canceled=lambda: [1])
    assert hook(None, 0, None, call_tensors(2)) == {}
    assert hook.row_jobs == [0, 1]
    assert hook.gone == {1}


def test_hook_stops_the_call_when_every_job_is_canceled() -> None:
    seen: list[int] = []
    gone: list[int] = []
    hook = StepHook([0, 1, 1], 8, guided=False, on_step=lambda s, t: seen.append(s), canceled=lambda: gone)
    hook(None, 0, None, call_tensors(3))
    gone.extend([0, 1, 7])  # an index of no job in this call changes nothing
    with pytest.raises(GenerationCanceled):
        hook(None, 1, None, call_tensors(3))
    assert seen == [1], "the step that stops the call is not reported"


# --- the real pipeline -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tiny_models: dict[str, Path]) -> DevicePipeline:
    device_pipe = DevicePipeline(str(tiny_models["zimage"]), "cpu", "auto", 64)
    device_pipe.load()
    return device_pipe


@pytest.fixture
def decodes(pipe: DevicePipeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the VAE decodes (the real decoder still runs)."""
    calls: list[int] = []
    real = pipe.pipe.vae.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.pipe.vae, "decode", counting)
    yield calls


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def cancel_at(step: int, jobs: list[int]) -> tuple[list[int], Any, Any]:
    """on_step / canceled pair that cancels ``jobs`` once ``step`` is reported (seen at the next step)."""
    steps: list[int] = []
    gone: list[int] = []

    def on_step(s: int, total: int) -> None:
        steps.append(s)
        if s == step:
            gone.extend(jobs)

    return steps, on_step, lambda: gone


def test_canceled_job_leaves_the_call_and_the_others_keep_their_images(pipe: DevicePipeline) -> None:
    fox = ImageJob("a red fox in the snow", None, 1, 128, 128, 8, 0.0)
    boats = ImageJob("two boats in a harbour", None, 2, 128, 128, 8, 0.0, count=2)
    whole, _ = pipe.run([fox, boats])
    steps, on_step, canceled = cancel_at(2, [0])
    before = pipe.image_steps
    cut, tokens = pipe.run([fox, boats], on_step, canceled)
    assert steps == list(range(1, 9))
    assert cut[0] == [] and len(cut[1]) == 2 and len(tokens) == 2
    # Steps 1-3 denoised the three rows; the fox's row left after step 3, so steps 4-8 ran two.
    assert pipe.image_steps - before == 3 * 3 + 5 * 2
    for kept, full in zip(cut[1], whole[1], strict=True):
        # The same image as without the cancel, up to float rounding of a smaller batch.
        assert np.abs(pixels(kept) - pixels(full)).max() <= 2
    # ... and never the canceled neighbour's.
    assert np.abs(pixels(cut[1][0]) - pixels(whole[0][0])).mean() > 10


def test_cancel_under_guidance_drops_the_images_after_the_call(pipe: DevicePipeline) -> None:
    fox = ImageJob("a red fox", "blurry", 1, 64, 64, 4, 1.5)
    boat = ImageJob("a boat", "blurry", 2, 64, 64, 4, 1.5)
    whole, _ = pipe.run([fox, boat])
    _, on_step, canceled = cancel_at(1, [0])
    before = pipe.image_steps
    cut, _ = pipe.run([fox, boat], on_step, canceled)
    assert cut[0] == []
    # The rows rode along (the batch never changed): the kept image is bit-identical.
    assert cut[1][0].tobytes() == whole[1][0].tobytes()
    assert pipe.image_steps - before == 2 * 4


def test_call_of_only_canceled_jobs_stops_before_the_decode(pipe: DevicePipeline, decodes: list[int]) -> None:
    job = ImageJob("a lighthouse", None, 3, 128, 128, 8, 0.0)
    steps, on_step, canceled = cancel_at(2, [0])
    before = pipe.image_steps
    with pytest.raises(GenerationCanceled):
        pipe.run([job], on_step, canceled)
    assert steps == [1, 2]
    assert pipe.image_steps - before == 3  # seen at the end of step 3: no step 4
    assert decodes == []
    # Nothing is left behind: the next call on the pipeline runs whole.
    images, _ = pipe.run([job])
    assert len(images[0]) == 1 and decodes == [1]


def test_call_canceled_before_it_starts_runs_no_step(pipe: DevicePipeline) -> None:
    before = pipe.image_steps
    with pytest.raises(GenerationCanceled):
        pipe.run([ImageJob("x", None, 1, 64, 64, 4, 0.0)], None, lambda: [0])
    assert pipe.image_steps == before


# --- the engine and its batcher ----------------------------------------------------------------------------


def settings_for(model_dir: Path) -> ImageSettings:
    return ImageSettings(
        model_id=str(model_dir),
        devices="cpu",
        default_width=64,
        default_height=64,
        max_side=512,
        max_sequence_length=64,
        warmup=False,
        output_safety="off",
        batch_wait_ms=0.0,
    )


def sample(engine: ImageEngine, name: str) -> float:
    return engine.metrics.registry.get_sample_value(name) or 0.0


def test_engine_relays_each_step_on_the_loop(tiny_models: dict[str, Path]) -> None:
    async def main() -> tuple[list[tuple[int, int]], set[int], int, float]:
        engine = ImageEngine(settings_for(tiny_models["zimage"]), ServiceMetrics("image_test"))
        await engine.start()
        assert engine.state == "ok", engine.error
        try:
            seen: list[tuple[int, int]] = []
            threads: set[int] = set()

            def on_progress(step: int, total: int) -> None:
                seen.append((step, total))
                threads.add(threading.get_ident())

            params = GenerationParams("a red fox", None, 4, 64, 64, 6, None, n=2)
            await engine.generate(params, "chat1to1", on_progress)
            return seen, threads, threading.get_ident(), sample(engine, "imgpod_image_steps_total")
        finally:
            await engine.stop()

    seen, threads, loop_thread, image_steps = asyncio.run(main())
    assert seen == [(s, 6) for s in range(1, 7)]
    assert threads == {loop_thread}
    assert image_steps == 6 * 2


def test_cancelled_generate_stops_its_call_and_is_no_failure(tiny_models: dict[str, Path]) -> None:
    async def main() -> dict[str, float]:
        engine = ImageEngine(settings_for(tiny_models["zimage"]), ServiceMetrics("image_test"))
        await engine.start()
        assert engine.state == "ok", engine.error
        try:
            params = GenerationParams("a red fox", None, 4, 512, 512, 50, None)
            task: asyncio.Task[Any] | None = None

            def on_progress(step: int, total: int) -> None:
                if step == 2 and task is not None:
                    task.cancel()

            task = asyncio.create_task(engine.generate(params, "chat1to1", on_progress))
            with pytest.raises(asyncio.CancelledError):
                await task
            # The runner counts the call's steps when the call returns.
            while sample(engine, "imgpod_image_steps_total") == 0:
                await asyncio.sleep(0.01)
            held_after_cancel = engine.held
            after = await engine.generate(GenerationParams("a boat", None, 1, 64, 64, 2, None), "chat1to1")
            return {
                "canceled": sample(engine, "imgpod_image_canceled_total"),
                "failures": sample(engine, "imgpod_image_failures_total"),
                "steps_of_canceled_call": sample(engine, "imgpod_image_steps_total") - 2,
                "held": held_after_cancel,
                "next_images": len(after.result.images),
            }
        finally:
            await engine.stop()

    out = asyncio.run(main())
    assert out["canceled"] == 1.0
    assert out["failures"] == 0.0
    assert 2 <= out["steps_of_canceled_call"] < 50
    assert out["held"] == 0
    assert out["next_images"] == 1
