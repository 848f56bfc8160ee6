"""Jobs through the running interface (SQLite store): submit, poll, stream, cancel, idempotency, ownership,
expiry and a restart, in front of a real image worker on the tiny Z-Image.

The private image route is the one used: it has no LLM stage (the guard is off here, as in the pool tests), so
the job's only worker call is the image, whose progress and cancel are what these tests are about. Every
route takes the same job path (services/interface/jobs/submission.py); test_e2e_flows.py runs them all.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devtools.service_process import ServiceProcess, all_running
from tests.helpers.waiting import WorkerGate, wait_until
from tests.integration.test_image_workers import image_env
from tests.unit.test_webhooks import Receiver, verify_webhook

pytestmark = pytest.mark.integration

TOKEN = "test-internal-token"
KEY_A, KEY_B = "jobs-key-a", "jobs-key-b"
A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}
ASYNC = {**A, "Prefer": "respond-async"}
PRIVATE = "/v1/chat/private/imagegen"
BODY = {"prompt": "a lighthouse on a cliff at dusk", "seed": 11, "steps": 4, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    env = image_env(tiny_models["zimage"], IMAGE_TEST_HOOKS="1", IMAGE_MAX_BATCH="1")
    with all_running([proc := ServiceProcess("services.chat1to1_worker.main", env=env)]):
        yield proc


def interface_env(worker: ServiceProcess, **extra: str) -> dict[str, str]:
    return {
        "INTERFACE_INTERNAL_TOKEN": TOKEN,
        "INTERFACE_CHAT1TO1_WORKER_URLS": worker.url,
        "INTERFACE_API_KEYS": f"{KEY_A},{KEY_B}",
        "INTERFACE_GUARD": "off",
        "INTERFACE_HEALTH_INTERVAL_S": "0.3",
        # One call at a time on the worker: the next job waits in the interface queue, where a test sees it.
        "INTERFACE_PER_WORKER_CONCURRENCY": "1",
        "INTERFACE_QUEUE_MAX_SHARE_PER_KEY": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def api(worker: ServiceProcess) -> Iterator[ServiceProcess]:
    with ServiceProcess("services.interface.main", env=interface_env(worker)) as proc:
        yield proc


@pytest.fixture
def gate(worker: ServiceProcess) -> WorkerGate:
    return WorkerGate(worker.url, TOKEN)


def submit(api: ServiceProcess, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.post(api.url + PRIVATE, json=body or BODY, headers={**ASYNC, **headers}, timeout=30)


def get(api: ServiceProcess, job_id: str, headers: dict[str, str] = A) -> httpx.Response:
    return httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=headers, timeout=30)


def finished(api: ServiceProcess, job_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(get(api, job_id).json())
        return seen["status"] not in ("queued", "running")

    wait_until(done, what=f"job {job_id} finished")
    return seen


def read_events(api: ServiceProcess, job_id: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    """Collect a job's SSE events (event name, data) until the server closes the stream."""
    with httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", headers=A, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event is not None:
                out.append((event, json.loads(line.split(":", 1)[1])))
                event = None


def test_async_job_answers_202_and_its_result_is_the_synchronous_body(api: ServiceProcess) -> None:
    resp = submit(api)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["id"].startswith("job_") and job["status"] in ("queued", "running", "succeeded")
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}" == job["urls"]["get"]
    assert resp.headers["Preference-Applied"] == "respond-async"
    assert job["urls"]["stream"].endswith("/events") and job["urls"]["cancel"].endswith("/cancel")
    done = finished(api, job["id"])
    assert done["status"] == "succeeded"
    assert done["created_at"] <= done["started_at"] <= done["finished_at"] < done["expires_at"]
    sync = httpx.post(api.url + PRIVATE, json=BODY, headers=A, timeout=60)
    assert sync.status_code == 200
    # The same fixed seed: the job's image is the synchronous route's, byte for byte.
    assert done["result"]["image_base64"] == sync.json()["image_base64"]
    assert done["result"]["seed"] == sync.json()["seed"] == 11


