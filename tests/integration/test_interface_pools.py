"""Interface pools and admission against real image workers (uvicorn subprocesses on loopback)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running
from tests.helpers.waiting import WorkerGate, wait_until
from tests.integration.test_image_workers import TOKEN, image_env

pytestmark = pytest.mark.integration


def served(worker: ServiceProcess) -> int:
    """How many /v1/generate calls this worker answered, read from its own /metrics."""
    text = httpx.get(worker.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("imgpod_http_requests_total{") and 'route="/v1/generate"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def interface_env(**extra: str) -> dict[str, str]:
    return {
        "INTERFACE_INTERNAL_TOKEN": TOKEN,
        # These tests are about pools and queues in front of image workers, with no LLM: no guard to ask.
        # The guard's own behaviour (enforce, observe, failures) is tests/integration/test_guard.py.
        "INTERFACE_GUARD": "off",
        "INTERFACE_HEALTH_INTERVAL_S": "0.3",
        "INTERFACE_EJECT_AFTER_FAILURES": "1",
        "INTERFACE_EJECT_COOLDOWN_S": "1",
        **extra,
    }


def pool_healthy(interface: ServiceProcess, pool: str) -> int:
    return int(httpx.get(interface.url + "/healthz").json()["pools"][pool]["healthy"])


def queue_view(interface: ServiceProcess, queue: str) -> dict[str, int]:
    return httpx.get(interface.url + "/healthz").json()["queues"][queue]


def gate_of(worker: ServiceProcess) -> WorkerGate:
    return WorkerGate(worker.url, TOKEN)


@pytest.fixture(scope="module")
def two_workers(tiny_models: dict[str, Path]) -> Iterator[list[ServiceProcess]]:
    env = image_env(tiny_models["zimage"], IMAGE_TEST_HOOKS="1")
    procs = [ServiceProcess("services.image_worker.main", env=env) for _ in range(2)]
    with all_running(procs):
        yield procs
    # A test replaces a killed worker in the list; all_running stopped the ones it started.
    for p in procs:
        p.stop()


def test_round_robin_ejection_and_return(
    two_workers: list[ServiceProcess], tiny_models: dict[str, Path]
) -> None:
    w1, w2 = two_workers
    urls = f"{w1.url},{w2.url}"
    with ServiceProcess(
        "services.interface.main", env=interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=urls)
    ) as api:
        assert pool_healthy(api, "text2img") == 2
        before = (served(w1), served(w2))
        for i in range(6):
            resp = httpx.post(api.url + "/v1/imagegen", json={"prompt": f"a boat {i}", "seed": i}, timeout=60)
            assert resp.status_code == 200, resp.text
        after = (served(w1), served(w2))
        assert (after[0] - before[0], after[1] - before[1]) == (3, 3)

        w1.kill()
        statuses = [
            httpx.post(api.url + "/v1/imagegen", json={"prompt": "a boat", "seed": i}, timeout=60).status_code
            for i in range(6)
        ]
        assert statuses == [200] * 6
        assert served(w2) - after[1] == 6
        wait_until(lambda: pool_healthy(api, "text2img") == 1)
        metrics = httpx.get(api.url + "/metrics").text
        assert re.search(r'imgpod_pool_healthy_workers\{pool="text2img"\} 1\.0', metrics)

        # The same worker comes back on the same port: after its cool-down and a good probe it gets traffic.
        revived = ServiceProcess(
            "services.image_worker.main", env=image_env(tiny_models["zimage"]), port=w1.port
        )
        # Into the fixture's list: later tests use both workers, and the fixture stops it at the end.
        two_workers[0] = revived
        revived.start()
        wait_until(lambda: pool_healthy(api, "text2img") == 2)
        for i in range(4):
            httpx.post(api.url + "/v1/imagegen", json={"prompt": "a boat", "seed": i}, timeout=60)
        assert served(revived) == 2


def test_no_healthy_worker_is_503_naming_the_pool() -> None:
    with ServiceProcess(
        "services.interface.main", env=interface_env(INTERFACE_TEXT2IMG_WORKER_URLS="http://127.0.0.1:9")
    ) as api:
        resp = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a boat"})
        assert resp.status_code == 503
        body = resp.json()
        assert body["code"] == "no_healthy_worker"
        assert "text2img" in body["detail"]
        health = httpx.get(api.url + "/healthz").json()
        assert health["status"] == "degraded"
        assert "127.0.0.1" not in json.dumps(health)


def test_burst_over_capacity_gets_429_and_no_5xx(two_workers: list[ServiceProcess]) -> None:
    worker = two_workers[1]
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=worker.url,
        INTERFACE_PER_WORKER_CONCURRENCY="1",
        INTERFACE_QUEUE_OVERRIDES='{"text2img": {"capacity": 2, "sla_ms": 600000}}',
    )
    with ServiceProcess("services.interface.main", env=env) as api, gate_of(worker).closed() as gate:
        body = {"prompt": "a harbour at night"}

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                # The first request holds the only consumer, parked in the worker until the gate opens.
                first = asyncio.create_task(client.post(api.url + "/v1/imagegen", json=body))
                await asyncio.to_thread(gate.wait_parked, 1)
                rest = [
                    asyncio.create_task(client.post(api.url + "/v1/imagegen", json=body)) for _ in range(9)
                ]
                # Two fit in the queue; the other seven are refused at once, while the gate is still shut.
                await asyncio.to_thread(wait_until, lambda: sum(t.done() for t in rest) == 7)
                assert queue_view(api, "text2img")["depth"] == 2
                gate.open()
                return [await first, *[await t for t in rest]]

        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 3 + [429] * 7, codes
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["code"] == "overloaded"
        metrics = httpx.get(api.url + "/metrics").text
        assert 'imgpod_queue_rejected_total{queue="text2img",reason="full"} 7.0' in metrics


def test_client_disconnect_drops_its_queued_item(two_workers: list[ServiceProcess]) -> None:
    worker = two_workers[1]
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=worker.url, INTERFACE_PER_WORKER_CONCURRENCY="1")
    with ServiceProcess("services.interface.main", env=env) as api, gate_of(worker).closed() as gate:
        arrived_before = gate.arrived()

        async def scenario() -> int:
            async with httpx.AsyncClient(timeout=120) as client:
                running = asyncio.create_task(
                    client.post(api.url + "/v1/imagegen", json={"prompt": "a boat"})
                )
                # The first request is parked in the worker: it holds the interface's only consumer.
                await asyncio.to_thread(gate.wait_parked, 1)
                queued = asyncio.create_task(
                    client.post(api.url + "/v1/imagegen", json={"prompt": "never drawn"})
                )
                await asyncio.to_thread(wait_until, lambda: queue_view(api, "text2img")["depth"] == 1)
                # The client of the queued request gives up and closes its connection.
                queued.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await queued
                await asyncio.to_thread(wait_until, lambda: queue_view(api, "text2img")["depth"] == 0)
                gate.open()
                return (await running).status_code

        assert asyncio.run(scenario()) == 200
        wait_until(lambda: queue_view(api, "text2img")["in_flight"] == 0)
        view = queue_view(api, "text2img")
        assert (view["depth"], view["in_flight"]) == (0, 0)
        # Only the first request ever reached the worker: the dropped one was never sent.
        assert gate.arrived() - arrived_before == 1
        metrics = httpx.get(api.url + "/metrics").text
        assert 'imgpod_queue_admitted_total{queue="text2img"} 2.0' in metrics


def test_queue_consumers_follow_what_workers_advertise(two_workers: list[ServiceProcess]) -> None:
    """Each image worker advertises devices x max batch (1 x 4) on /healthz; the setting only bounds it."""
    urls = ",".join(w.url for w in two_workers)
    for bound, expected in ((None, 8), ("3", 6)):
        extra = {"INTERFACE_TEXT2IMG_WORKER_URLS": urls}
        if bound:
            extra["INTERFACE_PER_WORKER_CONCURRENCY"] = bound
        with ServiceProcess("services.interface.main", env=interface_env(**extra)) as api:
            queues = httpx.get(api.url + "/healthz").json()["queues"]
            assert queues["text2img"]["consumers"] == expected
            assert queues["profile"]["consumers"] == 0
