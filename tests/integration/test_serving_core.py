"""The serving core's promises under overlapping requests, over real HTTP between real processes.

Workers run the tiny Z-Image model with the test gate on (``IMAGE_TEST_HOOKS=1``), so "a worker is busy
with this request" is a state each test creates and observes, never a guess about how long the machine
takes. Timeouts here only bound a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running
from tests.helpers.waiting import HANG_TIMEOUT_S, WorkerGate, wait_until
from tests.integration.test_image_workers import AUTH, TOKEN, image_env
from tests.integration.test_interface_pools import interface_env, queue_view

pytestmark = pytest.mark.integration


def gated_env(model: Path, **extra: str) -> dict[str, str]:
    return image_env(model, IMAGE_TEST_HOOKS="1", **extra)


@pytest.fixture(scope="module")
def pair(tiny_models: dict[str, Path]) -> Iterator[list[ServiceProcess]]:
    """Two chat1to1 workers: they serve both the role route (private chat) and the general /v1/generate."""
    env = gated_env(tiny_models["zimage"])
    procs = [ServiceProcess("services.chat1to1_worker.main", env=env) for _ in range(2)]
    with all_running(procs):
        yield procs


def gate(worker: ServiceProcess) -> WorkerGate:
    return WorkerGate(worker.url, TOKEN)


def metric(api: ServiceProcess, pattern: str) -> float:
    match = re.search(pattern + r" ([0-9.e+-]+)", httpx.get(api.url + "/metrics").text)
    return float(match.group(1)) if match else 0.0


def test_concurrent_long_and_short_prompts_get_exact_token_counts(pair: list[ServiceProcess]) -> None:
    """Token counting shared the tokenizer with the pipeline thread: counts came back wrong under load."""
    prompts = ["a fox", "a red fox in the snow at dawn, " * 60, "a boat", "portrait, soft light, " * 90]
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=",".join(w.url for w in pair))
    with ServiceProcess("services.interface.main", env=env) as api:
        alone = {}
        for p in prompts:
            body = httpx.post(api.url + "/v1/imagegen", json={"prompt": p, "steps": 1}, timeout=60).json()
            alone[p] = (body["prompt_tokens"], body["prompt_truncated"])
        assert alone[prompts[0]][1] is False and alone[prompts[3]][1] is True

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=HANG_TIMEOUT_S * 2) as client:
                calls = [
                    client.post(
                        api.url + "/v1/imagegen", json={"prompt": prompts[i % 4], "steps": 1, "seed": i}
                    )
                    for i in range(24)
                ]
                return list(await asyncio.gather(*calls))

        responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 24
    for i, resp in enumerate(responses):
        body = resp.json()
        assert (body["prompt_tokens"], body["prompt_truncated"]) == alone[prompts[i % 4]], i


def test_policy_blocks_never_take_a_slot_nor_teach_admission(pair: list[ServiceProcess]) -> None:
    worker = pair[0]
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=worker.url)
    with ServiceProcess("services.interface.main", env=env) as api:
        assert httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite", "steps": 1}).status_code == 200
        before = queue_view(api, "text2img")["service_ms"]
        arrived = gate(worker).arrived()

        async def blocked() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                calls = [
                    client.post(api.url + "/v1/imagegen", json={"prompt": "a naked 12 year old"})
                    for _ in range(20)
                ]
                return list(await asyncio.gather(*calls))

        responses = asyncio.run(blocked())
        assert [r.status_code for r in responses] == [422] * 20
        assert {r.json()["code"] for r in responses} == {"policy_blocked"}
        assert queue_view(api, "text2img")["service_ms"] == before
        assert metric(api, r'imgpod_queue_admitted_total\{queue="text2img"\}') == 1.0
        assert gate(worker).arrived() == arrived


def test_two_workers_behind_two_pools_and_two_queues_stay_within_budget(pair: list[ServiceProcess]) -> None:
    """Each worker has one budget, however many queues and pools send to it (here: 1 call at a time)."""
    urls = ",".join(w.url for w in pair)
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=urls,
        INTERFACE_CHAT1TO1_WORKER_URLS=urls,
        INTERFACE_PER_WORKER_CONCURRENCY="1",
    )
    g1, g2 = gate(pair[0]), gate(pair[1])
    with ServiceProcess("services.interface.main", env=env) as api, g1.closed(), g2.closed():
        arrived = g1.arrived() + g2.arrived()

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=HANG_TIMEOUT_S * 2) as client:
                tasks = [
                    asyncio.create_task(
                        client.post(api.url + path, json={"prompt": f"a kite {i}", "steps": 1})
                    )
                    for i in range(3)
                    for path in ("/v1/imagegen", "/v1/chat/private/imagegen")
                ]

                def settled() -> bool:
                    # Every item the queues took is either parked in a worker or waiting for a slot: none
                    # is on its way, so the count at the workers is final while the gates stay shut.
                    views = [queue_view(api, "text2img"), queue_view(api, "private")]
                    taken = sum(v["in_flight"] for v in views)
                    waiting = metric(api, r'imgpod_pool_waiting_calls\{pool="text2img"\}') + metric(
                        api, r'imgpod_pool_waiting_calls\{pool="chat1to1"\}'
                    )
                    parked = g1.state()["parked"] + g2.state()["parked"]
                    return taken == sum(v["consumers"] for v in views) > 2 and parked + waiting == taken

                await asyncio.to_thread(wait_until, settled)
                assert (g1.state()["parked"], g2.state()["parked"]) == (1, 1)
                g1.open()
                g2.open()
                return list(await asyncio.gather(*tasks))

        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 6
        assert g1.arrived() + g2.arrived() - arrived == 6


@pytest.fixture
def busy_worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    """A worker that holds at most one request: with that one parked at its gate, it answers 429."""
    env = gated_env(tiny_models["zimage"], IMAGE_QUEUE_LIMIT="1")
    with ServiceProcess("services.image_worker.main", env=env) as worker, ThreadPoolExecutor(1) as pool:
        g = gate(worker)
        g.close()
        held = pool.submit(
            httpx.post,
            worker.url + "/v1/generate",
            json={"prompt": "x"},
            headers=AUTH,
            timeout=HANG_TIMEOUT_S,
        )
        try:
            g.wait_parked(1)
            yield worker
        finally:
            g.open()
            assert held.result().status_code == 200


def test_busy_worker_is_retried_elsewhere_or_passed_on_as_429(
    busy_worker: ServiceProcess, pair: list[ServiceProcess]
) -> None:
    direct = httpx.post(busy_worker.url + "/v1/generate", json={"prompt": "x"}, headers=AUTH)
    assert direct.status_code == 429 and int(direct.headers["Retry-After"]) >= 1

    free = pair[1]
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=f"{busy_worker.url},{free.url}")
    with ServiceProcess("services.interface.main", env=env) as api:
        before = gate(free).arrived()
        codes = [
            httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite", "steps": 1}).status_code
            for _ in range(4)
        ]
        assert codes == [200] * 4
        assert gate(free).arrived() - before == 4
        assert metric(api, r'imgpod_worker_retries_total\{pool="text2img"\}') >= 1
        assert metric(api, r'imgpod_worker_ejections_total\{pool="text2img"\}') == 0

    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=busy_worker.url)
    with ServiceProcess("services.interface.main", env=env) as api:
        resp = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite"})
        assert resp.status_code == 429, resp.text
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["code"] == "overloaded" and resp.json()["stage"] == "generate"


def test_calls_to_a_frozen_worker_are_resent_not_left_for_the_timeout(
    tiny_models: dict[str, Path], pair: list[ServiceProcess]
) -> None:
    healthy = pair[1]
    with ServiceProcess("services.image_worker.main", env=gated_env(tiny_models["zimage"])) as victim:
        env = interface_env(
            INTERFACE_TEXT2IMG_WORKER_URLS=f"{victim.url},{healthy.url}",
            INTERFACE_HEALTH_TIMEOUT_S="1",
            INTERFACE_GENERATE_TIMEOUT_S="120",
        )
        with ServiceProcess("services.interface.main", env=env) as api:
            g = gate(victim)
            g.close()
            before = gate(healthy).arrived()

            async def scenario() -> tuple[httpx.Response, float]:
                async with httpx.AsyncClient(timeout=150) as client:
                    # Least loaded, ties in turn from the first URL: the call goes to the victim and parks.
                    task = asyncio.create_task(
                        client.post(
                            api.url + "/v1/imagegen", json={"prompt": "a kite", "seed": 5, "steps": 1}
                        )
                    )
                    await asyncio.to_thread(g.wait_parked, 1)
                    assert victim.proc is not None
                    os.kill(victim.proc.pid, signal.SIGSTOP)
                    frozen_at = time.monotonic()
                    resp = await task
                    return resp, time.monotonic() - frozen_at

            try:
                resp, took = asyncio.run(scenario())
            finally:
                assert victim.proc is not None
                os.kill(victim.proc.pid, signal.SIGCONT)
                g.open()
            assert resp.status_code == 200, resp.text
            assert resp.json()["seed"] == 5
            assert gate(healthy).arrived() - before == 1
            # Re-sent once the probe failed, not after the 120 s generate timeout.
            assert took < 60, took


def test_sigterm_drains_a_worker(tiny_models: dict[str, Path]) -> None:
    env = gated_env(tiny_models["zimage"])
    worker = ServiceProcess("services.image_worker.main", env=env).start()
    try:
        g = gate(worker)
        g.close()

        async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(timeout=HANG_TIMEOUT_S) as client:
                running = asyncio.create_task(
                    client.post(
                        worker.url + "/v1/generate", json={"prompt": "a kite", "steps": 1}, headers=AUTH
                    )
                )
                await asyncio.to_thread(g.wait_parked, 1)
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGTERM)
                health = await _until_status(client, worker.url + "/healthz", 503)
                async with httpx.AsyncClient(timeout=10) as fresh:
                    refused = await fresh.post(
                        worker.url + "/v1/generate", json={"prompt": "b"}, headers=AUTH
                    )
                g.open()
                return await running, health, refused

        done, health, refused = asyncio.run(scenario())
        assert done.status_code == 200
        assert health.json()["status"] == "draining"
        assert refused.status_code == 503 and refused.json()["code"] == "draining"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["request_id"] == refused.headers["X-Request-ID"]
        assert worker.proc is not None
        worker.proc.wait(HANG_TIMEOUT_S)
        assert '"msg": "drained"' in worker.logs()
    finally:
        worker.stop()


def test_sigterm_drains_the_interface(pair: list[ServiceProcess]) -> None:
    worker = pair[0]
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=worker.url)
    api = ServiceProcess("services.interface.main", env=env).start()
    g = gate(worker)
    try:
        with g.closed():

            async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
                async with httpx.AsyncClient(timeout=HANG_TIMEOUT_S) as client:
                    running = asyncio.create_task(
                        client.post(api.url + "/v1/imagegen", json={"prompt": "a kite", "steps": 1})
                    )
                    await asyncio.to_thread(g.wait_parked, 1)
                    assert api.proc is not None
                    api.proc.send_signal(signal.SIGTERM)
                    health = await _until_status(client, api.url + "/healthz", 503)
                    async with httpx.AsyncClient(timeout=10) as fresh:
                        refused = await fresh.post(api.url + "/v1/imagegen", json={"prompt": "b"})
                    g.open()
                    return await running, health, refused

            done, health, refused = asyncio.run(scenario())
        assert done.status_code == 200, done.text
        assert health.status_code == 503
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert api.proc is not None
        api.proc.wait(HANG_TIMEOUT_S)
    finally:
        api.stop()


def test_drain_ends_at_its_timeout(tiny_models: dict[str, Path]) -> None:
    env = gated_env(tiny_models["zimage"], IMAGE_DRAIN_TIMEOUT_S="1", IMAGE_INFERENCE_TIMEOUT_S="1")
    worker = ServiceProcess("services.image_worker.main", env=env).start()
    g = gate(worker)
    try:
        g.close()

        async def scenario() -> BaseException | httpx.Response:
            async with httpx.AsyncClient(timeout=HANG_TIMEOUT_S) as client:
                stuck = asyncio.create_task(
                    client.post(worker.url + "/v1/generate", json={"prompt": "a kite"}, headers=AUTH)
                )
                await asyncio.to_thread(g.wait_parked, 1)
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGTERM)
                # The gate never opens: the process must still exit, after its drain timeout.
                await asyncio.to_thread(worker.proc.wait, HANG_TIMEOUT_S)
                return (await asyncio.gather(stuck, return_exceptions=True))[0]

        outcome = asyncio.run(scenario())
        assert not isinstance(outcome, httpx.Response) or outcome.status_code >= 500
        assert "drain timeout passed" in worker.logs()
    finally:
        worker.stop()


async def _until_status(client: httpx.AsyncClient, url: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while time.monotonic() < deadline:
        resp = await client.get(url)
        if resp.status_code == status:
            return resp
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered {status}")


def test_chunked_body_over_the_limit_is_413(pair: list[ServiceProcess]) -> None:
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=pair[0].url)
    with ServiceProcess("services.interface.main", env=env) as api:

        def chunks() -> Iterator[bytes]:
            yield b'{"prompt": "'
            for _ in range(40):
                yield b"x" * 65536
            yield b'"}'

        resp = httpx.post(
            api.url + "/v1/imagegen", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 413, resp.text
        assert resp.json()["code"] == "payload_too_large"
        assert resp.json()["request_id"] == resp.headers["X-Request-ID"]
        # The service is fine afterwards.
        assert httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite", "steps": 1}).status_code == 200


def test_sizes_over_the_deployed_limit_are_refused_before_the_queue(pair: list[ServiceProcess]) -> None:
    worker = pair[0]  # IMAGE_MAX_SIDE=512
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=worker.url)
    with ServiceProcess("services.interface.main", env=env) as api:
        arrived = gate(worker).arrived()
        resp = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite", "width": 1024, "height": 512})
        assert resp.status_code == 422, resp.text
        assert "512" in resp.json()["detail"]
        assert metric(api, r'imgpod_queue_admitted_total\{queue="text2img"\}') == 0.0
        assert gate(worker).arrived() == arrived


def test_error_bodies_are_public_and_logs_have_the_cause(pair: list[ServiceProcess]) -> None:
    dead = "http://127.0.0.1:9"
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=f"{pair[0].url}", INTERFACE_CHAT1TO1_WORKER_URLS=dead)
    with ServiceProcess("services.interface.main", env=env) as api:
        resp = httpx.post(
            api.url + "/v1/chat/private/imagegen",
            json={"prompt": "a kite"},
            headers={"X-Request-ID": "rid-503"},
        )
        assert resp.status_code == 503
        body = resp.json()
        assert body["request_id"] == "rid-503"
        assert "127.0.0.1" not in resp.text and "Error" not in body["detail"]
        health = httpx.get(api.url + "/healthz")
        assert "127.0.0.1" not in health.text and pair[0].url not in health.text
        # Validation errors carry the id too.
        bad = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite", "sed": 1})
        assert bad.status_code == 422 and bad.json()["request_id"] == bad.headers["X-Request-ID"]


def test_upstream_failure_is_logged_with_its_cause_and_request_id() -> None:
    with ServiceProcess("tests.helpers.faulty_worker") as faulty:
        env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=faulty.url)
        with ServiceProcess("services.interface.main", env=env) as api:
            resp = httpx.post(
                api.url + "/v1/imagegen", json={"prompt": "a kite"}, headers={"X-Request-ID": "rid-502"}
            )
            assert resp.status_code == 502
            assert resp.json()["request_id"] == "rid-502"
            assert "Traceback" not in resp.text
        lines = [json.loads(line) for line in api.logs().splitlines() if line.startswith("{")]
        failed = [r for r in lines if r.get("msg") == "request failed" and r.get("request_id") == "rid-502"]
        assert failed, lines[-5:]
        assert "UpstreamFailed" in failed[0]["exc"]


def test_public_image_responses_carry_token_counts(pair: list[ServiceProcess]) -> None:
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=pair[0].url, INTERFACE_CHAT1TO1_WORKER_URLS=pair[1].url
    )
    with ServiceProcess("services.interface.main", env=env) as api:
        for path in ("/v1/imagegen", "/v1/chat/private/imagegen"):
            body = httpx.post(
                api.url + path, json={"prompt": "a kite over the sea", "steps": 1}, timeout=60
            ).json()
            assert body["prompt_tokens"] > 0 and body["prompt_truncated"] is False, path
            assert json.dumps(body).count("prompt_tokens") == 1