def test_events_stream_relays_every_denoising_step(api: ServiceProcess) -> None:
    job = submit(api, {**BODY, "steps": 6, "seed": 12}).json()
    events: list[tuple[str, dict[str, Any]]] = []
    read_events(api, job["id"], events)
    names = [name for name, _ in events]
    assert names[-1] == "completed"
    steps = [data["step"] for name, data in events if name == "progress"]
    # The stream may open after the first steps: it starts with the state then, and misses no later step.
    assert steps == list(range(steps[0], 7)) if steps else names[0] == "completed"
    assert all(data["total"] == 6 for name, data in events if name == "progress")
    assert events[-1][1]["job"]["status"] == "succeeded"


def watched_from_the_start(
    submit_to: ServiceProcess, stream_from: ServiceProcess, gate: WorkerGate, body: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """A job held at the worker's gate while its stream opens, then let go: the job and every event."""
    with gate.closed():
        job = submit(submit_to, body).json()
        gate.wait_parked(1)
        events: list[tuple[str, dict[str, Any]]] = []
        reader = threading.Thread(target=read_events, args=(stream_from, job["id"], events))
        reader.start()
        wait_until(lambda: len(events) >= 1, what="the stream's first event")
    reader.join(60)
    return job, events


def test_events_of_a_job_watched_from_submission(api: ServiceProcess, gate: WorkerGate) -> None:
    _, events = watched_from_the_start(api, api, gate, {**BODY, "steps": 5, "seed": 13})
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "completed"
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2, 3, 4, 5]


def test_partial_images_ride_on_the_progress_events(api: ServiceProcess, gate: WorkerGate) -> None:
    _, events = watched_from_the_start(api, api, gate, {**BODY, "steps": 6, "seed": 14, "partial_images": 2})
    progress = [data for name, data in events if name == "progress"]
    # Every step once, and after steps 2 and 4 the image as far as it got (a PNG of the asked size).
    assert [d["step"] for d in progress if "partial_image" not in d] == [1, 2, 3, 4, 5, 6]
    partials = [d for d in progress if "partial_image" in d]
    assert [(d["step"], d["total"]) for d in partials] == [(2, 6), (4, 6)]
    for d in partials:
        image = Image.open(io.BytesIO(base64.b64decode(d["partial_image"])))
        assert image.format == "PNG" and image.size == (64, 64)
    final = events[-1][1]["job"]["result"]["image_base64"]
    assert final not in {d["partial_image"] for d in partials}


def test_cancel_a_queued_job_and_a_running_one(api: ServiceProcess, gate: WorkerGate) -> None:
    with gate.closed():
        running = submit(api, {**BODY, "seed": 21}).json()
        gate.wait_parked(1)
        queued = submit(api, {**BODY, "seed": 22}).json()
        third = submit(api, {**BODY, "seed": 23}).json()
        assert get(api, queued["id"]).json()["status"] == "queued"
        assert get(api, third["id"]).json()["position"] == 1
        canceled = httpx.post(f"{api.url}/v1/jobs/{queued['id']}/cancel", headers=A, timeout=30)
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        # It left the queue: the job behind it moved up.
        assert get(api, third["id"]).json()["position"] == 0
        stopped = httpx.post(f"{api.url}/v1/jobs/{running['id']}/cancel", headers=A, timeout=30)
        assert stopped.status_code == 200 and stopped.json()["status"] == "canceled"
    assert finished(api, third["id"])["status"] == "succeeded"
    assert get(api, queued["id"]).json()["status"] == "canceled"
    assert get(api, running["id"]).json()["status"] == "canceled"
    # Cancelling a finished job changes nothing.
    again = httpx.post(f"{api.url}/v1/jobs/{third['id']}/cancel", headers=A, timeout=30)
    assert again.json()["status"] == "succeeded"


