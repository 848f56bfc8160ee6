"""Resident memory of a service under a burst of cheap-to-send, costly-to-decode uploads.

The upload is a single-colour PNG (6300x6300 by default): about 130 KB on the wire, 40 megapixels once
decoded (~160 MB as Pillow's RGB). N copies are posted at once; the server's VmRSS is read from
``/proc/<pid>/status`` every 20 ms. Printed: RSS before the burst, its peak, RSS 2 s after the last answer,
and the answers by status.

``--target selfie`` posts to the selfie worker (tiny Qwen2-VL, nudenet detector) at /v1/profile/analyze.
``--target interface`` posts to the interface's /v1/profile/create with that selfie worker and the profile
image worker (tiny Z-Image, 64x64) behind it: the whole flow, but what is measured is the interface's own
cost of an upload (a check of it, and forwarding it).

``--env KEY=VAL`` (repeatable) goes to the measured service, e.g. allocator variants:
``MALLOC_ARENA_MAX=2``, ``MALLOC_MMAP_THRESHOLD_=1048576``, ``MALLOC_TRIM_THRESHOLD_=...``, or
``SELFIE_MAX_CONCURRENT=16 SELFIE_QUEUE_LIMIT=16`` (with ``--target interface`` a ``SELFIE_`` variable goes to
the selfie worker, anything else to the interface). Without any, the allocator is what the launcher sets
(``shared/serve.py``: ``EDGE_MALLOC_ARENA_MAX``, ``EDGE_MALLOC_MMAP_THRESHOLD``); ``=0`` leaves glibc's own
default.

    python -m bench.bench_upload_memory [--target selfie|interface] [--n 16] [--side 6300] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from bench.common import print_table, tiny_model_dir
from bench.stack import worker_env
from devtools import stack_env
from devtools.service_process import ServiceProcess

TOKEN = "bench-upload-memory-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAMPLE_EVERY_S = 0.02
SETTLE_S = 2.0


def single_colour_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 80)).save(buf, format="PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Reads one process's RSS every 20 ms in a thread; ``peak`` is the largest value seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def burst(url: str, payload: bytes, n: int) -> collections.Counter[str]:
    async def one(http: httpx.AsyncClient) -> str:
        try:
            resp = await http.post(url, files={"file": ("flat.png", payload, "image/png")}, headers=AUTH)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return str(resp.status_code)

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        return collections.Counter(await asyncio.gather(*(one(http) for _ in range(n))))


def split_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VAL, got {pair!r}")
        env[key] = value
    return env


@contextlib.contextmanager
def started(target: str, extra: dict[str, str], log_dir: Path) -> Iterator[tuple[ServiceProcess, str]]:
    """The measured process and the URL to post to."""
    models = {"qwen_vl": tiny_model_dir("qwen_vl")}
    quiet = {"SELFIE_LOG_LEVEL": "warning"}
    if target == "selfie":
        env = stack_env.selfie_env(models, TOKEN, log_dir, **quiet, **extra)
        with ServiceProcess("services.selfie_feature_worker.main", env=env, log_dir=log_dir) as svc:
            yield svc, f"{svc.url}/v1/profile/analyze"
        return
    selfie_extra = {k: v for k, v in extra.items() if k.startswith("SELFIE_")}
    api_extra = {k: v for k, v in extra.items() if not k.startswith("SELFIE_")}
    # The interface's selfie pool sends at most selfie_concurrency calls; the rest wait in the interface.
    selfie_env = stack_env.selfie_env(models, TOKEN, log_dir, **quiet, **selfie_extra)
    profile_env = worker_env(tiny_model_dir("zimage"), IMAGE_INTERNAL_TOKEN=TOKEN)
    with (
        ServiceProcess("services.selfie_feature_worker.main", env=selfie_env, log_dir=log_dir) as selfie,
        ServiceProcess("services.profile_worker.main", env=profile_env, log_dir=log_dir) as profile,
    ):
        env = {
            "INTERFACE_INTERNAL_TOKEN": TOKEN,
            "INTERFACE_SELFIE_FEATURE_WORKER_URLS": selfie.url,
            "INTERFACE_PROFILE_WORKER_URLS": profile.url,
            "INTERFACE_LOG_LEVEL": "warning",
            **api_extra,
        }
        with ServiceProcess("services.interface.main", env=env, log_dir=log_dir) as api:
            yield api, f"{api.url}/v1/profile/create"


@dataclass(frozen=True)
class BurstResult:
    baseline_mb: float
    peak_mb: float
    after_mb: float
    seconds: float
    statuses: dict[str, int]
    upload_bytes: int


def measure(target: str, n: int = 16, side: int = 6300, extra: dict[str, str] | None = None) -> BurstResult:
    """Start the target service, post ``n`` single-colour PNGs of ``side`` at once, read its RSS meanwhile."""
    payload = single_colour_png(side)
    with (
        tempfile.TemporaryDirectory(prefix="imgpod-upload-mem-") as tmp,
        started(target, extra or {}, Path(tmp)) as (svc, url),
    ):
        assert svc.proc is not None
        pid = svc.proc.pid
        time.sleep(1.0)  # let the model load's last allocations settle
        baseline = rss_mb(pid)
        with RssSampler(pid) as sampler:
            started_at = time.perf_counter()
            statuses = asyncio.run(burst(url, payload, n))
            seconds = time.perf_counter() - started_at
            time.sleep(SETTLE_S)
        after = rss_mb(pid)
    return BurstResult(baseline, sampler.peak, after, seconds, dict(statuses), len(payload))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=("selfie", "interface"), default="selfie")
    parser.add_argument("--n", type=int, default=16, help="uploads posted at once")
    parser.add_argument("--side", type=int, default=6300, help="side of the single-colour PNG")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="for the service")
    args = parser.parse_args(argv)

    r = measure(args.target, args.n, args.side, split_env(args.env))
    env_text = " ".join(args.env) or "(none)"
    print(
        f"target={args.target} n={args.n} upload={args.side}x{args.side} single-colour PNG "
        f"({r.upload_bytes / 1024:.0f} KB) env={env_text}"
    )
    print_table(
        "resident memory (MB) of the measured service",
        ("baseline_mb", "peak_mb", "after_2s_mb", "peak_minus_base_mb", "burst_s", "statuses"),
        [
            (
                round(r.baseline_mb, 1),
                round(r.peak_mb, 1),
                round(r.after_mb, 1),
                round(r.peak_mb - r.baseline_mb, 1),
                round(r.seconds, 2),
                " ".join(f"{k}x{v}" for k, v in sorted(r.statuses.items())),
            )
        ],
    )


if __name__ == "__main__":
    main()
