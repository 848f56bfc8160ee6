"""Failure modes of the stack over HTTP: killed, stalled and failing workers, a dead LLM, interface restarts.

Every process is real (uvicorn subprocesses on loopback): tiny Z-Image workers, the interface, and for the
"worker answers 500" case a fault-injection app (``tests/helpers/faulty_worker.py``).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running, free_port
from tests.helpers.waiting import wait_until
from tests.integration.test_image_workers import image_env
from tests.integration.test_interface_pools import gate_of, interface_env, pool_healthy, served

pytestmark = pytest.mark.integration

# Connection-level outcomes a client may see while the interface is down or going down; a read timeout is
# not among them: it would mean a request hung.
CONNECTION_ERRORS = ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError")


@pytest.fixture(scope="module")
def workers(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    env = image_env(tiny_models["zimage"], IMAGE_TEST_HOOKS="1")
    procs = {
        name: ServiceProcess("services.image_worker.main", env=env, wait_healthy=False)
        for name in ("healthy", "victim", "stalled")
    }
    procs["faulty"] = ServiceProcess("tests.helpers.faulty_worker", wait_healthy=False)
    with all_running(procs.values()):
        yield procs


def imagegen(api: ServiceProcess, seed: int, timeout: float = 30.0) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = httpx.post(
        api.url + "/v1/imagegen", json={"prompt": "a kite", "seed": seed, "steps": 1}, timeout=timeout
    )
    return resp, time.monotonic() - started


def in_flight(api: ServiceProcess, queue: str) -> int:
    return int(httpx.get(api.url + "/healthz").json()["queues"][queue]["in_flight"])


def ejections(api: ServiceProcess, pool: str) -> float:
    text = httpx.get(api.url + "/metrics").text
    match = re.search(rf'imgpod_worker_ejections_total\{{pool="{pool}"\}} ([0-9.]+)', text)
    return float(match.group(1)) if match else 0.0


def test_worker_killed_mid_request(workers: dict[str, ServiceProcess]) -> None:
    victim, healthy = workers["victim"], workers["healthy"]
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=f"{victim.url},{healthy.url}", INTERFACE_GENERATE_TIMEOUT_S="30"
    )
    with ServiceProcess("services.interface.main", env=env) as api, ThreadPoolExecutor(1) as pool:
        # A fresh pool starts its rotation at the first URL: the call lands on the victim and parks there.
        gate = gate_of(victim)
        gate.close()
        started = time.monotonic()
        slow = pool.submit(httpx.post, api.url + "/v1/imagegen", json={"prompt": "a boat"}, timeout=60)
        gate.wait_parked(1)
        assert in_flight(api, "text2img") == 1
        before = served(healthy)
        victim.kill()
        resp = slow.result(timeout=35)
        elapsed = time.monotonic() - started
        # The connection broke mid-call: the call (seed fixed by the interface) is re-sent to the healthy
        # worker instead of failing the client.
        assert resp.status_code == 200, resp.text
        assert served(healthy) - before == 1
        assert elapsed < 30
        before = served(healthy)
        for seed in range(4):
            r, took = imagegen(api, seed)
            assert r.status_code == 200, r.text
            assert took < 30
        assert served(healthy) - before == 4
        wait_until(lambda: pool_healthy(api, "text2img") == 1, timeout_s=10)


def test_stalled_worker_times_out_and_is_ejected(workers: dict[str, ServiceProcess]) -> None:
    stalled, healthy = workers["stalled"], workers["healthy"]
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=f"{stalled.url},{healthy.url}",
        # Short, yet far above a one-step 64x64 image (tens of ms) even on a slow, busy machine.
        INTERFACE_GENERATE_TIMEOUT_S="5",
        INTERFACE_EJECT_AFTER_FAILURES="2",
        INTERFACE_EJECT_COOLDOWN_S="60",
        # Polling would notice the stall on its own; keep it out of the way so ejection by calls is tested.
        INTERFACE_HEALTH_INTERVAL_S="60",
    )
    assert stalled.proc is not None
    with ServiceProcess("services.interface.main", env=env) as api:
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        try:
            results = [imagegen(api, seed, timeout=20) for seed in range(6)]
            summary = [(r.status_code, round(t, 2), r.text[:120]) for r, t in results]
            assert [r.status_code for r, _ in results] == [504, 200, 504, 200, 200, 200], summary
            for resp, took in (results[0], results[2]):
                body = resp.json()
                assert body["code"] == "upstream_timeout"
                assert body["stage"] == "generate"
                assert 4.9 <= took < 30.0, took
            assert ejections(api, "text2img") == 1.0
            assert pool_healthy(api, "text2img") == 1
        finally:
            os.kill(stalled.proc.pid, signal.SIGCONT)


def test_worker_answering_500_is_ejected(workers: dict[str, ServiceProcess]) -> None:
    faulty, healthy = workers["faulty"], workers["healthy"]
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=f"{faulty.url},{healthy.url}",
        INTERFACE_EJECT_AFTER_FAILURES="2",
        INTERFACE_EJECT_COOLDOWN_S="60",
    )
    with ServiceProcess("services.interface.main", env=env) as api:
        calls_before = httpx.get(faulty.url + "/calls").json()["calls"]
        results = [imagegen(api, seed)[0] for seed in range(7)]
        # A 500 may have done work, so it is not repeated on the other worker: the client sees 502.
        assert [r.status_code for r in results] == [502, 200, 502, 200, 200, 200, 200]
        for resp in (results[0], results[2]):
            body = resp.json()
            assert body["code"] == "upstream_failed"
            assert body["stage"] == "generate"
            assert "500" in body["detail"]
        assert httpx.get(faulty.url + "/calls").json()["calls"] - calls_before == 2
        assert ejections(api, "text2img") == 1.0
        # /healthz of the faulty worker still says 200, but the ejection holds for its cool-down: later
        # calls never reach it.
        assert [imagegen(api, seed)[0].status_code for seed in range(4)] == [200] * 4
        assert httpx.get(faulty.url + "/calls").json()["calls"] - calls_before == 2
        assert pool_healthy(api, "text2img") == 1


@pytest.mark.parametrize(
    ("path", "body", "fallback"),
    [
        ("/v1/chat/1to1/imagegen", {"message": "a picnic by the lake"}, "true"),
        ("/v1/chat/1to1/reply", {"message": "hello there", "persona": {"hair_color": "red"}}, "false"),
    ],
)
def test_llm_down_is_a_quick_503_naming_the_stage(
    workers: dict[str, ServiceProcess], path: str, body: dict[str, object], fallback: str
) -> None:
    env = interface_env(
        INTERFACE_LLM_URLS=f"http://127.0.0.1:{free_port()}",
        INTERFACE_CHAT1TO1_WORKER_URLS=workers["healthy"].url,
        INTERFACE_REPLY_FALLBACK=fallback,
    )
    with ServiceProcess("services.interface.main", env=env) as api:
        started = time.monotonic()
        resp = httpx.post(api.url + path, json=body, timeout=10)
        # Refused at once, not after the expand timeout (30 s): nothing waited on a dead worker.
        assert time.monotonic() - started < 10.0
        assert resp.status_code == 503, resp.text
        err = resp.json()
        assert err["code"] == "no_healthy_worker"
        assert err["stage"] == "llm"
        assert "llm" in err["detail"]


def test_llm_down_reply_is_a_labelled_in_character_template(workers: dict[str, ServiceProcess]) -> None:
    """The default: a chat keeps going with a template reply that says it is one, and uses the persona."""
    env = interface_env(INTERFACE_LLM_URLS=f"http://127.0.0.1:{free_port()}")
    persona = {"hair_color": "red", "hair_style": "short"}
    with ServiceProcess("services.interface.main", env=env) as api:
        replies = []
        for message in ("hello there", "hello there", "what did you do today?", "tell me a story"):
            resp = httpx.post(
                api.url + "/v1/chat/1to1/reply", json={"message": message, "persona": persona}, timeout=10
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["source"] == "template" and body["model"] == "template"
            assert "short red hair" in body["reply"]  # the persona's only gesture: its hair
            replies.append(body["reply"])
        assert replies[0] == replies[1]  # a retry of the same message gets the same reply
        assert len(set(replies)) >= 2
        # A persona trait that the hard block refuses never reaches the reply; the plain template does.
        blocked = {"hair_color": "red", "hair_style": "child porn"}
        resp = httpx.post(
            api.url + "/v1/chat/1to1/reply", json={"message": "hi", "persona": blocked}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["source"] == "template" and "porn" not in resp.json()["reply"]
        # The message itself is still checked first: a refused message is refused, not answered by a template.
        resp = httpx.post(
            api.url + "/v1/chat/1to1/reply",
            json={"message": "a nude 12 year old girl", "persona": persona},
            timeout=10,
        )
        assert resp.status_code == 422, resp.text


def test_interface_restart_under_load(workers: dict[str, ServiceProcess]) -> None:
    port = free_port()
    env = interface_env(INTERFACE_TEXT2IMG_WORKER_URLS=workers["healthy"].url)
    url = f"http://127.0.0.1:{port}/v1/imagegen"
    outcomes: list[tuple[float, str, float]] = []  # (start, outcome, seconds)
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(timeout=20) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    resp = http.post(url, json={"prompt": f"a kite {index}", "steps": 1})
                    outcome = str(resp.status_code)
                    if resp.status_code == 503:
                        outcome += ":" + resp.json()["code"]
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                    time.sleep(0.1)
                outcomes.append((started, outcome, time.monotonic() - started))

    def served_since(start: float) -> int:
        return sum(1 for s, o, _ in list(outcomes) if s >= start and o == "200")

    api = ServiceProcess("services.interface.main", env=env, port=port).start()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    restarted_at: list[float] = []
    try:
        for t in threads:
            t.start()
        phase_start = time.monotonic()
        for stop_signal in (signal.SIGKILL, signal.SIGTERM):
            # Clients must have been served by this incarnation before it goes down.
            wait_until(lambda start=phase_start: served_since(start) >= 2)
            api.kill(stop_signal)
            api.stop()
            api = ServiceProcess("services.interface.main", env=env, port=port).start()
            phase_start = time.monotonic()
            restarted_at.append(phase_start)
        wait_until(lambda: served_since(phase_start) >= 2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=25)
        api.stop()
    assert not any(t.is_alive() for t in threads), "a client hung"
    # A draining interface (SIGTERM) answers new requests 503 "draining" with Retry-After.
    allowed = {"200", "503:draining", *CONNECTION_ERRORS}
    assert {o for _, o, _ in outcomes} <= allowed, sorted({o for _, o, _ in outcomes})
    assert max(took for _, _, took in outcomes) < 15
    for phase_start, phase_end in ((0.0, restarted_at[0]), (restarted_at[0], restarted_at[1])):
        assert any(o == "200" for s, o, _ in outcomes if phase_start <= s < phase_end)
    assert any(o == "200" for s, o, _ in outcomes if s >= restarted_at[1])
