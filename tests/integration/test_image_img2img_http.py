"""Image-to-image over HTTP: the chat1to1 worker on the tiny Z-Image checkpoint, production loading code.

A request with ``init_image`` is answered from it; every bad start image or strength is a 4xx with a short
public detail, and the worker serves the next request as before.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from devtools.service_process import ServiceProcess
from shared.images import decode_base64_image as decode
from shared.progress_stream import MEDIA_TYPE, Final, Progress, parse_line
from tests.integration.test_image_workers import AUTH, image_env

pytestmark = pytest.mark.integration

ROUTE = "/v1/chat/1to1/generate"
PROMPT = "the same woman, smiling, in a cafe"


def noise_image(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pixels(image_base64: str) -> np.ndarray:
    return np.asarray(decode(image_base64), dtype=np.float64)


@pytest.fixture(scope="module")
def worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    env = image_env(
        tiny_models["zimage"],
        IMAGE_IMG2IMG_STRENGTH="0.5",
        IMAGE_IMG2IMG_MIN_STRENGTH="0.2",
        IMAGE_IMG2IMG_MAX_STRENGTH="0.9",
        # Small limits, so "too large" is cheap to send: 128x128 pixels, 32 KiB of image bytes.
        IMAGE_INIT_IMAGE_MAX_PIXELS=str(128 * 128),
        IMAGE_INIT_IMAGE_MAX_BYTES=str(32 * 1024),
        IMAGE_DEFAULT_STEPS="4",
    )
    with ServiceProcess("services.chat1to1_worker.main", env=env) as proc:
        yield proc


def post(worker: ServiceProcess, **body: Any) -> httpx.Response:
    return httpx.post(worker.url + ROUTE, json={"prompt": PROMPT, **body}, headers=AUTH, timeout=120)


def metric(worker: ServiceProcess, name: str) -> float:
    text = httpx.get(worker.url + "/metrics", headers=AUTH, timeout=10).text
    values = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ")]
    assert len(values) == 1, f"{name} not in /metrics"
    return values[0]


def test_healthz_limits_carry_the_strength_bounds(worker: ServiceProcess) -> None:
    limits = httpx.get(worker.url + "/healthz", timeout=10).json()["limits"]
    assert limits["min_strength"] == 0.2
    assert limits["max_strength"] == 0.9
    assert limits["max_steps"] > 0  # next to the existing limits, which stay


def test_init_image_is_answered_from_the_start_image(worker: ServiceProcess) -> None:
    before = metric(worker, "imgpod_image_img2img_total")
    a, b = b64(noise_image(1)), b64(Image.new("RGB", (80, 40), (240, 30, 30)), "JPEG")
    first = post(worker, init_image=a, strength=0.2, seed=5, width=96, height=64)
    assert first.status_code == 200, first.text
    body = first.json()
    assert decode(body["image_base64"]).size == (96, 64)
    assert body["seed"] == 5 and body["steps"] == 4
    again = post(worker, init_image=a, strength=0.2, seed=5, width=96, height=64).json()
    assert again["image_base64"] == body["image_base64"]
    other = post(worker, init_image=b, strength=0.2, seed=5, width=96, height=64).json()
    # At low strength the start image decides much of the result.
    assert np.abs(pixels(other["image_base64"]) - pixels(body["image_base64"])).mean() > 2.0
    plain = post(worker, seed=5, width=96, height=64).json()
    assert plain["image_base64"] != body["image_base64"]
    assert metric(worker, "imgpod_image_img2img_total") == before + 3


def test_streamed_img2img_reports_the_steps_it_runs(worker: ServiceProcess) -> None:
    progress: list[Progress] = []
    final: Final | None = None
    with httpx.stream(
        "POST",
        worker.url + ROUTE,
        json={"prompt": PROMPT, "init_image": b64(noise_image(2)), "steps": 8, "partial_images": 1},
        headers={**AUTH, "Accept": MEDIA_TYPE},
        timeout=120,
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            item = parse_line(line)
            if isinstance(item, Progress):
                progress.append(item)
            else:
                final = item
    # The role's default strength 0.5 over 8 steps: the img2img pipeline runs the last 4.
    steps = [(p.step, p.total) for p in progress if p.partial_image is None]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [p.step for p in progress if p.partial_image is not None] == [2]
    assert final is not None and final.status == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"init_image": "this is not base64!"}, 422, "init_image: not valid base64"),
        ({"init_image": base64.b64encode(b"hello, a text file\n").decode()}, 422, "not a readable image"),
        ({"init_image": b64(Image.new("RGB", (256, 256)))}, 413, "pixels"),
        ({"init_image": b64(noise_image(3, 128))}, 413, "bytes"),
        ({"init_image": b64(noise_image(4)), "strength": 0.95}, 422, "strength"),
        ({"init_image": b64(noise_image(4)), "strength": 0.1}, 422, "strength"),
        ({"init_image": b64(noise_image(4)), "strength": 1.5}, 422, "strength"),
        ({"init_image": b64(noise_image(4)), "strength": 0}, 422, "strength"),
    ],
)
def test_bad_init_image_or_strength_is_a_clear_4xx_and_the_worker_goes_on(
    worker: ServiceProcess, body: dict[str, Any], status: int, words: str
) -> None:
    resp = post(worker, **body)
    assert resp.status_code == status, resp.text
    text = resp.text
    assert words in text
    assert resp.headers["X-Request-ID"]
    for leak in ("Traceback", "binascii", "PIL", "/tmp", "site-packages"):
        assert leak not in text
    detail = resp.json()["detail"]
    if isinstance(detail, str):
        assert len(detail) < 300
    # The worker serves the next request, image-to-image and plain.
    assert post(worker, init_image=b64(noise_image(5)), seed=1).status_code == 200
    assert post(worker, seed=1).status_code == 200
