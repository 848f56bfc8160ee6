"""What the soak watches besides its own requests: /healthz latency, /metrics counters and peaks, RSS, CPU.

Each reads the running stack (``bench/soak_stack.py``) from outside, as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.soak_stack import API_KEY, WORKER_AUTH, SoakStack

OPS_ROUTES = frozenset({"/healthz", "/metrics"})


@dataclass(slots=True)
class Probe:
    service: str
    at: float  # time.monotonic()
    ms: float
    status: int | None


class HealthPoller:
    """A thread that GETs /healthz of every live service in turn, ``rate_hz`` rounds a second.

    A thread of its own with a blocking client, so a busy load-generator event loop does not inflate what it
    measures; a probe that times out counts with the full timeout as its latency.
    """

    def __init__(self, stack: SoakStack, rate_hz: float = 4.0, timeout_s: float = 2.0) -> None:
        self.stack = stack
        self.period = 1.0 / rate_hz
        self.timeout_s = timeout_s
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-health", daemon=True)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s * 12 + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s, trust_env=False) as http:
            while not self._stop.is_set():
                round_started = time.monotonic()
                for name in list(self.stack.procs):
                    if self._stop.is_set() or not self.stack.alive(name):
                        continue
                    url = self.stack.procs[name].url + "/healthz"
                    started = time.perf_counter()
                    try:
                        status: int | None = http.get(url).status_code
                    except httpx.HTTPError:
                        status = None
                    ms = (time.perf_counter() - started) * 1000
                    # A kill can land between alive() and the GET: that probe is about the kill, not health.
                    if status is None and not self.stack.alive(name):
                        continue
                    self.probes.append(Probe(name, time.monotonic(), ms, status))
                self._stop.wait(max(0.0, self.period - (time.monotonic() - round_started)))

    def window(self, since: float, until: float) -> list[Probe]:
        return [p for p in list(self.probes) if since <= p.at <= until]


Sample = tuple[str, dict[str, str], float]


def scrape(url: str, headers: dict[str, str], timeout_s: float = 5.0) -> list[Sample] | None:
    """Every sample of a service's /metrics, or None when it could not be read."""
    try:
        resp = httpx.get(url + "/metrics", headers=headers, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    ]


def sample(samples: list[Sample] | None, name: str, **labels: str) -> float | None:
    if samples is None:
        return None
    values = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    return sum(values) if values else None


def served_by_interface(stack: SoakStack) -> int | None:
    """Responses the interface counted on every route but its health and metrics routes."""
    samples = scrape(stack.interface.url, {"X-API-Key": API_KEY})
    if samples is None:
        return None
    return int(
        sum(
            v
            for n, lab, v in samples
            if n == "imgpod_http_requests_total" and lab.get("route") not in OPS_ROUTES
        )
    )


def interface_counters(stack: SoakStack) -> dict[str, float]:
    """Refusals per queue and reason, ejections and retries per pool: the evidence behind a table."""
    samples = scrape(stack.interface.url, {"X-API-Key": API_KEY}) or []
    out: dict[str, float] = {}
    for name, labels, value in samples:
        if name == "imgpod_queue_rejected_total":
            out[f"rejected {labels.get('queue')}/{labels.get('reason')}"] = value
        elif name in ("imgpod_worker_ejections_total", "imgpod_worker_retries_total"):
            kind = "ejections" if "ejections" in name else "retries"
            out[f"{kind} {labels.get('pool')}"] = value
    return out


@dataclass(slots=True)
class Peak:
    peak: float | None  # None: the gauge is absent (not measurable)
    limit: int
    basis: str


def peak_limits(stack: SoakStack) -> dict[str, tuple[int, str]]:
    """What the interface may send each worker at once: advertised x max_batch, bounded per pool kind."""
    cfg = stack.cfg
    limits: dict[str, tuple[int, str]] = {}
    for name, proc in stack.workers.items():
        try:
            body = httpx.get(proc.url + "/healthz", timeout=5, trust_env=False).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        advertised = None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            advertised = int(body["concurrency"]) * int(body.get("max_batch", 1))
        if name == "llm":
            bound, setting = cfg.llm_concurrency, "INTERFACE_LLM_CONCURRENCY"
        elif name == "selfie":
            bound, setting = cfg.selfie_concurrency, "INTERFACE_SELFIE_CONCURRENCY"
        else:
            bound, setting = cfg.per_worker_concurrency, "INTERFACE_PER_WORKER_CONCURRENCY"
        if advertised:
            limits[name] = (min(advertised, bound), f"min(advertised {advertised}, {setting} {bound})")
        else:
            limits[name] = (bound, f"{setting} {bound}")
    return limits


class PeakTracker:
    """The largest ``imgpod_http_in_flight_max`` seen per worker, across restarts of a worker."""

    def __init__(self, stack: SoakStack) -> None:
        self.stack = stack
        self.limits = peak_limits(stack)
        self.seen: dict[str, float | None] = dict.fromkeys(self.limits)

    def read(self, names: list[str] | None = None) -> None:
        for name in names or list(self.stack.workers):
            if not self.stack.alive(name):
                continue
            value = sample(scrape(self.stack.procs[name].url, WORKER_AUTH), "imgpod_http_in_flight_max")
            if value is not None:
                prior = self.seen.get(name)
                self.seen[name] = value if prior is None else max(prior, value)

    def peaks(self) -> dict[str, Peak]:
        return {name: Peak(self.seen.get(name), *self.limits[name]) for name in self.limits}


def rss_of(stack: SoakStack) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in stack.procs:
        pid = stack.pid(name)
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                out[name] = psutil.Process(pid).memory_info().rss
    return out


def cpu_of(stack: SoakStack) -> dict[str, tuple[int, float]]:
    """(pid, CPU seconds) of every live service and of this harness: who had the cores during a level."""
    out: dict[str, tuple[int, float]] = {}
    pids = {name: stack.pid(name) for name in stack.procs} | {"harness": os.getpid()}
    for name, pid in pids.items():
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                out[name] = (pid, t.user + t.system)
    return out


def cpu_delta(start: dict[str, tuple[int, float]], end: dict[str, tuple[int, float]]) -> dict[str, float]:
    return {
        name: round(end[name][1] - cpu, 1)
        for name, (pid, cpu) in start.items()
        if name in end and end[name][0] == pid
    }
