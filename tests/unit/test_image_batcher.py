"""Micro-batching and multi-device serving of the image engine, in-process on the tiny Z-Image checkpoint.

Every image here comes from the real ``ZImagePipeline`` loaded by ``DevicePipeline.load`` (the production
loading code); only ``test_one_bad_item_does_not_fail_the_batch`` wraps it to inject a fault.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.image_worker import engine as engine_module
from services.image_worker.batcher import runner_labels
from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.pipeline import DevicePipeline, ImageJob, caption_token_limit
from services.image_worker.routes.health import healthz
from services.image_worker.settings import ImageSettings
from shared.errors import InferenceFailed
from shared.metrics import ServiceMetrics

FAULT_MARK = "<inject-fault>"


def settings_for(model_dir: Path, **overrides: Any) -> ImageSettings:
    values: dict[str, Any] = {
        "model_id": str(model_dir),
        "devices": "cpu",
        "default_width": 64,
        "default_height": 64,
        "max_side": 512,
        "default_steps": 2,
        "max_sequence_length": 64,
        "max_batch": 4,
        # Generous so that jobs submitted in one burst always meet in one call, even on a loaded machine.
        "batch_wait_ms": 200.0,
        "warmup": False,
        # These tests are about batching: no pixel check on any route.
        "output_safety": "off",
        **overrides,
    }
    return ImageSettings(**values)


def params(prompt: str, seed: int, width: int = 64, height: int = 64) -> GenerationParams:
    return GenerationParams(prompt, None, seed, width, height, 2, None)


def with_engine(settings: ImageSettings, scenario: Callable[[ImageEngine], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        engine = ImageEngine(settings, ServiceMetrics("image_test"))
        await engine.start()
        assert engine.state == "ok", engine.error
        try:
            return await scenario(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


def sample(engine: ImageEngine, name: str, labels: dict[str, str] | None = None) -> float:
    return engine.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_runner_labels_are_unique_per_pipeline() -> None:
    assert runner_labels(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert runner_labels(["cpu", "cpu"]) == ["cpu#0", "cpu#1"]
    assert runner_labels(["cpu"]) == ["cpu"]


def test_same_size_jobs_are_batched_and_keep_their_seed(tiny_models: dict[str, Path]) -> None:
    seeds = [3, 14, 15, 92]

    async def scenario(engine: ImageEngine) -> tuple[list[Any], list[Any], float, float]:
        together = await asyncio.gather(*(engine.generate(params("a red fox", s), "chat1to1") for s in seeds))
        count, total = (
            sample(engine, "imgpod_image_batch_size_count"),
            sample(engine, "imgpod_image_batch_size_sum"),
        )
        alone = [await engine.generate(params("a red fox", s), "chat1to1") for s in seeds]
        return together, alone, count, total

    together, alone, count, total = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert [g.result.batch_size for g in together] == [4, 4, 4, 4]
    # One pipeline call of four images, seen by the batch-size histogram.
    assert (count, total) == (1.0, 4.0)
    assert all(g.result.batch_size == 1 for g in alone)
    for t, a in zip(together, alone, strict=True):
        assert t.job.seed == a.job.seed
        # Batched and single calls may differ by float rounding only, never by a neighbour's image.
        assert np.abs(pixels(t.result.image) - pixels(a.result.image)).mean() < 2.0
    assert len({t.result.image.tobytes() for t in together}) == len(seeds)


def test_different_sizes_are_not_mixed(tiny_models: dict[str, Path]) -> None:
    sizes = [(64, 64), (96, 64), (64, 64), (96, 64)]

    async def scenario(engine: ImageEngine) -> tuple[list[Any], float, float]:
        out = await asyncio.gather(
            *(engine.generate(params("a boat", i, w, h), "chat1to1") for i, (w, h) in enumerate(sizes))
        )
        return (
            out,
            sample(engine, "imgpod_image_batch_size_count"),
            sample(engine, "imgpod_image_batch_size_sum"),
        )

    out, calls, images = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert [g.result.image.size for g in out] == sizes
    assert [g.result.batch_size for g in out] == [2, 2, 2, 2]
    assert (calls, images) == (2.0, 4.0)


class FaultyDevicePipeline(DevicePipeline):
    """The real pipeline, except that a call holding a marked prompt raises before running.

    Fault injection, not a model stub: the tiny random model has no input that makes it fail, but production
    pipelines do fail on single items (CUDA OOM on one long prompt, a NaN guard, a tokenizer edge case).
    What is under test is the batcher's split path, which needs one item to fail for real; every other call,
    including the retried good items, runs the real model.
    """

    def run(self, jobs: list[ImageJob], *hooks: Any) -> tuple[list[list[Image.Image]], list[int]]:
        if any(FAULT_MARK in job.prompt for job in jobs):
            raise RuntimeError("injected fault")
        return super().run(jobs, *hooks)


def test_one_bad_item_does_not_fail_the_batch(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "DevicePipeline", FaultyDevicePipeline)
    prompts = ["a cat", f"a dog {FAULT_MARK}", "a cow", "a hen"]

    async def scenario(engine: ImageEngine) -> tuple[list[Any], float]:
        out = await asyncio.gather(
            *(engine.generate(params(p, i), "chat1to1") for i, p in enumerate(prompts)),
            return_exceptions=True,
        )
        return out, sample(engine, "imgpod_image_failures_total")

    out, failures = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert isinstance(out[1], InferenceFailed)
    # The public detail names no exception; the log has it.
    assert out[1].detail == "image generation failed"
    for i in (0, 2, 3):
        assert out[i].result.image.size == (64, 64)
        assert out[i].result.batch_size == 1  # served alone after the batch of four failed
    assert failures == 1.0


def test_two_pipelines_both_serve(tiny_models: dict[str, Path]) -> None:
    settings = settings_for(tiny_models["zimage"], devices="cpu,cpu", max_batch=2, batch_wait_ms=20.0)

    async def scenario(engine: ImageEngine) -> tuple[dict[str, Any], list[Any], dict[str, float]]:
        health = json.loads((await healthz(engine)).body)
        out = await asyncio.gather(*(engine.generate(params("a tree", i), "chat1to1") for i in range(8)))
        counts = {
            label: sample(engine, "imgpod_model_inference_seconds_count", {"device": label})
            for label in ("cpu#0", "cpu#1")
        }
        return health, out, counts

    health, out, counts = with_engine(settings, scenario)
    assert health["status"] == "ok"
    assert health["concurrency"] == 2
    assert health["device"] == "cpu,cpu"
    assert all(g.result.image.size == (64, 64) for g in out)
    assert counts["cpu#0"] >= 1 and counts["cpu#1"] >= 1, counts
    assert sum(counts.values()) >= 4  # eight jobs in calls of at most two


def test_caption_limit_follows_the_rope_axis() -> None:
    assert caption_token_limit([1024, 512, 512]) == 992  # production config: the 512 default fits
    assert caption_token_limit([256, 64, 64]) == 224


def test_longest_prompt_fits_a_short_rope_axis(tiny_models: dict[str, Path]) -> None:
    """A 2000-character prompt at the default 512-token limit used to raise IndexError in the tiny model."""
    settings = settings_for(tiny_models["zimage"], max_sequence_length=512)

    async def scenario(engine: ImageEngine) -> Any:
        return await engine.generate(params("0" * 2000, 1, 16, 16), "chat1to1")

    out = with_engine(settings, scenario)
    assert out.result.image.size == (16, 16)
    assert out.prompt_truncated is True


def test_default_batch_table_follows_the_measured_gains() -> None:
    from services.image_worker.batch_policy import BatchPolicy

    table = ImageSettings().max_batch_by_pixels
    policy = BatchPolicy(4, table)
    assert [policy.limit_for(s, s) for s in (256, 512, 768, 1024, 2048)] == [4, 4, 2, 1, 1]
    assert policy.limit_for(768, 1344) == 1  # 1.03 Mpx: over the 768x768 row
    assert BatchPolicy(2, table).limit_for(512, 512) == 2, "max_batch stays the bound over every size"
    assert BatchPolicy(3, {}).limit_for(1024, 1024) == 3, "no table: max_batch for every size"


def test_512px_requests_batch_up_to_four_and_1024px_ones_alone(tiny_models: dict[str, Path]) -> None:
    """The default table on the real batcher: five 512x512 jobs make calls of 4 + 1, two 1024x1024 ones
    two calls of 1, all submitted at once within the batch window."""
    settings = settings_for(tiny_models["zimage"], max_side=1024, default_steps=1)

    def one_step(seed: int, side: int) -> GenerationParams:
        return GenerationParams("a red fox", None, seed, side, side, 1, None)

    async def scenario(engine: ImageEngine) -> tuple[list[int], list[int], float]:
        small = await asyncio.gather(*(engine.generate(one_step(s, 512), "chat1to1") for s in range(5)))
        large = await asyncio.gather(*(engine.generate(one_step(s, 1024), "chat1to1") for s in range(2)))
        calls = sample(engine, "imgpod_image_batch_size_count")
        return [g.result.batch_size for g in small], [g.result.batch_size for g in large], calls

    small, large, calls = with_engine(settings, scenario)
    assert sorted(small) == [1, 4, 4, 4, 4]
    assert large == [1, 1]
    assert calls == 4.0
