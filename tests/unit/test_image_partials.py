"""Partial images inside the image worker: when they are taken, what they show, and that they change nothing
else. The engine runs the real pipeline on the tiny Z-Image checkpoint (``DevicePipeline.load``)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.output_safety import SafetyVerdict
from services.image_worker.pipeline import StepHook, clean_estimate, preview_steps
from shared.metrics import ServiceMetrics
from tests.unit.test_image_progress import settings_for


@pytest.mark.parametrize(
    ("steps", "partials", "expected"),
    [
        (8, 3, (2, 4, 6)),
        (8, 1, (4,)),
        (6, 2, (2, 4)),
        (9, 2, (3, 6)),
        (4, 3, (1, 2, 3)),
        # Too few steps for what was asked: fewer partial images, never the last step (it is the image).
        (2, 3, (1,)),
        (1, 3, ()),
        (8, 0, ()),
    ],
)
def test_preview_steps_spread_over_the_call(steps: int, partials: int, expected: tuple[int, ...]) -> None:
    assert preview_steps(steps, partials) == expected


def test_clean_estimate_recovers_the_clean_latents_of_an_euler_flow_step() -> None:
    torch.manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    scheduler = SimpleNamespace(sigmas=sigmas, config=SimpleNamespace(stochastic_sampling=False))

    def at(sigma: float) -> torch.Tensor:
        return (1 - sigma) * clean + sigma * noise

    # After step 1 (index 1: sigma 0.8 -> 0.5), from the latents before and after it.
    estimate = clean_estimate(scheduler, 1, at(0.5), at(0.8))
    assert torch.allclose(estimate, clean, atol=1e-5)
    # Nothing to go by: the latents themselves (a noisier preview, never a wrong shape).
    assert clean_estimate(scheduler, 1, at(0.5), None) is not None
    assert torch.equal(clean_estimate(scheduler, 1, at(0.5), None), at(0.5))
    assert torch.equal(clean_estimate(scheduler, 1, at(0.5), at(0.8)[:1]), at(0.5))
    stochastic = SimpleNamespace(sigmas=sigmas, config=SimpleNamespace(stochastic_sampling=True))
    assert torch.equal(clean_estimate(stochastic, 1, at(0.5), at(0.8)), at(0.5))


def test_hook_decodes_only_the_jobs_that_asked_at_their_steps() -> None:
    seen: list[tuple[int, int, int, float]] = []
    scheduler = SimpleNamespace(
        sigmas=torch.linspace(1, 0, 5), config=SimpleNamespace(stochastic_sampling=False)
    )

    def decode_first_value(job: int, step: int, total: int, image: object) -> None:
        seen.append((job, step, total, float(image)))  # type: ignore[arg-type]

    hook = StepHook([0, 0, 1], 4, guided=False, previews={0: (1, 3), 1: (2,)}, on_preview=decode_first_value)
    pipe = SimpleNamespace(scheduler=scheduler)
    import services.image_worker.pipeline as pipeline

    original = pipeline.decode_latents
    # The decode is the VAE's (tested with the engine below); here, which row of which step goes out.
    pipeline.decode_latents = lambda _pipe, rows: rows.flatten()[0]  # type: ignore[assignment]
    try:
        for i in range(4):
            latents = torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1) + 10 * i
            hook(pipe, i, None, {"latents": latents, "prompt_embeds": [None] * 3})
    finally:
        pipeline.decode_latents = original
    # Job 0's first row (row 0) after steps 1 and 3; job 1's row (row 2) after step 2.
    assert [(job, step, total) for job, step, total, _ in seen] == [(0, 1, 4), (1, 2, 4), (0, 3, 4)]
    # Step 1 has no latents before it: the latents themselves (row 0 holds 0 + 10 * 0).
    assert seen[0][3] == 0.0
    assert hook.previous is None, "nothing held once no later step wants a partial image"


def _png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def test_engine_sends_partial_images_in_order_on_the_loop_and_the_image_stays_the_same(
    tiny_models: dict[str, Path],
) -> None:
    async def main() -> dict[str, object]:
        engine = ImageEngine(settings_for(tiny_models["zimage"]), ServiceMetrics("image_test"))
        await engine.start()
        assert engine.state == "ok", engine.error
        try:
            partials: list[tuple[int, int, str]] = []
            threads: set[int] = set()

            def on_partial(step: int, total: int, b64: str) -> None:
                partials.append((step, total, b64))
                threads.add(threading.get_ident())

            with_partials = await engine.generate(
                GenerationParams("a red fox", None, 7, 64, 48, 6, None, n=2, partial_images=2),
                "chat1to1",
                on_partial=on_partial,
            )
            plain = await engine.generate(
                GenerationParams("a red fox", None, 7, 64, 48, 6, None, n=2), "chat1to1"
            )
            return {
                "partials": partials,
                "threads": threads,
                "loop": threading.get_ident(),
                "with": with_partials.result.images,
                "plain": plain.result.images,
                "sent": engine.metrics.registry.get_sample_value(
                    "imgpod_partial_images_total", {"outcome": "sent"}
                ),
            }
        finally:
            await engine.stop()

    out = asyncio.run(main())
    partials = out["partials"]
    assert [(step, total) for step, total, _ in partials] == [(2, 6), (4, 6)]  # type: ignore[union-attr]
    for _, _, b64 in partials:  # type: ignore[union-attr]
        assert _png(b64).size == (64, 48)
    assert out["threads"] == {out["loop"]}
    assert out["sent"] == 2
    # Decoding partial images reads the call's latents and changes none: the images are the plain call's.
    for a, b in zip(out["with"], out["plain"], strict=True):  # type: ignore[call-overload]
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_pixel_check_withholds_a_partial_image_that_fails_it(tiny_models: dict[str, Path]) -> None:
    class Refuses:
        def check(self, image: Image.Image) -> SafetyVerdict:
            return SafetyVerdict(safe=False, findings=("FEMALE_BREAST_EXPOSED",))

    async def main() -> tuple[list[int], float | None]:
        engine = ImageEngine(settings_for(tiny_models["zimage"]), ServiceMetrics("image_test"))
        await engine.start()
        assert engine.state == "ok", engine.error
        # The checker is stood in for here (the real one is tested in test_output_safety.py): what is under
        # test is that a partial image goes through the same check as the final one before it leaves.
        engine.safety = Refuses()  # type: ignore[assignment]
        try:
            seen: list[int] = []
            payload = engine.partial_payload(Image.new("RGB", (16, 16)), check_pixels=True)
            assert payload is None
            assert engine.partial_payload(Image.new("RGB", (16, 16)), check_pixels=False) is not None
            await engine.generate(
                GenerationParams("a red fox", None, 7, 64, 64, 4, None, partial_images=1),
                "chat1to1",
                on_partial=lambda s, t, b: seen.append(s),
            )
            with pytest.raises(Exception, match="safety check"):
                engine.settings = engine.settings.model_copy(update={"output_safety": "on"})
                await engine.generate(
                    GenerationParams("a red fox", None, 7, 64, 64, 4, None, partial_images=1),
                    "chat1to1",
                    on_partial=lambda s, t, b: seen.append(s),
                )
            withheld = engine.metrics.registry.get_sample_value(
                "imgpod_partial_images_total", {"outcome": "withheld"}
            )
            return seen, withheld
        finally:
            await engine.stop()

    seen, withheld = asyncio.run(main())
    # Unchecked route: its partial image went out; checked route: withheld, and the final images blocked.
    assert seen == [2]
    assert withheld == 1