def test_a_job_is_its_keys_own(api: ServiceProcess) -> None:
    job = submit(api, {**BODY, "seed": 31}).json()
    for path in ("", "/events"):
        resp = httpx.get(f"{api.url}/v1/jobs/{job['id']}{path}", headers=B, timeout=30)
        assert resp.status_code == 404 and resp.json()["code"] == "job_not_found"
    assert httpx.post(f"{api.url}/v1/jobs/{job['id']}/cancel", headers=B, timeout=30).status_code == 404
    assert httpx.get(f"{api.url}/v1/jobs/{job['id']}", timeout=30).status_code == 401
    assert httpx.get(f"{api.url}/v1/jobs/job_{'0' * 24}", headers=A, timeout=30).status_code == 404
    assert httpx.get(f"{api.url}/v1/jobs/not-a-job", headers=A, timeout=30).status_code == 422
    assert finished(api, job["id"])["status"] == "succeeded"


def test_idempotency_key_same_body_same_job_other_body_409(api: ServiceProcess) -> None:
    first = submit(api, {**BODY, "seed": 41}, **{"Idempotency-Key": "order-41"})
    again = submit(api, {**BODY, "seed": 41}, **{"Idempotency-Key": "order-41"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = submit(api, {**BODY, "seed": 42}, **{"Idempotency-Key": "order-41"})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    # Keys are per API key: the other key's same Idempotency-Key is its own job.
    mine = httpx.post(
        api.url + PRIVATE,
        json={**BODY, "seed": 41},
        headers={**B, "Prefer": "respond-async", "Idempotency-Key": "order-41"},
    )
    assert mine.status_code == 202 and mine.json()["id"] != first.json()["id"]
    # A synchronous replay of a finished idempotent job answers its stored result without running it again.
    done = finished(api, first.json()["id"])
    sync = httpx.post(
        api.url + PRIVATE, json={**BODY, "seed": 41}, headers={**A, "Idempotency-Key": "order-41"}, timeout=60
    )
    assert sync.status_code == 200 and sync.json()["image_base64"] == done["result"]["image_base64"]
    bad = submit(api, {**BODY, "seed": 43}, **{"Idempotency-Key": "x" * 256})
    assert bad.status_code == 422


def test_synchronous_client_that_disconnects_cancels_its_job(api: ServiceProcess, gate: WorkerGate) -> None:
    def canceled_jobs() -> float:
        text = httpx.get(api.url + "/metrics", headers=A).text
        prefix = 'imgpod_jobs_total{route="private",status="canceled"}'
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))

    before = canceled_jobs()
    with gate.closed():
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                api.url + PRIVATE, json={**BODY, "seed": 51}, headers=A, timeout=httpx.Timeout(30, read=1.5)
            )
        wait_until(lambda: canceled_jobs() == before + 1, what="the abandoned job canceled")


def test_outputs_expire(worker: ServiceProcess) -> None:
    env = interface_env(worker, INTERFACE_JOBS_OUTPUT_TTL_S="1", INTERFACE_JOBS_SWEEP_INTERVAL_S="0.2")
    with ServiceProcess("services.interface.main", env=env) as api:
        job = submit(api, {**BODY, "seed": 61}).json()
        assert finished(api, job["id"])["status"] == "succeeded"
        wait_until(lambda: get(api, job["id"]).json()["status"] == "expired", what="the job expired")
        assert "result" not in get(api, job["id"]).json()


