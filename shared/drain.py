"""Graceful drain on SIGTERM: finish what was accepted, refuse the rest politely, then exit.

Why not uvicorn's own shutdown: on SIGTERM uvicorn closes its listening socket at once, so a proxy in front
of the pod sees "connection refused" (and answers its client 502), and it cancels requests still running
after ``--timeout-graceful-shutdown``, while an image generation may legitimately take minutes.

So SIGTERM first puts the service into *draining*: ``/healthz`` answers 503 at once (readiness drops, load
balancers and the interface's pools stop sending), every new request gets 503 with ``Retry-After`` and
``Connection: close``, and the requests already accepted run to completion. When none is left, or the drain
timeout has passed, uvicorn's own handler is called and the process exits as usual. SIGINT (Ctrl-C) keeps
uvicorn's immediate behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class Drainer:
    def __init__(self, timeout_s: float, retry_after_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    def start(self, then: Callable[[], None]) -> None:
        """Begin draining (idempotent); ``then`` runs once nothing is in flight or the timeout passed."""
        if self.draining:
            return
        self.draining = True
        log.warning("draining", extra={"in_flight": self.in_flight, "timeout_s": self.timeout_s})
        self._task = asyncio.get_running_loop().create_task(self._finish(then), name="drain")

    async def _finish(self, then: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), self.timeout_s)
        except TimeoutError:
            log.error("drain timeout passed with requests in flight", extra={"in_flight": self.in_flight})
        log.info("drained", extra={"s": round(time.monotonic() - started, 2)})
        then()

    def install_sigterm(self) -> Callable[[], None]:
        """Take SIGTERM over from the server (uvicorn) while the app runs; returns the undo function."""
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def call_previous() -> None:
            if callable(previous):
                previous(signal.SIGTERM, None)
            else:
                # No server handler to hand over to (e.g. an in-process test client): exit the default way.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

        def on_sigterm(_sig: int, _frame: FrameType | None) -> Any:
            loop.call_soon_threadsafe(self.start, call_previous)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            # Not the main thread (an embedded server): there is no signal to take over.
            return lambda: None

        def undo() -> None:
            with contextlib.suppress(ValueError):
                if signal.getsignal(signal.SIGTERM) is on_sigterm:
                    signal.signal(signal.SIGTERM, previous)

        return undo
