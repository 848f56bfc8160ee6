"""The deployment's bounds on steps, guidance and n, and what a request for n images costs the queue: the
interface in front of a real image worker (tiny Z-Image, test gate on) whose settings are lower than the
schema's, over HTTP on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess
from tests.helpers.waiting import HANG_TIMEOUT_S, WorkerGate, wait_until
from tests.integration.test_image_workers import TOKEN, image_env
from tests.integration.test_interface_pools import interface_env, queue_view
from tests.integration.test_serving_core import metric

pytestmark = pytest.mark.integration

# max_batch 3: a request holds at most 3 images (all in one batch), so the worker advertises max_n 3.
LIMITED = {
    "IMAGE_DEFAULT_STEPS": "2",
    "IMAGE_MAX_STEPS": "4",
    "IMAGE_MAX_GUIDANCE": "2",
    "IMAGE_MAX_BATCH": "3",
    "IMAGE_TEST_HOOKS": "1",
}


@pytest.fixture(scope="module")
def worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        "services.chat1to1_worker.main", env=image_env(tiny_models["zimage"], **LIMITED)
    ) as w:
        yield w


@pytest.fixture(scope="module")
def api(worker: ServiceProcess) -> Iterator[ServiceProcess]:
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=worker.url,
        INTERFACE_CHAT1TO1_WORKER_URLS=worker.url,
        INTERFACE_PER_WORKER_CONCURRENCY="1",
        INTERFACE_QUEUE_OVERRIDES='{"text2img": {"capacity": 4, "sla_ms": 600000}}',
    )
    with ServiceProcess("services.interface.main", env=env) as proc:
        yield proc


def gate(worker: ServiceProcess) -> WorkerGate:
    return WorkerGate(worker.url, TOKEN)


def test_worker_advertises_its_bounds(worker: ServiceProcess) -> None:
    limits = httpx.get(worker.url + "/healthz").json()["limits"]
    assert (limits["max_steps"], limits["max_guidance"], limits["max_n"]) == (4, 2.0, 3)


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/imagegen", {"prompt": "a kite", "steps": 5}, "steps"),
        ("/v1/chat/private/imagegen", {"prompt": "a kite", "guidance_scale": 2.5}, "guidance_scale"),
        ("/v1/imagegen", {"prompt": "a kite", "n": 4}, "n"),
        # Refused before the expansion: this interface has no LLM at all.
        ("/v1/chat/1to1/imagegen", {"message": "a kite", "n": 4}, "n"),
    ],
)
def test_over_the_deployed_bound_is_refused_before_the_queue(
    api: ServiceProcess, worker: ServiceProcess, path: str, payload: dict[str, object], param: str
) -> None:
    arrived = gate(worker).arrived()
    admitted = metric(api, r'imgpod_queue_admitted_total\{queue="text2img"\}')
    resp = httpx.post(api.url + path, json=payload, timeout=30)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "validation_error"
    assert body["detail"].startswith(f"{param}: at most"), body
    assert "on this deployment" in body["detail"]
    assert metric(api, r'imgpod_queue_admitted_total\{queue="text2img"\}') == admitted
    assert gate(worker).arrived() == arrived


def test_at_the_bounds_three_images_come_from_one_worker_call(
    api: ServiceProcess, worker: ServiceProcess
) -> None:
    arrived = gate(worker).arrived()
    payload = {
        "prompt": "a kite",
        "seed": 500,
        "n": 3,
        "steps": 4,
        "guidance_scale": 2.0,
        "width": 32,
        "height": 32,
    }
    resp = httpx.post(api.url + "/v1/imagegen", json=payload, timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [body["seed"]] + [i["seed"] for i in body["more_images"]] == [500, 501, 502]
    assert (body["steps"], body["guidance_scale"], body["width"]) == (4, 2.0, 32)
    assert gate(worker).arrived() == arrived + 1


def test_a_request_for_n_images_takes_n_places_in_the_queue(
    api: ServiceProcess, worker: ServiceProcess
) -> None:
    """Queue capacity 4, one consumer: with one request at the worker, a request for 3 images fills 3 of
    the 4 places; a request for 2 no longer fits (429 full) while one for 1 still does."""
    g = gate(worker)
    small = {"prompt": "a kite", "steps": 1, "width": 32, "height": 32}
    with g.closed():
        arrived = g.arrived()

        async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
            async with httpx.AsyncClient(timeout=HANG_TIMEOUT_S * 2) as client:

                def send(n: int) -> asyncio.Task[httpx.Response]:
                    return asyncio.create_task(client.post(api.url + "/v1/imagegen", json={**small, "n": n}))

                running = send(1)
                await asyncio.to_thread(g.wait_parked, 1)
                three = send(3)
                await asyncio.to_thread(wait_until, lambda: queue_view(api, "text2img")["depth"] == 3)
                refused = await send(2)
                one = send(1)
                await asyncio.to_thread(wait_until, lambda: queue_view(api, "text2img")["depth"] == 4)
                g.open()
                return [await running, await three, await one], refused

        served, refused = asyncio.run(scenario())
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert [r.status_code for r in served] == [200, 200, 200]
    assert [1 + len(r.json()["more_images"]) for r in served] == [1, 3, 1]
    # Three requests, three worker calls: the three images of one came from one call.
    assert g.arrived() - arrived == 3
    assert metric(api, r'imgpod_queue_rejected_total\{queue="text2img",reason="full"\}') == 1.0
