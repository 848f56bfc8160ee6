"""What every bench shares: tiny-model location, percentiles, tables, JSON results, open-loop load, CPU."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def tiny_model_dir(name: str = "zimage") -> Path:
    """The tiny checkpoint, built once by the project's builder (reused from IMG_POD_TINY_MODELS if set)."""
    from shared.tiny_models.build import build_all

    root = Path(os.environ.get("IMG_POD_TINY_MODELS", REPO_ROOT / ".local" / "tiny-models"))
    return build_all(root, only=[name])[name]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else float("nan"),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"\nresults: {path.relative_to(REPO_ROOT)}")
    return path


@dataclass(slots=True)
class Outcome:
    started: float
    seconds: float
    status: int | None  # None: transport error
    error: str | None = None
    # How late the call left against its schedule: the load generator's own delay. When its p99 is a sizeable
    # part of the latencies measured, the client, not the server, is the bottleneck of the run.
    lag: float = 0.0


async def open_loop(
    call: Callable[[], Awaitable[int]], rate_per_s: float, count: int
) -> tuple[list[Outcome], float]:
    """Send ``count`` calls at a fixed rate whatever the answers (open loop); outcomes and wall time.

    Each call's task is created at its send time, not all up front: starting thousands of tasks at once
    keeps the loop busy for tens of ms, and the answers that arrive meanwhile would be read late, which
    shows up as server latency. A late scheduler catches up by sending at once (``Outcome.lag``).
    """

    async def one(due: float) -> Outcome:
        started = time.perf_counter()
        try:
            status: int | None = await call()
            error = None
        except Exception as exc:
            status, error = None, type(exc).__name__
        return Outcome(started, time.perf_counter() - started, status, error, started - due)

    begin = time.perf_counter()
    tasks: list[asyncio.Task[Outcome]] = []
    for i in range(count):
        due = begin + i / rate_per_s
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due)))
    outcomes = await asyncio.gather(*tasks)
    return list(outcomes), time.perf_counter() - begin


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed: a cheaper load generator disturbs the servers less."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class CpuMeter:
    """CPU seconds (user + system) a process spent between ``start()`` and ``stop()``; psutil on its pid.

    With ``pid=None`` it counts the whole machine's busy CPU seconds, all cores together, so a bench can tell
    how much of the machine other work took while it measured.
    """

    def __init__(self, pid: int | None) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process(pid) if pid is not None else None
        self._begin = 0.0

    def _now(self) -> float:
        if self._proc is None:
            t = self._psutil.cpu_times()
            # Linux counts guest time inside user/nice already; steal (the host took the core) stays in: it
            # is time this machine could not use either.
            idle = sum(getattr(t, f, 0.0) for f in ("idle", "iowait", "guest", "guest_nice"))
            return sum(t) - idle
        p = self._proc.cpu_times()
        return p.user + p.system

    def start(self) -> None:
        self._begin = self._now()

    def stop(self) -> float:
        return self._now() - self._begin


class RawHttpClient:
    """A lean HTTP/1.1 keep-alive client for open-loop load: one fixed request, status codes back.

    httpx costs a few ms of CPU per call; at hundreds of calls per second on a small machine the load
    generator would then take the cores the servers under test need, and its own delays would show up as
    server latency. This sends pre-built bytes on pooled connections and reads answers framed by
    Content-Length (what uvicorn sends for JSON), so its cost is a small fraction of a ms.
    """

    def __init__(
        self, url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"plain http URLs only: {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        head = [
            f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self._request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: set[asyncio.StreamWriter] = set()

    async def call(self) -> int:
        if self._idle:
            reader, writer = self._idle.pop()
            try:
                return await self._exchange(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # A kept-alive connection the server closed as this request went out (its keep-alive
                # timer): nothing was answered, so the request is sent again on a new one, as HTTP
                # clients do. Any other failure, or a failure after an answer began, stays a failure.
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._all.add(writer)
        return await self._exchange(reader, writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        try:
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, keep = 0, True
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
                elif name == b"transfer-encoding":
                    raise ValueError("chunked answers are not supported by this load client")
            if length:
                await reader.readexactly(length)
        except BaseException:
            self._drop(writer)
            raise
        if keep:
            self._idle.append((reader, writer))
        else:
            self._drop(writer)
        return status

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._all.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in list(self._all):
            self._drop(writer)
        self._idle.clear()
