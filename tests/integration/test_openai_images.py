"""The OpenAI Images API on the interface, driven by the official ``openai`` SDK (sync and async).

One interface in front of one real tiny image worker (the chat1to1 role also serves the role-free
/v1/generate, so it backs both img-pod-general and img-pod-private). No LLM: the guard is off, and the
LLM-expanded models (img-pod-shorts, img-pod-scenes) are covered by tests/integration/test_e2e_flows.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from devtools.service_process import ServiceProcess
from services.interface.app import create_app
from services.interface.settings import InterfaceSettings
from tests.helpers.waiting import WorkerGate, wait_until
from tests.integration.test_image_workers import TOKEN, image_env
from tests.integration.test_interface_pools import gate_of, queue_view

pytestmark = pytest.mark.integration

API_KEY = "client-key-openai"
HARD_BLOCKED = "sexy schoolgirl undressing"


@pytest.fixture(scope="module")
def worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    env = image_env(tiny_models["zimage"], IMAGE_MAX_SIDE="128", IMAGE_MAX_GUIDANCE="4", IMAGE_TEST_HOOKS="1")
    with ServiceProcess("services.chat1to1_worker.main", env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(worker: ServiceProcess) -> Iterator[ServiceProcess]:
    env = {
        "INTERFACE_INTERNAL_TOKEN": TOKEN,
        "INTERFACE_API_KEYS": f"other-key,{API_KEY}",
        "INTERFACE_TEXT2IMG_WORKER_URLS": worker.url,
        "INTERFACE_CHAT1TO1_WORKER_URLS": worker.url,
        # No LLM behind this interface: no guard to ask (its behaviour is tests/integration/test_guard.py).
        "INTERFACE_GUARD": "off",
        # One call at a time and two waiting (n=2 fits): the queue is full after three requests.
        "INTERFACE_PER_WORKER_CONCURRENCY": "1",
        "INTERFACE_QUEUE_OVERRIDES": '{"text2img": {"capacity": 2, "sla_ms": 600000}}',
        "INTERFACE_RETRY_AFTER_CAP_MS": "1000",
        # One key fills the queue on purpose here; fair share between keys is test_rate_limits.py's.
        "INTERFACE_QUEUE_MAX_SHARE_PER_KEY": "1.0",
    }
    with ServiceProcess("services.interface.main", env=env) as proc:
        yield proc


def client(api: ServiceProcess, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key=API_KEY, timeout=120, **kwargs)  # type: ignore[arg-type]


def png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_generate_b64_json(api: ServiceProcess) -> None:
    result = client(api).images.generate(
        model="img-pod-general", prompt="a lighthouse at dusk", size="64x64", response_format="b64_json"
    )
    assert result.created > 0
    assert result.data is not None and len(result.data) == 1
    image = result.data[0]
    assert image.b64_json is not None and png_size(image.b64_json) == (64, 64)
    assert image.revised_prompt is None and image.url is None
    assert result.usage is not None and result.usage.input_tokens > 0


def test_model_defaults_to_general_and_size_auto_to_the_worker_default(api: ServiceProcess) -> None:
    result = client(api).images.generate(prompt="a quiet harbour", size="auto")
    assert result.data is not None and png_size(result.data[0].b64_json or "") == (64, 64)


def test_generate_url_is_signed_and_needs_no_key(api: ServiceProcess) -> None:
    result = client(api).images.generate(
        model="img-pod-private", prompt="a candle-lit dinner table", size="96x64", response_format="url"
    )
    assert result.data is not None
    url = result.data[0].url
    assert url is not None and url.startswith(api.url + "/v1/images/files/")
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (96, 64)
    tampered = httpx.get(url.replace("sig=", "sig=0"))
    assert tampered.status_code == 404
    assert tampered.json()["error"]["code"] == "not_found"


def test_n_images_take_consecutive_seeds(api: ServiceProcess) -> None:
    async def generate() -> tuple[openai.types.ImagesResponse, openai.types.ImagesResponse]:
        async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=API_KEY, timeout=120) as aclient:
            pair = await aclient.images.generate(
                prompt="a red fox", n=2, size="64x64", extra_body={"seed": 7}
            )
            single = await aclient.images.generate(prompt="a red fox", size="64x64", extra_body={"seed": 8})
            return pair, single

    pair, single = asyncio.run(generate())
    assert pair.data is not None and single.data is not None
    images = [d.b64_json for d in pair.data]
    assert len(images) == 2 and images[0] != images[1]
    # The second of n=2 from seed 7 is the image of seed 8.
    assert images[1] == single.data[0].b64_json


def test_stream_with_partial_images(api: ServiceProcess) -> None:
    stream = client(api).images.generate(
        prompt="a windmill in a field",
        size="64x64",
        stream=True,
        partial_images=2,
        extra_body={"steps": 6, "seed": 11},
    )
    events = list(stream)
    # Partial images after steps 2 and 4 of 6, taken from the worker's denoising as it went, then the image.
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    for event in events:
        assert event.size == "64x64" and event.output_format == "png"
        assert png_size(event.b64_json) == (64, 64)
    # Each partial image is a step of the way, not the image itself sent early.
    assert len({e.b64_json for e in events}) == 3
    plain = client(api).images.generate(
        prompt="a windmill in a field", size="64x64", extra_body={"steps": 6, "seed": 11}
    )
    assert plain.data is not None and plain.data[0].b64_json == events[-1].b64_json

    async def astream() -> list[str]:
        async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=API_KEY, timeout=120) as aclient:
            events = await aclient.images.generate(prompt="a windmill", n=2, size="64x64", stream=True)
            return [e.type async for e in events]

    # No partial images asked for: the n images, one event each.
    assert asyncio.run(astream()) == ["image_generation.completed"] * 2


def test_steps_and_guidance_reach_the_native_route_unchanged(api: ServiceProcess) -> None:
    # The same request on the native route and through the OpenAI API: one path, so one image.
    knobs = {"seed": 5, "steps": 3, "guidance": 1.5}
    result = client(api).images.generate(
        model="img-pod-private", prompt="a paper lantern", size="64x48", extra_body=knobs
    )
    native = httpx.post(
        api.url + "/v1/chat/private/imagegen",
        json={
            "prompt": "a paper lantern",
            "width": 64,
            "height": 48,
            "seed": 5,
            "steps": 3,
            "guidance_scale": 1.5,
        },
        headers={"X-API-Key": API_KEY},
        timeout=120,
    )
    assert native.status_code == 200, native.text
    assert native.json()["steps"] == 3 and native.json()["guidance_scale"] == 1.5
    assert result.data is not None and result.data[0].b64_json == native.json()["image_base64"]


def test_policy_block_is_content_policy_violation(api: ServiceProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(api).images.generate(prompt=HARD_BLOCKED)
    assert caught.value.code == "content_policy_violation"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"size": "100x100"}, "size", "invalid_value"),
        # Valid as a size, but over the worker's advertised max side (128): the native route's check.
        ({"size": "256x256"}, "size", "invalid_value"),
        ({"model": "dall-e-3"}, "model", "invalid_value"),
        ({"n": 5}, "n", "invalid_value"),
        ({"output_format": "jpeg"}, "output_format", "invalid_value"),
        ({"background": "transparent"}, "background", "invalid_value"),
        # Over the schema's bound, then over this deployment's workers' limit (the native check, renamed).
        ({"extra_body": {"guidance": 25}}, "guidance", "invalid_value"),
        ({"extra_body": {"guidance": 5}}, "guidance", "invalid_value"),
        ({"extra_body": {"steps": 60}}, "steps", "invalid_value"),
        ({"extra_body": {"persona_id": "p1"}}, "persona_id", "invalid_value"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate", "unknown_parameter"),
    ],
)
def test_refused_fields_are_400_naming_the_param(
    api: ServiceProcess, kwargs: dict[str, object], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(api).images.generate(prompt="a small boat", **kwargs)  # type: ignore[arg-type]
    assert (caught.value.param, caught.value.code) == (param, code), caught.value.body


def test_ignored_fields_are_accepted(api: ServiceProcess) -> None:
    result = client(api).images.generate(
        prompt="a small boat",
        size="64x64",
        quality="high",
        style="natural",
        moderation="low",
        output_compression=80,
        user="user-1",
        background="opaque",
        output_format="png",
    )
    assert result.data is not None and result.data[0].b64_json


def test_wrong_key_is_authentication_error(api: ServiceProcess) -> None:
    wrong = openai.OpenAI(base_url=api.url + "/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.images.generate(prompt="a small boat")
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # The native routes keep their own shape.
    native = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a boat"}, headers={"X-API-Key": "nope"})
    assert native.status_code == 401 and native.json()["code"] == "unauthorized"


def test_models_lists_the_deployed_image_models(api: ServiceProcess) -> None:
    ids = [m.id for m in client(api).models.list()]
    # shorts and scenes need the LLM and their own workers, which this interface has not got.
    assert ids == ["img-pod-general", "img-pod-private"]


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def test_edits_start_from_the_uploaded_image(api: ServiceProcess) -> None:
    sdk = client(api)

    def edit(image: bytes, **extra: object) -> str:
        result = sdk.images.edit(
            image=("in.png", image, "image/png"),
            prompt="make it a watercolour",
            model="img-pod-private",
            size="64x64",
            extra_body={"seed": 3, "steps": 4, **extra},
        )
        assert result.data is not None and len(result.data) == 1
        b64 = result.data[0].b64_json
        assert b64 is not None and png_size(b64) == (64, 64)
        return b64

    red, blue = png_bytes((200, 30, 30)), png_bytes((30, 30, 200))
    first = edit(red, strength=0.5)
    assert edit(red, strength=0.5) == first, "same image, seed and strength: the same edit"
    # The image is where it starts: another image, or another strength, gives another edit.
    assert edit(blue, strength=0.5) != first
    assert edit(red, strength=0.9) != first
    # As a URL too, from the job's stored output.
    as_url = sdk.images.edit(
        image=("in.png", red, "image/png"), prompt="make it a watercolour", model="img-pod-private",
        size="64x64", response_format="url", extra_body={"seed": 3, "steps": 4, "strength": 0.5},
    )  # fmt: skip
    assert as_url.data is not None and as_url.data[0].url is not None
    fetched = httpx.get(as_url.data[0].url)
    assert fetched.status_code == 200 and base64.b64encode(fetched.content).decode() == first


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"mask": ("mask.png", b"", "image/png")}, "mask"),
        ({"model": "img-pod-scenes"}, "model"),
        ({"extra_body": {"strength": 0.01}}, "strength"),
        ({"extra_body": {"frobnicate": "1"}}, "frobnicate"),
        ({"image": ("in.txt", b"not an image", "text/plain")}, "image"),
    ],
)
def test_refused_edits_are_400_naming_the_param(
    api: ServiceProcess, kwargs: dict[str, Any], param: str
) -> None:
    args: dict[str, Any] = {
        "image": ("in.png", png_bytes((0, 128, 0)), "image/png"),
        "prompt": "make it blue",
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client(api).images.edit(**{**args, **kwargs})
    assert caught.value.param == param, caught.value.body


def test_persona_and_strength_are_refused_where_nothing_uses_them(api: ServiceProcess) -> None:
    for extra, param in (({"persona_id": "per_" + "0" * 24}, "persona_id"), ({"strength": 0.5}, "strength")):
        with pytest.raises(openai.BadRequestError) as caught:
            client(api).images.generate(prompt="a small boat", extra_body=extra)
        assert caught.value.param == param, caught.value.body


def rejected_full(api: ServiceProcess) -> float:
    for line in httpx.get(api.url + "/metrics", headers={"X-API-Key": API_KEY}).text.splitlines():
        if line.startswith('imgpod_queue_rejected_total{queue="text2img",reason="full"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_full_queue_is_rate_limit_error_after_retries_that_wait_retry_after(
    api: ServiceProcess, worker: ServiceProcess
) -> None:
    seen: list[tuple[float, int, str | None]] = []

    def record(response: httpx.Response) -> None:
        seen.append((time.monotonic(), response.status_code, response.headers.get("retry-after")))

    sdk = client(api, max_retries=2, http_client=httpx.Client(event_hooks={"response": [record]}))
    native = {"X-API-Key": API_KEY}

    async def fill_then_call(gate: WorkerGate) -> None:
        async with httpx.AsyncClient(base_url=api.url, headers=native, timeout=120) as c:
            # The first holds the only consumer, parked in the worker; the next two take the queue's places.
            running = asyncio.create_task(c.post("/v1/imagegen", json={"prompt": "a boat"}))
            await asyncio.to_thread(gate.wait_parked, 1)
            queued = [
                asyncio.create_task(c.post("/v1/imagegen", json={"prompt": f"a ship {i}"})) for i in range(2)
            ]
            await asyncio.to_thread(wait_until, lambda: queue_view(api, "text2img")["depth"] == 2)
            before = rejected_full(api)
            with pytest.raises(openai.RateLimitError) as caught:
                await asyncio.to_thread(sdk.images.generate, prompt="a canoe", size="64x64")
            assert caught.value.code == "rate_limit_exceeded"
            # The SDK's first try and its two retries, each refused by the queue.
            assert rejected_full(api) - before == 3
            gate.open()
            assert (await running).status_code == 200
            assert [(await q).status_code for q in queued] == [200, 200]

    with gate_of(worker).closed() as gate:
        asyncio.run(fill_then_call(gate))
    assert [status for _, status, _ in seen] == [429, 429, 429]
    for (at, _, retry_after), (next_at, _, _) in itertools.pairwise(seen):
        assert retry_after is not None and int(retry_after) >= 1
        # Each retry waited what Retry-After said (the SDK's own backoff without it starts at 0.5 s).
        assert next_at - at >= int(retry_after) - 0.05


def test_openapi_lists_the_openai_routes() -> None:
    paths = create_app(InterfaceSettings()).openapi()["paths"]
    expected = {
        "/v1/models",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/files/{job_id}/{index}",
    }
    assert expected <= set(paths)


def jobs_ended(api: ServiceProcess, route: str, status: str) -> float:
    prefix = f'imgpod_jobs_total{{route="{route}",status="{status}"}}'
    for line in httpx.get(api.url + "/metrics", headers={"X-API-Key": API_KEY}).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_closing_a_stream_cancels_its_job_on_the_worker(api: ServiceProcess, worker: ServiceProcess) -> None:
    body = {"prompt": "a slow sunrise", "size": "64x64", "stream": True, "partial_images": 1}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = jobs_ended(api, "text2img", "canceled")
    with gate_of(worker).closed() as gate:
        with httpx.stream(
            "POST", api.url + "/v1/images/generations", json=body, headers=headers, timeout=60
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            gate.wait_parked(1)
        # The client is gone: the interface cancels the job, which closes the worker's stream, which stops
        # the generation waiting at the gate.
        gate.wait_parked(0)
        wait_until(lambda: jobs_ended(api, "text2img", "canceled") == before + 1)
    assert queue_view(api, "text2img")["depth"] == 0
