"""Per-stage wall-clock timings that the services return as ``timings_ms``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Two ways to record a stage: ``with timer.stage(name)`` around a block, or ``timer.lap(name)`` for the
    time since the previous lap (or the start), added up when a stage repeats (retries)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._mark = self._started
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - started) * 1000, 2)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round(self.ms.get(name, 0.0) + (now - self._mark) * 1000, 2)
        self._mark = now

    def done(self) -> dict[str, float]:
        self.ms["total"] = round((time.perf_counter() - self._started) * 1000, 2)
        return self.ms


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Milliseconds of the block into ``timings[stage]`` (a stage timed by hand, outside a StageTimer)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round((time.perf_counter() - started) * 1000, 2)
