"""A process-wide budget of decoded pixels: concurrent image decodes together hold at most its capacity.

Why pixels and not requests: an upload's cost is its decoded size, not its byte size. A 130 KB single-colour
PNG of 6300x6300 decodes to 40 megapixels (~160 MB in Pillow's 4-bytes-per-pixel RGB); sixteen of them
decoding at once is 2.5 GB, while sixteen phone selfies decoded at draft size are a few hundred MB. Bounding
the pixels decoded at once bounds the memory that decoding can take, whatever the mix.

Decodes run in worker threads, so the budget is a ``threading.Condition``, not an asyncio primitive. Waiters
are served in arrival order: a large decode is not starved by a stream of small ones that keep fitting.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.errors import Overloaded

log = logging.getLogger(__name__)

# A guess for Retry-After until a reservation has been timed: a 40-megapixel PNG decodes in about a second.
INITIAL_HOLD_S = 1.0
# Weight of the newest hold time in the running mean (as the selfie worker's admission does).
EWMA_WEIGHT = 0.2
# Giving memory back costs a pass over the heap; after small decodes there is little to give back.
DEFAULT_TRIM_AFTER_PX = 4_000_000


class DecodeBusy(Overloaded):
    """Waited past the timeout for room in the pixel budget: too many large images are decoding now.

    A 429 like every other "busy, retry later" answer: the interface already retries a worker's 429 on another
    worker once and passes its Retry-After on, while a worker's 503 means "not loaded or draining" to it.
    """


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_MALLOC_TRIM = _find_malloc_trim()


def trim_heap() -> bool:
    """Hand freed heap memory back to the OS; True when the C library could.

    glibc keeps freed blocks in its arenas (one per thread that allocated) for reuse, so after a burst of
    large decodes in worker threads the process's RSS stays near its peak although the images are gone.
    """
    if _MALLOC_TRIM is None:
        return False
    try:
        _MALLOC_TRIM(0)
    except Exception:  # never let housekeeping fail a request
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True


class PixelBudget:
    """At most ``capacity_px`` pixels reserved at once; a reservation larger than that is clamped to it, so it
    runs alone rather than never."""

    def __init__(
        self,
        capacity_px: int,
        *,
        timeout_s: float = 30.0,
        trim_after_px: int | None = DEFAULT_TRIM_AFTER_PX,
    ) -> None:
        if capacity_px < 1 or timeout_s <= 0:
            raise ValueError("capacity_px must be >= 1 and timeout_s > 0")
        self.capacity_px = capacity_px
        self.timeout_s = timeout_s
        # None: never trim (tests that measure the budget alone, or a non-glibc allocator tuned otherwise).
        self.trim_after_px = trim_after_px
        self.trims = 0
        self._in_use = 0
        self._waiters: collections.deque[object] = collections.deque()
        self._hold_s = INITIAL_HOLD_S
        self._cond = threading.Condition()

    @property
    def in_use_px(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def cost(self, px: int) -> int:
        """What a request of ``px`` pixels reserves: clamped to [0, capacity]."""
        return min(max(0, px), self.capacity_px)

    @contextmanager
    def reserve(self, px: int, timeout_s: float | None = None) -> Iterator[int]:
        """Hold ``px`` pixels (clamped) for the block; yield the amount held. ``DecodeBusy`` on timeout."""
        cost = self.cost(px)
        ticket = object()
        with self._cond:
            self._waiters.append(ticket)
            try:
                fits = self._cond.wait_for(
                    lambda: self._waiters[0] is ticket and self._in_use + cost <= self.capacity_px,
                    timeout=self.timeout_s if timeout_s is None else timeout_s,
                )
            finally:
                self._waiters.remove(ticket)
                # The head changed (taken or given up): the next waiter may fit now.
                self._cond.notify_all()
            if not fits:
                raise DecodeBusy(
                    "too many large images are being decoded; retry later",
                    retry_after_s=self._hold_s * (len(self._waiters) + 1),
                    stage="decode",
                )
            self._in_use += cost
        started = time.perf_counter()
        try:
            yield cost
        finally:
            with self._cond:
                self._in_use -= cost
                self._hold_s += EWMA_WEIGHT * (time.perf_counter() - started - self._hold_s)
                idle = self._in_use == 0
                self._cond.notify_all()
            # Outside the lock: trimming walks the heap and must not hold up the next decode's admission.
            if idle and self.trim_after_px is not None and cost >= self.trim_after_px and trim_heap():
                with self._cond:
                    self.trims += 1
