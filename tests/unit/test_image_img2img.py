"""Image-to-image on the image worker: the img2img pipeline over the loaded pipeline's own modules, its steps,
progress, partial images, cancel and batching, and the start image's limits. Real pipeline, tiny Z-Image
checkpoint, loaded through ``DevicePipeline.load`` (the production code).

The tiny checkpoint's weights are random, so its VAE does not reproduce a picture (an encode-decode round
trip of any image is far from it): "how close to the start image" is measured by how much the start image
decides the result, which the strength must govern whatever the weights are.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import services.image_worker.pipeline as pipeline_module
from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.pipeline import (
    DevicePipeline,
    GenerationCanceled,
    ImageJob,
    StepHook,
    fit_init_image,
    img2img_steps,
    preview_steps,
)
from services.image_worker.settings import ImageSettings
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.metrics import ServiceMetrics
from tests.unit.test_image_batcher import with_engine

PROMPT = "a red fox in a snowy forest"


def noise_image(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_base64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def job(seed: int, init: Image.Image | None, strength: float | None, steps: int = 8, **kw: Any) -> ImageJob:
    return ImageJob(PROMPT, None, seed, 64, 64, steps, 0.0, strength=strength, init_image=init, **kw)


@pytest.fixture(scope="module")
def pipe(tiny_models: dict[str, Path]) -> DevicePipeline:
    device_pipe = DevicePipeline(str(tiny_models["zimage"]), "cpu", "auto", 64)
    device_pipe.load()
    return device_pipe


def settings_for(model_dir: Path, **overrides: Any) -> ImageSettings:
    values: dict[str, Any] = {
        "model_id": str(model_dir),
        "devices": "cpu",
        "default_width": 64,
        "default_height": 64,
        "max_side": 512,
        "max_sequence_length": 64,
        "warmup": False,
        "output_safety": "off",
        # Generous, so jobs submitted in one burst always meet in one call, even on a loaded machine.
        "batch_wait_ms": 300.0,
        **overrides,
    }
    return ImageSettings(**values)


# --- one pipeline's weights ------------------------------------------------------------------------------


def test_img2img_pipeline_holds_no_weight_of_its_own(pipe: DevicePipeline) -> None:
    t2i, i2i = pipe.pipe, pipe.img2img
    for name in ("transformer", "vae", "text_encoder"):
        assert getattr(i2i, name) is getattr(t2i, name)
        ours = dict(getattr(i2i, name).named_parameters())
        theirs = dict(getattr(t2i, name).named_parameters())
        assert ours.keys() == theirs.keys() and ours
        for key, param in ours.items():
            assert param is theirs[key]
            assert param.data_ptr() == theirs[key].data_ptr()
    assert i2i.scheduler is t2i.scheduler and i2i.tokenizer is t2i.tokenizer

    def storage_bytes(*pipelines: Any) -> int:
        seen: dict[int, int] = {}
        for p in pipelines:
            for name in ("transformer", "vae", "text_encoder"):
                for param in getattr(p, name).parameters():
                    seen[param.data_ptr()] = param.numel() * param.element_size()
        return sum(seen.values())

    # Every parameter byte of both pipelines together is a byte of the text-to-image pipeline alone.
    assert storage_bytes(t2i, i2i) == storage_bytes(t2i) > 0


# --- steps, strength, determinism ------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "strength"), [(8, 0.6), (8, 0.1), (4, 1.0), (6, 0.5), (8, 0.99)])
def test_progress_counts_the_steps_the_img2img_call_runs(
    pipe: DevicePipeline, steps: int, strength: float
) -> None:
    seen: list[tuple[int, int]] = []
    (images,), _ = pipe.run(
        [job(1, noise_image(0), strength, steps)], on_step=lambda s, t: seen.append((s, t))
    )
    ran = pipe.img2img.num_timesteps  # what the installed pipeline's own loop ran
    assert img2img_steps(steps, strength) == ran == len(seen)
    assert seen == [(i, ran) for i in range(1, ran + 1)]
    assert len(images) == 1 and images[0].size == (64, 64)


def test_strength_decides_how_much_the_init_image_counts(pipe: DevicePipeline) -> None:
    a, b = noise_image(1), Image.new("RGB", (64, 64), (250, 20, 20))

    def spread(strength: float) -> float:
        (one,), _ = pipe.run([job(3, a, strength)])
        (two,), _ = pipe.run([job(3, b, strength)])
        return mean_diff(one[0], two[0])

    low, mid, full = spread(0.1), spread(0.6), spread(1.0)
    # Low strength: the result is mostly its start image; two start images give clearly different results.
    assert low > 4 * mid > 0
    # Strength 1.0 starts from pure noise (the same noise for the same seed): the start image is gone.
    assert full == 0.0


def test_low_strength_latents_stay_near_the_init_image(pipe: DevicePipeline) -> None:
    init = noise_image(2)

    def end_latents(strength: float) -> torch.Tensor:
        with torch.inference_mode():
            out = pipe.img2img(
                prompt=PROMPT,
                image=init,
                strength=strength,
                num_inference_steps=8,
                guidance_scale=0.0,
                generator=torch.Generator().manual_seed(3),
                output_type="latent",
            )
        return out.images

    with torch.inference_mode():
        vae = pipe.pipe.vae
        encoded = vae.encode(pipe.img2img.image_processor.preprocess(init)).latent_dist.mode()
        start = (encoded - vae.config.shift_factor) * vae.config.scaling_factor
    distances = [float((end_latents(s) - start).abs().mean()) for s in (0.1, 0.6, 1.0)]
    assert distances[0] < distances[1] < distances[2]
    assert distances[0] < 0.5 * distances[2]


def test_same_seed_and_init_image_give_the_same_image(pipe: DevicePipeline) -> None:
    init = noise_image(4)
    (first,), _ = pipe.run([job(11, init, 0.6)])
    (again,), _ = pipe.run([job(11, init, 0.6)])
    (other,), _ = pipe.run([job(12, init, 0.6)])
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))


def test_text_to_image_is_unchanged_by_the_img2img_pipeline(pipe: DevicePipeline) -> None:
    # The same call as before the img2img pipeline existed, on a fresh copy of the text-to-image pipeline.
    from diffusers import ZImagePipeline

    plain = ZImagePipeline(**pipe.pipe.components)
    plain.set_progress_bar_config(disable=True)
    (ours,), _ = pipe.run([job(5, None, None, steps=4)])
    with torch.inference_mode():
        theirs = plain(
            prompt=[PROMPT],
            height=64,
            width=64,
            num_inference_steps=4,
            guidance_scale=0.0,
            generator=[torch.Generator().manual_seed(5)],
            max_sequence_length=64,
        ).images[0]
    assert np.array_equal(pixels(ours[0]), pixels(theirs))


# --- cancel, partial images ------------------------------------------------------------------------------


def test_cancel_stops_an_img2img_call(pipe: DevicePipeline) -> None:
    seen: list[int] = []
    gone: list[int] = []

    def on_step(step: int, total: int) -> None:
        seen.append(step)
        gone.append(0)

    before = pipe.image_steps
    with pytest.raises(GenerationCanceled):
        pipe.run([job(1, noise_image(0), 1.0)], on_step=on_step, canceled=lambda: gone)
    assert seen == [1]
    assert pipe.image_steps - before == 2


def test_a_canceled_job_leaves_the_img2img_call_and_the_other_keeps_its_image(pipe: DevicePipeline) -> None:
    a, b = noise_image(5), noise_image(6)
    (alone,), _ = pipe.run([job(7, a, 0.6)])
    gone: list[int] = []
    rows: list[int] = []

    def on_step(step: int, total: int) -> None:
        gone.append(1)  # job 1 goes away after the first step

    before = pipe.image_steps
    kept, dropped = pipe.run([job(7, a, 0.6), job(8, b, 0.6)], on_step=on_step, canceled=lambda: gone)[0]
    rows.append(pipe.image_steps - before)
    assert dropped == []
    assert mean_diff(kept[0], alone[0]) < 2.0
    # 5 steps: both rows in the first two (the cancel is seen at the end of the second), then one row.
    assert rows == [2 + 2 + 1 + 1 + 1]


def test_under_guidance_a_canceled_img2img_job_rides_along_and_gets_nothing(pipe: DevicePipeline) -> None:
    a, b = noise_image(5), noise_image(6)

    def guided(seed: int, init: Image.Image) -> ImageJob:
        return ImageJob(PROMPT, "blurry", seed, 64, 64, 4, 2.0, strength=0.5, init_image=init)

    (alone,), _ = pipe.run([guided(7, a)])
    before = pipe.image_steps
    kept, dropped = pipe.run([guided(7, a), guided(8, b)], canceled=lambda: [1])[0]
    assert dropped == []
    assert mean_diff(kept[0], alone[0]) < 2.0
    # The CFG loop splits at a batch size fixed at the start: both rows run every step (2 steps at 0.5).
    assert pipe.image_steps - before == 2 * 2


def test_partial_image_of_an_img2img_call_reads_its_own_part_of_the_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Image-to-image at begin_index 2 runs sigmas 0.7 -> 0.5 -> 0.3 -> 0.0 of this schedule: the clean
    # estimate after its second step must use 0.5 -> 0.3, not the schedule's first sigmas.
    torch.manual_seed(0)
    clean, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    scheduler = SimpleNamespace(
        sigmas=torch.tensor([1.0, 0.9, 0.7, 0.5, 0.3, 0.0]),
        begin_index=2,
        config=SimpleNamespace(stochastic_sampling=False),
    )

    def at(sigma: float) -> torch.Tensor:
        return (1 - sigma) * clean + sigma * noise

    seen: list[torch.Tensor] = []
    monkeypatch.setattr(pipeline_module, "decode_latents", lambda _pipe, rows: rows)
    hook = StepHook(
        [0], 3, guided=False, previews={0: (1, 2)}, on_preview=lambda job, s, t, rows: seen.append(rows)
    )
    pipe = SimpleNamespace(scheduler=scheduler)
    hook(pipe, 0, None, {"latents": at(0.5), "prompt_embeds": [torch.zeros(2, 8)]})
    hook(pipe, 1, None, {"latents": at(0.3), "prompt_embeds": [torch.zeros(2, 8)]})
    assert len(seen) == 2
    assert torch.allclose(seen[1], clean, atol=1e-5)


def test_partial_images_are_taken_over_the_steps_run(tiny_models: dict[str, Path]) -> None:
    init_b64 = png_base64(noise_image(8))

    async def scenario(engine: ImageEngine) -> dict[str, Any]:
        progress: list[tuple[int, int]] = []
        partials: list[tuple[int, int]] = []
        generated = await engine.generate(
            GenerationParams(
                PROMPT, None, 9, 64, 64, 8, 0.0, partial_images=2, init_image=init_b64, strength=0.5
            ),
            "chat1to1",
            on_progress=lambda s, t: progress.append((s, t)),
            on_partial=lambda s, t, b64: partials.append((s, t)),
        )
        count = engine.metrics.registry.get_sample_value("imgpod_image_img2img_total") or 0.0
        return {"progress": progress, "partials": partials, "job": generated.job, "count": count}

    out = with_engine(settings_for(tiny_models["zimage"]), scenario)
    ran = img2img_steps(8, 0.5)
    assert ran == 4
    assert out["progress"] == [(i, ran) for i in range(1, ran + 1)]
    assert out["job"].previews == preview_steps(ran, 2) == (1, 3)
    assert out["partials"] == [(1, ran), (3, ran)]
    assert out["count"] == 1.0


# --- batching --------------------------------------------------------------------------------------------


def test_img2img_jobs_batch_together_each_with_its_own_init_image(tiny_models: dict[str, Path]) -> None:
    inits = [png_base64(noise_image(20)), png_base64(noise_image(21), "JPEG")]

    def params(i: int) -> GenerationParams:
        return GenerationParams(PROMPT, None, 30 + i, 64, 64, 8, 0.0, n=2, init_image=inits[i], strength=0.6)

    async def scenario(engine: ImageEngine) -> tuple[list[Any], list[Any]]:
        together = await asyncio.gather(*(engine.generate(params(i), "chat1to1") for i in range(2)))
        alone = [await engine.generate(params(i), "chat1to1") for i in range(2)]
        return together, alone

    together, alone = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert [g.result.batch_size for g in together] == [4, 4]
    assert [g.result.batch_size for g in alone] == [2, 2]
    for t, a in zip(together, alone, strict=True):
        assert t.job.seeds == a.job.seeds and len(t.result.images) == 2
        for ti, ai in zip(t.result.images, a.result.images, strict=True):
            assert mean_diff(ti, ai) < 2.0
    # The two jobs' images are not each other's: their start images differ.
    assert mean_diff(together[0].result.images[0], together[1].result.images[0]) > 2.0


def test_img2img_never_batches_with_text_to_image_or_another_strength(tiny_models: dict[str, Path]) -> None:
    init = png_base64(noise_image(22))
    overlapping = [
        GenerationParams(PROMPT, None, 1, 64, 64, 4, 0.0),
        GenerationParams(PROMPT, None, 2, 64, 64, 4, 0.0, init_image=init, strength=0.5),
        GenerationParams(PROMPT, None, 3, 64, 64, 4, 0.0),
        GenerationParams(PROMPT, None, 4, 64, 64, 4, 0.0, init_image=init, strength=1.0),
    ]

    async def scenario(engine: ImageEngine) -> tuple[list[Any], float]:
        out = await asyncio.gather(*(engine.generate(p, "chat1to1") for p in overlapping))
        calls = engine.metrics.registry.get_sample_value("imgpod_image_batch_size_count") or 0.0
        return out, calls

    out, calls = with_engine(settings_for(tiny_models["zimage"]), scenario)
    # The two text-to-image jobs share a call; each img2img strength has its own.
    assert [g.result.batch_size for g in out] == [2, 1, 2, 1]
    assert calls == 3.0
    assert [g.job.strength for g in out] == [None, 0.5, None, 1.0]


# --- requests: strength and the start image ---------------------------------------------------------------


def test_strength_defaults_and_bounds(tmp_path: Path) -> None:
    engine = ImageEngine(
        settings_for(tmp_path, img2img_strength=0.4, img2img_min_strength=0.2, img2img_max_strength=0.8),
        ServiceMetrics("image_test"),
    )
    init = png_base64(noise_image(0))
    assert engine.make_job(GenerationParams(PROMPT, None, 1, 64, 64, 8, 0.0, init_image=init)).strength == 0.4
    assert (
        engine.make_job(
            GenerationParams(PROMPT, None, 1, 64, 64, 8, 0.0, init_image=init, strength=0.7)
        ).strength
        == 0.7
    )
    # Without a start image: text-to-image, whatever the strength.
    plain = engine.make_job(GenerationParams(PROMPT, None, 1, 64, 64, 8, 0.0, strength=0.5))
    assert plain.strength is None and plain.steps_run == 8
    for strength in (0.1, 0.9):
        with pytest.raises(ValidationFailed, match="strength") as caught:
            engine.make_job(
                GenerationParams(PROMPT, None, 1, 64, 64, 8, 0.0, init_image=init, strength=strength)
            )
        assert caught.value.param == "strength"
    with pytest.raises(ValueError, match="img2img_strength"):
        settings_for(tmp_path, img2img_strength=0.9, img2img_max_strength=0.8)


def test_init_image_is_fitted_by_cover_and_center_crop() -> None:
    # A tall image, red band in the middle third: the landscape crop keeps the middle, never squashes it.
    tall = np.zeros((300, 100, 3), dtype=np.uint8)
    tall[100:200] = (255, 0, 0)
    fitted = fit_init_image(Image.fromarray(tall), 96, 32)
    assert fitted.size == (96, 32)
    assert pixels(fitted)[:, :, 0].mean() > 240
    assert fit_init_image(Image.fromarray(tall), 100, 300).size == (100, 300)


def test_init_image_refusals_are_clear_and_typed(tmp_path: Path) -> None:
    engine = ImageEngine(
        settings_for(tmp_path, init_image_max_pixels=128 * 128, init_image_max_bytes=64 * 1024),
        ServiceMetrics("image_test"),
    )
    cases: list[tuple[str, type[Exception], str]] = [
        ("not base64 at all!", ValidationFailed, "not valid base64"),
        (base64.b64encode(b"just some text, no image").decode(), ValidationFailed, "not a readable image"),
        (png_base64(noise_image(0))[:200], ValidationFailed, "init_image"),
        (png_base64(Image.new("RGB", (256, 256))), PayloadTooLarge, "pixels"),
        (png_base64(noise_image(1, 200, 120)), PayloadTooLarge, "bytes"),
        (png_base64(Image.new("RGB", (64, 64)), "GIF"), ValidationFailed, "GIF"),
    ]
    for data, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            engine.init_image_for(data, 64, 64)
        assert caught.value.param == "init_image"  # type: ignore[attr-defined]
        assert str(tmp_path) not in caught.value.detail  # type: ignore[attr-defined]
    good = engine.init_image_for("data:image/png;base64," + png_base64(noise_image(2, 80, 40)), 64, 48)
    assert good.size == (64, 48) and good.mode == "RGB"


def test_a_refused_init_image_gives_the_bound_back_and_decodes_off_the_loop(
    tiny_models: dict[str, Path],
) -> None:
    async def scenario(engine: ImageEngine) -> tuple[int, set[int], int]:
        threads: set[int] = set()
        real = engine.init_image_for

        def watched(*args: Any) -> Image.Image:
            threads.add(threading.get_ident())
            return real(*args)

        engine.init_image_for = watched  # type: ignore[method-assign]
        with pytest.raises(ValidationFailed):
            await engine.admit_decoded(GenerationParams(PROMPT, None, 1, 64, 64, 2, 0.0, init_image="%%%"))
        held_after_refusal = engine.held
        ok = await engine.admit_decoded(
            GenerationParams(PROMPT, None, 1, 64, 64, 2, 0.0, init_image=png_base64(noise_image(3)))
        )
        engine.release(ok)
        return held_after_refusal, threads, threading.get_ident()

    held, threads, loop = with_engine(settings_for(tiny_models["zimage"]), scenario)
    assert held == 0
    assert threads and loop not in threads
