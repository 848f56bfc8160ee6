"""Wait for a state the test can observe, never for a guess of how long something takes.

The timeouts here only bound a hang: a condition that holds returns at once however slow the machine is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import httpx

# Long enough for a slow, loaded machine; a test that needs it has hung.
HANG_TIMEOUT_S = 60.0


def wait_until(predicate: Callable[[], Any], timeout_s: float = HANG_TIMEOUT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout_s:g} s: {what or predicate}")


def health_after_loading(url: str, timeout_s: float = HANG_TIMEOUT_S) -> dict[str, Any]:
    """A service's /healthz body once it has stopped loading (ok, or error)."""
    seen: dict[str, Any] = {}

    def settled() -> bool:
        seen.clear()
        seen.update(httpx.get(url + "/healthz", timeout=5).json())
        return seen["status"] != "loading"

    wait_until(settled, timeout_s, f"{url} finished loading")
    return seen


async def until(predicate: Callable[[], Any], timeout_s: float = HANG_TIMEOUT_S, what: str = "") -> None:
    """``wait_until`` for tests that run an event loop: yields to it between checks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not met in {timeout_s:g} s: {what or predicate}")


class WorkerGate:
    """Client of a worker's test gate (``shared/test_hooks.py``; the worker runs with ``*_TEST_HOOKS=1``)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def state(self) -> dict[str, Any]:
        resp = httpx.get(self.url + "/v1/test/gate", headers=self.headers, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        httpx.post(self.url + "/v1/test/gate/close", headers=self.headers, timeout=10).raise_for_status()

    def open(self) -> None:
        httpx.post(self.url + "/v1/test/gate/open", headers=self.headers, timeout=10).raise_for_status()

    def arrived(self) -> int:
        return int(self.state()["arrived"])

    def wait_parked(self, n: int, timeout_s: float = HANG_TIMEOUT_S) -> None:
        wait_until(lambda: self.state()["parked"] == n, timeout_s, f"{n} request(s) parked at {self.url}")

    @contextmanager
    def closed(self):  # type: ignore[no-untyped-def]
        """Closed inside the block, open again after it, also when the test fails (so nothing hangs)."""
        self.close()
        try:
            yield self
        finally:
            self.open()
