"""The image worker's progress stream (``Accept: application/x-ndjson``) over HTTP, on the tiny Z-Image
checkpoint: every step as a line, the plain answer as the last one, plain HTTP errors before the start, and
a closed connection that stops the pipeline at its next step."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from devtools.service_process import ServiceProcess, all_running
from shared.images import decode_base64_image as decode
from shared.progress_stream import MEDIA_TYPE, Final, Progress, parse_line
from tests.helpers.waiting import WorkerGate, wait_until
from tests.integration.test_image_workers import AUTH, TOKEN, image_env

pytestmark = pytest.mark.integration

STREAM = {**AUTH, "Accept": MEDIA_TYPE}
ROUTE = "/v1/chat/1to1/generate"
# 512x512 and 50 steps: the slowest call the tiny model makes (about 10 ms a step on one CPU core), so a
# cancel sent after step 2 meets dozens of steps still to run.
LONG = {"width": 512, "height": 512, "steps": 50}


@pytest.fixture(scope="module")
def workers(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    model = tiny_models["zimage"]
    procs = {
        # One request at a time (a second is the worker's 429), with the test gate.
        "single": ServiceProcess(
            "services.chat1to1_worker.main",
            env=image_env(model, IMAGE_QUEUE_LIMIT="1", IMAGE_TEST_HOOKS="true"),
        ),
        # Two requests that overlap share a call: the window waits for the second.
        "pair": ServiceProcess(
            "services.chat1to1_worker.main",
            env=image_env(model, IMAGE_MAX_BATCH="2", IMAGE_BATCH_WAIT_MS="1000"),
        ),
        # Every job waits the 1 s batch window (alone, it never fills a batch of 4), past the 50 ms timeout.
        "late": ServiceProcess(
            "services.chat1to1_worker.main",
            env=image_env(model, IMAGE_BATCH_WAIT_MS="1000", IMAGE_INFERENCE_TIMEOUT_S="0.05"),
        ),
    }
    with all_running(procs.values()):
        yield procs


def metric(worker: ServiceProcess, name: str) -> float:
    text = httpx.get(worker.url + "/metrics", headers=AUTH, timeout=10).text
    values = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ")]
    assert len(values) == 1, f"{name} not in /metrics"
    return values[0]


def read_stream(resp: httpx.Response) -> tuple[list[Progress], Final]:
    progress: list[Progress] = []
    final: Final | None = None
    for line in resp.iter_lines():
        assert final is None, "a line after the final one"
        item = parse_line(line)
        if isinstance(item, Progress):
            progress.append(item)
        else:
            final = item
    assert final is not None, "the stream ended without a final line"
    return progress, final


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode(b64), dtype=np.float64)


def body(**extra: Any) -> dict[str, Any]:
    return {"prompt": "a red fox in a snowy forest, golden hour", **extra}


@pytest.mark.parametrize("route", [ROUTE, "/v1/generate"])
def test_stream_has_every_step_then_the_plain_answer(workers: dict[str, ServiceProcess], route: str) -> None:
    url = workers["single"].url + route
    payload = body(seed=5, steps=12, width=128, height=96, n=2)
    with httpx.stream("POST", url, json=payload, headers=STREAM, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith(MEDIA_TYPE)
        progress, final = read_stream(resp)
    assert progress == [Progress(step, 12) for step in range(1, 13)]
    assert final.status == 200
    plain = httpx.post(url, json=payload, headers=AUTH, timeout=60)
    assert plain.status_code == 200
    expected = plain.json()
    # The same body as the plain call, timings aside; the same pixels for the same seeds.
    for key in expected.keys() - {"timings_ms", "image_base64", "more_images"}:
        assert final.body[key] == expected[key], key
    assert np.array_equal(pixels(final.body["image_base64"]), pixels(expected["image_base64"]))
    assert [m["seed"] for m in final.body["more_images"]] == [6]
    assert np.array_equal(
        pixels(final.body["more_images"][0]["image_base64"]),
        pixels(expected["more_images"][0]["image_base64"]),
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (body(steps=51), "validation_error"),  # the request model
        (body(width=1024), "validation_error"),  # the engine's own limits
        ({"prompt": "a naked 12 year old"}, "policy_blocked"),  # the route's policy
    ],
)
def test_refusal_before_the_start_is_a_plain_http_error(
    workers: dict[str, ServiceProcess], payload: dict[str, Any], code: str
) -> None:
    resp = httpx.post(workers["single"].url + ROUTE, json=payload, headers=STREAM, timeout=30)
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["code"] == code


def test_full_worker_429_is_a_plain_http_error(workers: dict[str, ServiceProcess]) -> None:
    worker = workers["single"]
    gate = WorkerGate(worker.url, TOKEN)
    url = worker.url + ROUTE
    with (
        gate.closed(),
        httpx.stream("POST", url, json=body(seed=1, steps=3), headers=STREAM, timeout=60) as first,
    ):
        assert first.status_code == 200
        # The first stream started and holds the worker's only place, parked after admission.
        gate.wait_parked(1)
        second = httpx.post(url, json=body(seed=2), headers=STREAM, timeout=30)
        assert second.status_code == 429
        assert second.headers["content-type"].startswith("application/json")
        assert second.json()["code"] == "overloaded"
        assert int(second.headers["Retry-After"]) >= 1
        gate.open()
        progress, final = read_stream(first)
    assert [p.step for p in progress] == [1, 2, 3]
    assert final.status == 200


def test_error_after_the_start_is_an_error_line(workers: dict[str, ServiceProcess]) -> None:
    url = workers["late"].url + ROUTE
    with httpx.stream("POST", url, json=body(seed=3, steps=4), headers=STREAM, timeout=60) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["X-Request-ID"]
        progress, final = read_stream(resp)
    plain = httpx.post(url, json=body(seed=3, steps=4), headers=AUTH, timeout=60)
    assert plain.status_code == 504
    assert progress == []
    assert final.status == 504
    # The plain answer's body, with this request's id.
    assert final.body == {**plain.json(), "request_id": request_id}
    assert final.body["code"] == "inference_timeout"
    # The timed-out jobs were dropped from their calls, never run on the device.
    wait_until(lambda: metric(workers["late"], "imgpod_image_canceled_total") == 2)
    assert metric(workers["late"], "imgpod_image_steps_total") == 0


def test_closing_the_stream_stops_the_pipeline(workers: dict[str, ServiceProcess]) -> None:
    worker = workers["single"]
    canceled, steps, failures = (
        metric(worker, name)
        for name in ("imgpod_image_canceled_total", "imgpod_image_steps_total", "imgpod_image_failures_total")
    )
    with httpx.stream(
        "POST", worker.url + ROUTE, json=body(seed=9, **LONG), headers=STREAM, timeout=60
    ) as resp:
        lines = resp.iter_lines()
        assert [parse_line(next(lines)) for _ in range(2)] == [Progress(1, 50), Progress(2, 50)]
    # Leaving the block closed the connection mid-stream.
    wait_until(lambda: metric(worker, "imgpod_image_canceled_total") == canceled + 1, what="cancel counted")
    wait_until(lambda: metric(worker, "imgpod_image_steps_total") > steps, what="the call returned")
    ran = metric(worker, "imgpod_image_steps_total") - steps
    assert 2 <= ran < 50
    assert metric(worker, "imgpod_image_failures_total") == failures
    # The worker's only place is free again (IMAGE_QUEUE_LIMIT=1), and it serves the next request whole.
    resp2 = httpx.post(worker.url + ROUTE, json=body(seed=9, steps=2), headers=AUTH, timeout=60)
    assert resp2.status_code == 200


def test_cancel_in_a_shared_call_leaves_the_other_its_own_image(workers: dict[str, ServiceProcess]) -> None:
    worker = workers["pair"]
    url = worker.url + ROUTE
    steps = metric(worker, "imgpod_image_steps_total")

    async def overlap() -> tuple[list[Progress], Final]:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", url, json=body(seed=21, **LONG), headers=STREAM) as leaving,
            client.stream("POST", url, json=body(seed=22, **LONG), headers=STREAM) as staying,
        ):
            lines = leaving.aiter_lines()
            assert [parse_line(await anext(lines)) for _ in range(2)] == [
                Progress(1, 50),
                Progress(2, 50),
            ]
            await leaving.aclose()
            progress: list[Progress] = []
            async for line in staying.aiter_lines():
                item = parse_line(line)
                if isinstance(item, Final):
                    return progress, item
                progress.append(item)
        raise AssertionError("the stream ended without a final line")

    progress, final = asyncio.run(overlap())
    assert progress == [Progress(step, 50) for step in range(1, 51)]
    assert final.status == 200
    # Both were in one call of two images.
    assert final.body["timings_ms"]["batch_size"] == 2
    wait_until(lambda: metric(worker, "imgpod_image_canceled_total") == 1)
    # The staying image ran 50 steps, the leaving one a few before it left the call.
    ran = metric(worker, "imgpod_image_steps_total") - steps
    assert 50 + 2 <= ran < 100
    alone = httpx.post(url, json=body(seed=22, **LONG), headers=AUTH, timeout=60).json()
    assert alone["timings_ms"]["batch_size"] == 1
    diff = np.abs(pixels(final.body["image_base64"]) - pixels(alone["image_base64"]))
    # The image its seed makes alone, up to float rounding of the batch it started in.
    assert diff.max() <= 2