def test_restart_with_ten_queued_jobs_finishes_all_ten(
    worker: ServiceProcess, gate: WorkerGate, tmp_path: Path
) -> None:
    env = interface_env(worker, INTERFACE_JOBS_SQLITE_PATH=str(tmp_path / "jobs.sqlite3"))
    with gate.closed():
        first = ServiceProcess("services.interface.main", env=env).start()
        try:
            ids = [submit(first, {**BODY, "seed": 70 + i}).json()["id"] for i in range(10)]
            gate.wait_parked(1)
            # A second interface on the same file would run these twice: it refuses to start.
            second = ServiceProcess("services.interface.main", env=env, wait_healthy=False).start()
            wait_until(lambda: second.proc is not None and second.proc.poll() is not None, what="refused")
            assert "another interface holds the jobs file" in second.logs()
        finally:
            first.kill()
    with ServiceProcess("services.interface.main", env=env) as restarted:
        jobs = [finished(restarted, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 10
    assert sorted(job["result"]["seed"] for job in jobs) == list(range(70, 80))


def test_submit_while_the_queue_is_full_is_429_with_retry_after(
    worker: ServiceProcess, gate: WorkerGate
) -> None:
    env = interface_env(worker, INTERFACE_QUEUE_CAPACITY="2")
    retry_key = {"Idempotency-Key": "later"}
    with ServiceProcess("services.interface.main", env=env) as api:
        with gate.closed():
            accepted = [submit(api, {**BODY, "seed": 90 + i}) for i in range(3)]
            assert [r.status_code for r in accepted] == [202, 202, 202]
            gate.wait_parked(1)
            refused = submit(api, {**BODY, "seed": 99})
            assert refused.status_code == 429 and float(refused.headers["Retry-After"]) >= 1
            assert submit(api, {**BODY, "seed": 98}, **retry_key).status_code == 429
        for job in accepted:
            assert finished(api, job.json()["id"])["status"] == "succeeded"
        # The refused request left no job behind: the same Idempotency-Key is a new job once there is room.
        later = submit(api, {**BODY, "seed": 98}, **retry_key)
        assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers


WEBHOOK_SECRET = "jobs-test-webhook-secret-0123456789"


def test_webhook_gets_signed_start_progress_and_completed(worker: ServiceProcess) -> None:
    rx = Receiver()
    rx.start()
    env = interface_env(
        worker,
        INTERFACE_JOBS_WEBHOOK_SECRET=WEBHOOK_SECRET,
        # The test's receiver is on loopback, which the default refuses (no SSRF): allowed here by name.
        INTERFACE_JOBS_WEBHOOK_ALLOW="127.0.0.1",
    )
    try:
        with ServiceProcess("services.interface.main", env=env) as api:
            body = {**BODY, "seed": 81, "steps": 3, "webhook": rx.hook("job")}
            job = submit(api, body).json()
            assert finished(api, job["id"])["status"] == "succeeded"
            wait_until(lambda: any(h.json()["type"] == "completed" for h in rx.hits("job")), what="completed")
            hits = rx.hits("job")
            assert all(verify_webhook(WEBHOOK_SECRET.encode(), h.headers, h.body) for h in hits)
            kinds = [h.json()["type"] for h in hits]
            assert (
                kinds[0] == "start"
                and kinds[-1] == "completed"
                and set(kinds) <= {"start", "progress", "completed"}
            )
            done = hits[-1].json()
            assert done["id"] == job["id"] and done["status"] == "succeeded"
            assert done["job"]["result"]["seed"] == 81
            # Only completed, when the filter says so; and loopback refused where not allowed.
            only = submit(
                api, {**body, "seed": 82, "webhook": rx.hook("only"), "webhook_events_filter": ["completed"]}
            )
            assert finished(api, only.json()["id"])["status"] == "succeeded"
            wait_until(lambda: len(rx.hits("only")) == 1, what="one delivery")
            assert rx.hits("only")[0].json()["type"] == "completed"
            private = submit(api, {**body, "webhook": "https://10.0.0.5/hook"})
            assert private.status_code == 422 and private.json()["detail"].startswith("webhook")
    finally:
        rx.stop()


def test_webhooks_are_refused_when_the_deployment_has_no_secret(api: ServiceProcess) -> None:
    resp = submit(api, {**BODY, "webhook": "https://hooks.example.com/x"})
    assert resp.status_code == 422 and "webhook" in resp.json()["detail"]
