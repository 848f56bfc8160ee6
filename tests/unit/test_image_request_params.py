"""Images per request, guidance and the worker's own bounds, in-process on the tiny Z-Image checkpoint.

Every image comes from the real ``ZImagePipeline`` through ``DevicePipeline`` and the batcher; the pipeline
call count is read from the batcher's own batch-size histogram.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.image_worker.engine import GenerationParams, ImageEngine
from shared.errors import ValidationFailed
from shared.image_params import image_seeds
from shared.metrics import ServiceMetrics
from tests.unit.test_image_batcher import pixels, sample, settings_for, with_engine


def params(
    prompt: str, seed: int, n: int = 1, guidance: float | None = None, negative: str | None = None
) -> GenerationParams:
    return GenerationParams(prompt, negative, seed, 64, 64, 2, guidance, n)


def calls_and_images(engine: ImageEngine) -> tuple[float, float]:
    """Pipeline calls so far, and the images they made."""
    return (
        sample(engine, "imgpod_image_batch_size_count"),
        sample(engine, "imgpod_image_batch_size_sum"),
    )


def test_seeds_follow_on_and_wrap() -> None:
    assert image_seeds(7, 3) == [7, 8, 9]
    assert image_seeds(2**32 - 2, 3) == [2**32 - 2, 2**32 - 1, 0]


def test_n_images_come_from_one_pipeline_call_each_its_own_seed(tiny_models: dict[str, Path]) -> None:
    async def scenario(engine: ImageEngine) -> tuple[Any, tuple[float, float], list[Any]]:
        three = await engine.generate(params("a red fox", 40, n=3), "chat1to1")
        counted = calls_and_images(engine)
        alone = [await engine.generate(params("a red fox", s), "chat1to1") for s in (40, 41, 42)]
        return three, counted, alone

    three, (calls, images), alone = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert (calls, images) == (1.0, 3.0)
    assert three.job.seeds == [40, 41, 42]
    assert three.result.batch_size == 3
    assert len({image.tobytes() for image in three.result.images}) == 3
    # Image i is the image of seed s+i made alone (batching may change float rounding, nothing more).
    for image, single in zip(three.result.images, alone, strict=True):
        assert np.abs(pixels(image) - pixels(single.result.image)).mean() < 2.0


def test_images_count_toward_the_max_batch(tiny_models: dict[str, Path]) -> None:
    """max_batch 4: jobs of 3 and 2 images cannot share a call; jobs of 2 and 2 do."""

    def run(counts: tuple[int, ...]) -> Any:
        async def scenario(engine: ImageEngine) -> tuple[list[Any], tuple[float, float]]:
            out = await asyncio.gather(
                *(engine.generate(params("a boat", 10 * i, n=c), "chat1to1") for i, c in enumerate(counts))
            )
            return out, calls_and_images(engine)

        return with_engine(settings_for(tiny_models["zimage"]), scenario)

    out, counted = run((3, 2))
    assert counted == (2.0, 5.0)
    assert sorted(g.result.batch_size for g in out) == [2, 3]
    out, counted = run((2, 2))
    assert counted == (1.0, 4.0)
    assert [g.result.batch_size for g in out] == [4, 4]
    assert [len(g.result.images) for g in out] == [2, 2]


def test_guided_images_count_twice(tiny_models: dict[str, Path]) -> None:
    """With guidance the transformer runs every image twice per step: two guided pairs fill two calls."""

    async def scenario(engine: ImageEngine) -> tuple[list[Any], tuple[float, float]]:
        out = await asyncio.gather(
            *(engine.generate(params("a boat", i, n=2, guidance=1.5), "chat1to1") for i in (1, 5))
        )
        return out, calls_and_images(engine)

    out, counted = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert counted == (2.0, 4.0)
    assert all(g.job.guidance_scale == 1.5 for g in out)


def test_guidance_reaches_the_pipeline_and_the_negative_prompt_only_with_it(
    tiny_models: dict[str, Path],
) -> None:
    async def scenario(engine: ImageEngine) -> list[Any]:
        return [
            await engine.generate(params("a boat", 3, guidance=g, negative=neg), "chat1to1")
            for g, neg in ((None, "blurry"), (2.0, "blurry"), (2.0, None))
        ]

    unguided, guided, guided_plain = with_engine(settings_for(tiny_models["zimage"]), scenario)
    # Guidance 0 (the default): the pipeline never encodes a negative prompt, so the job carries none.
    assert (unguided.job.guidance_scale, unguided.job.negative_prompt) == (0.0, None)
    assert (guided.job.guidance_scale, guided.job.negative_prompt) == (2.0, "blurry")
    # Same seed, three different pipeline inputs: three different images.
    images = {g.result.image.tobytes() for g in (unguided, guided, guided_plain)}
    assert len(images) == 3


@pytest.mark.parametrize(
    ("overrides", "asked", "param"),
    [
        ({"max_batch": 2}, GenerationParams("a boat", None, 1, 64, 64, 2, None, 3), "n"),
        ({"max_guidance": 0.0}, GenerationParams("a boat", None, 1, 64, 64, 2, 1.0), "guidance_scale"),
        ({"max_steps": 4}, GenerationParams("a boat", None, 1, 64, 64, 5, None), "steps"),
    ],
)
def test_worker_refuses_past_its_own_bounds(
    tiny_models: dict[str, Path], overrides: dict[str, Any], asked: GenerationParams, param: str
) -> None:
    # make_job is the check every route goes through; no model is needed to reach it.
    engine = ImageEngine(settings_for(tiny_models["zimage"], **overrides), ServiceMetrics("image_test"))
    with pytest.raises(ValidationFailed) as caught:
        engine.make_job(asked)
    assert caught.value.param == param
    assert param in caught.value.detail


def test_max_n_never_exceeds_a_batch(tiny_models: dict[str, Path]) -> None:
    assert settings_for(tiny_models["zimage"], max_batch=2).max_n == 2
    assert settings_for(tiny_models["zimage"], max_batch=16).max_n == 4
