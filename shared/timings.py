"""Per-stage wall-clock timings that every flow returns as ``timings_ms``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - started) * 1000, 2)

    def done(self) -> dict[str, float]:
        self.ms["total"] = round((time.perf_counter() - self._started) * 1000, 2)
        return self.ms
