"""Connection bounds at the edge (shared/edge_protocol.py) against the running services, over raw sockets.

Slow clients here are real: they trickle bytes on their own sockets while normal requests go through. The
bounds are set short (``EDGE_*`` env vars, as in production) so a test waits seconds, not minutes. Timing
asserts are one-sided where the server's behaviour is deterministic: a connection cannot be closed by a
timeout before that timeout has passed; how much later it closes only bounds a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess
from tests.helpers.waiting import HANG_TIMEOUT_S, wait_until
from tests.integration.test_image_workers import AUTH, image_env
from tests.integration.test_interface_pools import interface_env

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2.0
BODY_IDLE_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 4.0
MAX_HEADER_BYTES = 16 * 1024
KEEP_ALIVE_S = 2
EDGE = {
    "EDGE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "EDGE_BODY_IDLE_TIMEOUT_S": str(BODY_IDLE_TIMEOUT_S),
    "EDGE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "EDGE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
}
POST_HEAD = (
    b"POST /v1/imagegen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
)
# Trickle pace: one byte well inside every timeout, so only the total (header or body) clock can fire.
TRICKLE_S = 0.25


@pytest.fixture(scope="module")
def worker(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    # A worker is a public-facing HTTP server too (its pod has a proxy URL): it gets the same bounds.
    with ServiceProcess("services.chat1to1_worker.main", env=image_env(tiny_models["zimage"], **EDGE)) as w:
        yield w


@pytest.fixture(scope="module")
def api(worker: ServiceProcess) -> Iterator[ServiceProcess]:
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=worker.url, EDGE_KEEP_ALIVE_S=str(KEEP_ALIVE_S), **EDGE
    )
    with ServiceProcess("services.interface.main", env=env) as svc:
        yield svc


def closed_count(svc: ServiceProcess, reason: str) -> float:
    # Workers demand the internal token on /metrics; the interface ignores it.
    text = httpx.get(svc.url + "/metrics", headers=AUTH).text
    match = re.search(r'imgpod_edge_closed_total\{reason="' + reason + r'"\} ([0-9.e+-]+)', text)
    return float(match.group(1)) if match else 0.0


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def trickle(port: int, head: bytes, tail: bytes) -> tuple[bytes, float]:
    """Send ``head`` at once, then ``tail`` one byte per TRICKLE_S; return what the server said and when it
    closed, in seconds after ``head`` was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def send() -> None:
        writer.write(head)
        for i in range(len(tail)):
            await asyncio.sleep(TRICKLE_S)
            writer.write(tail[i : i + 1])
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        data = await asyncio.wait_for(read_until_closed(reader), HANG_TIMEOUT_S)
        return data, time.monotonic() - started
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()


@pytest.mark.parametrize("target", ["api", "worker"])
def test_slow_headers_are_closed_while_normal_requests_are_served(
    target: str, request: pytest.FixtureRequest
) -> None:
    svc: ServiceProcess = request.getfixturevalue(target)
    before = closed_count(svc, "header_timeout")
    slow = 20

    async def scenario() -> tuple[list[tuple[bytes, float]], list[int]]:
        # Headers that would take minutes to complete at this pace.
        tails = [b"Host: x\r\nX-Slow: " + b"a" * 600 + b"\r\n\r\n"] * slow
        clients = [asyncio.create_task(trickle(svc.port, b"GET /healthz HTTP/1.1\r\n", t)) for t in tails]
        await asyncio.sleep(TRICKLE_S * 2)  # every slow client is connected and trickling
        statuses = []
        async with httpx.AsyncClient(base_url=svc.url) as client:
            for _ in range(20):
                statuses.append((await client.get("/healthz")).status_code)
        return await asyncio.gather(*clients), statuses

    results, statuses = asyncio.run(scenario())
    assert statuses == [200] * 20
    for data, elapsed in results:
        assert data.startswith(b"HTTP/1.1 408 "), data[:80]
        assert elapsed >= HEADER_TIMEOUT_S - 0.05
    assert closed_count(svc, "header_timeout") - before == slow


def test_a_body_that_stops_is_closed_after_the_idle_timeout(api: ServiceProcess) -> None:
    data, elapsed = asyncio.run(trickle(api.port, POST_HEAD + b'{"prompt": ', b""))
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]
    assert b'"code":"timeout"' in data
    assert elapsed >= BODY_IDLE_TIMEOUT_S - 0.05
    assert closed_count(api, "body_idle_timeout") >= 1


def test_a_trickled_body_is_closed_after_the_total_body_timeout(api: ServiceProcess) -> None:
    """Each byte arrives well within the idle timeout; only the total clock can end it."""
    before = closed_count(api, "body_timeout")
    data, elapsed = asyncio.run(trickle(api.port, POST_HEAD, b'{"prompt": "' + b"a" * 480 + b'"}'))
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]
    assert elapsed >= BODY_TIMEOUT_S - 0.05
    assert closed_count(api, "body_timeout") - before == 1
    # A body sent at once, of the same size, is served as usual.
    resp = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a kite " * 60, "steps": 1}, timeout=60)
    assert resp.status_code == 200, resp.text


def test_oversized_headers_get_431_at_once_or_trickled(api: ServiceProcess) -> None:
    before = closed_count(api, "header_size")
    # One header far over the limit, in one write: parsed sizes count, not reads.
    with socket.create_connection(("127.0.0.1", api.port), timeout=HANG_TIMEOUT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    # Many small headers in pieces: the partial header held in memory is what counts.
    with socket.create_connection(("127.0.0.1", api.port), timeout=HANG_TIMEOUT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        with contextlib.suppress(ConnectionError):
            for i in range(200):
                sock.sendall(f"X-H{i}: ".encode() + b"b" * 200 + b"\r\n")
        with contextlib.suppress(ConnectionError):
            answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert closed_count(api, "header_size") - before == 2
    # Headers under the limit, as a big-cookie browser sends them, are fine.
    resp = httpx.get(api.url + "/healthz", headers={"Cookie": "c=" + "x" * 8000})
    assert resp.status_code == 200


def test_an_idle_keep_alive_connection_is_closed(api: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=HANG_TIMEOUT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(65536)
        answered = time.monotonic()
        assert answer.startswith(b"HTTP/1.1 200 ")
        while sock.recv(65536):  # the rest of the body, then the server's close (b"")
            pass
        assert time.monotonic() - answered >= KEEP_ALIVE_S - 0.05


def test_connections_over_the_cap_get_503_and_the_service_recovers(worker: ServiceProcess) -> None:
    cap = 6
    env = interface_env(
        INTERFACE_TEXT2IMG_WORKER_URLS=worker.url, EDGE_MAX_CONNECTIONS=str(cap), EDGE_HEADER_TIMEOUT_S="60"
    )
    with ServiceProcess("services.interface.main", env=env) as svc:
        held = [socket.create_connection(("127.0.0.1", svc.port), timeout=HANG_TIMEOUT_S) for _ in range(cap)]
        try:
            with socket.create_connection(("127.0.0.1", svc.port), timeout=HANG_TIMEOUT_S) as extra:
                answer = extra.recv(4096)
                assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
                assert b"retry-after: 1" in answer.lower()
                assert extra.recv(4096) == b""  # and closed
        finally:
            for sock in held:
                sock.close()
        # Once the held connections are gone, a new client is served.
        wait_until(lambda: httpx.get(svc.url + "/healthz").status_code == 200, what="service serves again")
        assert closed_count(svc, "connections") >= 1
