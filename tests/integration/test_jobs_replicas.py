"""Two interface replicas on one real Redis (redis-server): a job submitted on one is streamed, read and
cancelled on the other; the queue bounds are one set for both; a replica killed with SIGKILL mid-job loses
nothing (the other reclaims its jobs, each ends in exactly one terminal state)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from devtools.service_process import ServiceProcess, all_running
from tests.helpers.redis_server import RedisServer, running_redis_server
from tests.helpers.waiting import WorkerGate, wait_until
from tests.integration.test_image_workers import image_env
from tests.integration.test_jobs import (
    BODY,
    PRIVATE,
    TOKEN,
    A,
    finished,
    get,
    interface_env,
    submit,
    watched_from_the_start,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    env = image_env(tiny_models["zimage"], IMAGE_TEST_HOOKS="1", IMAGE_MAX_BATCH="1")
    with all_running([proc := ServiceProcess("services.chat1to1_worker.main", env=env)]):
        yield proc


@pytest.fixture
def gate(worker: ServiceProcess) -> WorkerGate:
    return WorkerGate(worker.url, TOKEN)


def replica_env(worker: ServiceProcess, redis: RedisServer, prefix: str, **extra: str) -> dict[str, str]:
    return interface_env(
        worker,
        INTERFACE_JOBS_REDIS_URL=redis.url,
        # Each test its own keys: a fresh queue and fresh bounds on the same server.
        INTERFACE_JOBS_REDIS_PREFIX=f"test:{prefix}:",
        INTERFACE_JOBS_REDIS_HEARTBEAT_S="0.3",
        INTERFACE_JOBS_REDIS_CLAIM_IDLE_S="1.5",
        **extra,
    )


@pytest.fixture
def pair(worker: ServiceProcess, redis: RedisServer, request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    env = replica_env(worker, redis, request.node.name)
    with (
        ServiceProcess("services.interface.main", env=env) as a,
        ServiceProcess("services.interface.main", env=env) as b,
    ):
        yield [a, b]


def test_submit_on_a_stream_and_read_on_b(pair: list[ServiceProcess], gate: WorkerGate) -> None:
    a, b = pair
    job, events = watched_from_the_start(a, b, gate, {**BODY, "steps": 4, "seed": 101})
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "completed"
    assert [d["step"] for n, d in events if n == "progress"] == [1, 2, 3, 4]
    on_b = finished(b, job["id"])
    assert on_b["status"] == "succeeded" and on_b["result"]["seed"] == 101
    assert get(a, job["id"]).json()["result"] == on_b["result"]
    # A synchronous request on B: its job may run on either replica, the answer comes back on B's connection.
    sync = httpx.post(b.url + PRIVATE, json={**BODY, "seed": 101}, headers=A, timeout=60)
    assert sync.status_code == 200 and sync.json()["image_base64"] == on_b["result"]["image_base64"]


def test_cancel_on_b_a_job_running_and_one_queued(pair: list[ServiceProcess], gate: WorkerGate) -> None:
    a, b = pair
    with gate.closed():
        # One worker call at a time per replica: two jobs run (parked at the worker), the third waits.
        running = [submit(a, {**BODY, "seed": 111 + i}).json() for i in range(2)]
        gate.wait_parked(2)
        queued = submit(a, {**BODY, "seed": 119}).json()
        assert get(b, queued["id"]).json()["status"] == "queued"
        for job in (queued, *running):
            resp = httpx.post(f"{b.url}/v1/jobs/{job['id']}/cancel", headers=A, timeout=30)
            assert resp.status_code == 200 and resp.json()["status"] == "canceled", resp.text
        # The workers' parked calls were closed: each cancel reached the replica that ran the job.
        wait_until(lambda: gate.state()["parked"] == 0, what="the running jobs' worker calls closed")
    assert all(get(a, job["id"]).json()["status"] == "canceled" for job in running)
    after = submit(b, {**BODY, "seed": 113}).json()
    assert finished(a, after["id"])["status"] == "succeeded"


def test_queue_bounds_hold_across_replicas(
    worker: ServiceProcess, redis: RedisServer, gate: WorkerGate
) -> None:
    env = replica_env(worker, redis, "bounds", INTERFACE_QUEUE_CAPACITY="2")
    with (
        ServiceProcess("services.interface.main", env=env) as a,
        ServiceProcess("services.interface.main", env=env) as b,
        gate.closed(),
    ):
        # Two consumers in all (one worker call at a time per replica), then capacity 2: four jobs in all.
        accepted = [submit(a if i % 2 else b, {**BODY, "seed": 121 + i}) for i in range(2)]
        gate.wait_parked(2)
        accepted += [submit(b, {**BODY, "seed": 123}), submit(a, {**BODY, "seed": 124})]
        assert [r.status_code for r in accepted] == [202] * 4
        refused = [submit(b, {**BODY, "seed": 125}), submit(a, {**BODY, "seed": 126})]
        assert [r.status_code for r in refused] == [429, 429]
        assert all(float(r.headers["Retry-After"]) >= 1 for r in refused)
        gate.open()
        for resp in accepted:
            assert finished(a, resp.json()["id"])["status"] == "succeeded"


def test_replica_killed_mid_job_loses_nothing(
    worker: ServiceProcess, redis: RedisServer, gate: WorkerGate
) -> None:
    env = replica_env(worker, redis, "kill")
    with gate.closed():
        a = ServiceProcess("services.interface.main", env=env).start()
        try:
            ids = [submit(a, {**BODY, "seed": 130 + i}).json()["id"] for i in range(4)]
            gate.wait_parked(1)
            with ServiceProcess("services.interface.main", env=env) as b:
                a.kill()
                gate.open()
                jobs = [finished(b, job_id) for job_id in ids]
                assert [j["status"] for j in jobs] == ["succeeded"] * 4
                assert sorted(j["result"]["seed"] for j in jobs) == [130, 131, 132, 133]
                # Exactly one terminal state each, and B's counts agree: four succeeded jobs, none twice.
                text = httpx.get(b.url + "/metrics", headers=A).text
                line = next(
                    ln
                    for ln in text.splitlines()
                    if ln.startswith('imgpod_jobs_total{route="private",status="succeeded"}')
                )
                assert float(line.rsplit(" ", 1)[1]) == 4
        finally:
            a.kill()


def test_openai_url_made_on_a_is_served_by_b_and_a_stream_on_a_gets_partials(
    pair: list[ServiceProcess],
) -> None:
    a, b = pair
    sdk = openai.OpenAI(base_url=a.url + "/v1", api_key=A["X-API-Key"], timeout=120)
    made = sdk.images.generate(
        model="img-pod-private", prompt="a harbour at dawn", size="64x64", response_format="url"
    )
    assert made.data is not None and len(made.data) == 1
    for image in made.data:
        assert image.url is not None and image.url.startswith(a.url)
        # The file is the job's stored output: the other replica, on the same store and key, serves it.
        on_b = httpx.get(b.url + image.url.removeprefix(a.url), timeout=30)
        assert on_b.status_code == 200 and on_b.headers["content-type"] == "image/png"
    # On Redis the job may run on either replica; its partial images reach the stream wherever it ran.
    events = list(
        sdk.images.generate(
            model="img-pod-private",
            prompt="a harbour at dawn",
            size="64x64",
            stream=True,
            partial_images=1,
            extra_body={"steps": 4},
        )
    )
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
