"""What every bench shares: tiny-model location, percentiles, tables, JSON results, open-loop load."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


async def open_loop(
    call: Callable[[], Awaitable[int]], rate_per_s: float, count: int
) -> tuple[list[Outcome], float]:
    """Send ``count`` calls at a fixed rate whatever the answers (open loop); outcomes and wall time."""

    async def one(delay: float) -> Outcome:
        await asyncio.sleep(delay)
        started = time.perf_counter()
        try:
            status: int | None = await call()
            error = None
        except Exception as exc:
            status, error = None, type(exc).__name__
        return Outcome(started, time.perf_counter() - started, status, error)

    begin = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i / rate_per_s) for i in range(count)))
    return list(outcomes), time.perf_counter() - begin
