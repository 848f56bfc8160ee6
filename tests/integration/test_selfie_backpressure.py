"""The selfie worker's admission over HTTP: a real uvicorn process with one analysis slot and one wait place.

The test gate (shared/test_hooks.py) parks the running analysis, so "busy" is a state the test creates and
observes, never a guess about how long an analysis takes on this machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.photos import astronaut, encode
from devtools.service_process import ServiceProcess
from tests.helpers.waiting import WorkerGate, until
from tests.integration.test_selfie_worker import ANALYZE, AUTH, MODULE, TOKEN, worker_env

pytestmark = pytest.mark.integration

SENT = 5
MAX_UPLOAD = 1_500_000


@pytest.fixture(scope="module")
def busy_worker(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("selfie-backpressure")
    env = worker_env(
        tiny_models,
        tmp,
        SELFIE_MAX_CONCURRENT="1",
        SELFIE_QUEUE_LIMIT="1",
        SELFIE_TEST_HOOKS="1",
        SELFIE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
    )
    with ServiceProcess(MODULE, env=env, log_dir=tmp) as svc:
        yield svc


async def upload(client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
    return await client.post(ANALYZE, files={"file": ("selfie.png", payload, "image/png")})


def refused_total(svc: ServiceProcess) -> float:
    metrics = httpx.get(f"{svc.url}/metrics", headers=AUTH, timeout=10).text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("imgpod_selfie_refused_total"))
    return float(line.split()[-1])


def test_healthz_advertises_concurrency(busy_worker: ServiceProcess) -> None:
    body = httpx.get(f"{busy_worker.url}/healthz", timeout=10).json()
    assert body["status"] == "ok"
    assert body["concurrency"] == 1 and body["queue_limit"] == 1


def test_overlapping_uploads_beyond_the_wait_list_get_429_at_once(busy_worker: ServiceProcess) -> None:
    gate = WorkerGate(busy_worker.url, TOKEN)
    photo = encode(astronaut())
    refused_before = refused_total(busy_worker)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=busy_worker.url, headers=AUTH, timeout=120) as client:
            with gate.closed():
                tasks = [asyncio.create_task(upload(client, photo)) for _ in range(SENT)]
                # One holds the slot (parked at the gate), one waits for it, the other three are refused
                # while both are still there: the refusals cannot be waiting for anything.
                await until(lambda: sum(t.done() for t in tasks) == SENT - 2, what="3 answered at once")
                await asyncio.to_thread(gate.wait_parked, 1)
                assert sum(t.done() for t in tasks) == SENT - 2
                # Size limits still hold while busy: an oversized upload is a 413, not a 429.
                too_big = await upload(client, b"\0" * (MAX_UPLOAD + 1))
                assert too_big.status_code == 413, too_big.text
            return list(await asyncio.gather(*tasks))

    responses = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429], [r.text for r in responses]
    for resp in responses:
        assert resp.status_code < 500, resp.text
        if resp.status_code == 429:
            body = resp.json()
            assert body["code"] == "overloaded" and body["stage"] == "analyze" and body["detail"]
            assert int(resp.headers["Retry-After"]) >= 1
    assert refused_total(busy_worker) == refused_before + SENT - 2
    assert gate.state()["parked"] == 0


def test_slots_are_freed_after_a_burst(busy_worker: ServiceProcess) -> None:
    # Every earlier request has returned its slot: two in a row are both served.
    for _ in range(2):
        resp = httpx.post(
            f"{busy_worker.url}{ANALYZE}",
            files={"file": ("selfie.png", encode(astronaut()), "image/png")},
            headers=AUTH,
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
