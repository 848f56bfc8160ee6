"""Soak: mixed traffic over every public flow at multiples of the measured capacity, with a worker killed.

The whole local stack runs as real processes (``bench/soak_stack.py``: LLM, selfie worker, four role image
workers and two general image workers behind the interface's text2img pool). The harness

1. measures capacity: a closed loop of the good mix for a few seconds, successful requests per second;
   then warms up with a short unjudged burst at the top load level, so the RSS baseline already holds the
   most requests at once the run will see;
2. per load level (default 1x, 2x, 5x that capacity) drives an open loop (fixed arrival rate, whatever the
   answers) for a bounded time, SIGKILLs one of the two text2img workers part-way through, and starts it
   again before the next level. So that the kill cuts work off instead of landing while the worker happens
   to be idle, the victim runs with its test gate (``shared/test_hooks.py``, on that worker only): at
   ``kill_at`` the gate closes, and the worker dies as soon as a request it was sent is parked there;
3. checks and prints, per level, these invariants:

   - every request got exactly one response: an HTTP answer carrying its own request id, no transport
     error, nothing past the client's bound, and the interface counted as many answers as were sent;
   - only 200, declared 4xx (401, 413, 415, 422), 429, 503 and 504: never a 502 or a 500;
   - every 429 carries Retry-After, and 429s come back within 20 ms p99 (speed);
   - admitted (200) p99 within the interface's queue SLA (speed);
   - per-worker peak in flight (``imgpod_http_in_flight_max``) <= what the interface may send it: the
     worker's advertised ``concurrency`` x ``max_batch`` bounded by the interface's per-pool setting;
   - ``/healthz`` p99 of the interface and every worker < 50 ms, polled a few times a second (speed);
   - RSS of every service grows < 10 % from the end of the warm-up to the end of each level.

The mix also carries a few requests that must be refused with a declared 4xx (policy block, bad field,
wrong key, non-image upload), so those paths are under load too. Every loop is bounded in count and time,
and all traffic goes to loopback.

    python -m bench.soak [--seconds 30] [--loads 1,2,5] [--capacity-seconds 6] [--no-kill]

Speed invariants are printed and judged here, and only asserted by a benchmark run: the test suite's short
run (``tests/integration/test_soak.py``) asserts the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.common import percentile, print_table, write_results
from bench.soak_stack import (
    API_KEY,
    TEXT2IMG,
    VICTIM,
    WORKER_AUTH,
    SoakStack,
    StackConfig,
    soak_stack,
)

DECLARED_4XX = frozenset({401, 413, 415, 422})
ALLOWED = frozenset({200, 429, 503, 504}) | DECLARED_4XX
T429_P99_LIMIT_MS = 20.0
HEALTH_P99_LIMIT_MS = 50.0
RSS_GROWTH_LIMIT = 0.10
OPS_ROUTES = frozenset({"/healthz", "/metrics"})

PERSONA = {
    "hair_color": "auburn",
    "hair_style": "long wavy",
    "eye_color": "green",
    "skin_tone": "fair",
    "age_range": "25-35",
    "gender_presentation": "woman",
}
MESSAGES = (
    "send me a picture of you at the beach at sunset",
    "a photo of you reading in a park",
    "show me your morning coffee on the balcony",
    "a picture of you hiking in the mountains",
)
PROMPTS = ("a lighthouse on a cliff at dawn", "a cosy reading nook", "a violin on a chair", "a teapot")


# --- the mix ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """One kind of request in the mix: where it goes, how often, what it sends, what it should get."""

    name: str
    path: str
    weight: float
    # The kwargs of ``httpx.AsyncClient.post`` for the i-th request of this flow (json=, files=, data=).
    make: Callable[[int], dict[str, Any]]
    expect: int = 200
    api_key: str = API_KEY

    @property
    def good(self) -> bool:
        return self.expect == 200


def _selfie_jpeg() -> bytes:
    from tests.helpers.photos import astronaut, encode

    return encode(astronaut(), "JPEG")


def build_mix() -> list[Flow]:
    """Every public flow, weighted roughly as a chat product would see them, plus refusal probes."""
    jpeg = _selfie_jpeg()

    def chat(i: int) -> dict[str, Any]:
        return {"json": {"message": MESSAGES[i % len(MESSAGES)], "persona": PERSONA}}

    def image(i: int) -> dict[str, Any]:
        return {"json": {"prompt": PROMPTS[i % len(PROMPTS)], "width": 64, "height": 64, "steps": 2}}

    return [
        Flow(
            "profile", "/v1/profile/create", 1, lambda i: {"files": {"file": ("me.jpg", jpeg, "image/jpeg")}}
        ),
        Flow("chat1to1", "/v1/chat/1to1/imagegen", 2, chat),
        Flow("shorts", "/v1/chat/shorts/generate", 1, chat),
        Flow("scenes", "/v1/chat/scenes/generate", 1, chat),
        Flow("private", "/v1/chat/private/imagegen", 2, image),
        Flow("imagegen", "/v1/imagegen", 3, image),
        Flow(
            "reply",
            "/v1/chat/1to1/reply",
            2,
            lambda i: {"json": {"message": "how was your day?", "persona": PERSONA}},
        ),
        # Refusal probes: each must get its declared 4xx (or a 429 when refused before it is looked at).
        Flow(
            "bad_policy",
            "/v1/imagegen",
            0.25,
            lambda i: {"json": {"prompt": "sexy schoolgirl undressing"}},
            422,
        ),
        Flow(
            "bad_field",
            "/v1/chat/1to1/imagegen",
            0.25,
            lambda i: {"json": {"message": "hi", "width": 100}},
            422,
        ),
        Flow("bad_key", "/v1/chat/1to1/reply", 0.25, chat, 401, api_key="not-a-key"),
        Flow(
            "bad_upload",
            "/v1/profile/create",
            0.25,
            lambda i: {"files": {"file": ("x.jpg", b"not an image at all", "image/jpeg")}},
            415,
        ),
    ]


def schedule(mix: list[Flow], count: int, seed: int) -> list[Flow]:
    """The flow of each of ``count`` requests: drawn by weight, the same for the same seed."""
    rng = random.Random(seed)
    return rng.choices(mix, weights=[f.weight for f in mix], k=count)


# --- one request -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    flow: str
    request_id: str
    sent_s: float  # since the phase began
    latency_s: float
    status: int | None  # None: no HTTP answer (transport error, or past the client's bound)
    error: str | None = None
    retry_after: str | None = None
    code: str | None = None
    stage: str | None = None
    detail: str | None = None
    id_echoed: bool = False
    lag_s: float = 0.0  # how late it left against its schedule: the load generator's own delay


async def send(
    client: httpx.AsyncClient, base: str, flow: Flow, index: int, rid: str, t0: float, lag_s: float = 0.0
) -> Record:
    started = time.perf_counter()
    headers = {"X-API-Key": flow.api_key, "X-Request-ID": rid}
    try:
        resp = await client.post(base + flow.path, headers=headers, **flow.make(index))
    except httpx.HTTPError as exc:
        latency = time.perf_counter() - started
        return Record(flow.name, rid, started - t0, latency, None, type(exc).__name__, lag_s=lag_s)
    latency = time.perf_counter() - started
    rec = Record(
        flow.name,
        rid,
        started - t0,
        latency,
        resp.status_code,
        retry_after=resp.headers.get("retry-after"),
        id_echoed=resp.headers.get("x-request-id") == rid,
        lag_s=lag_s,
    )
    if resp.status_code != 200:
        with contextlib.suppress(ValueError):
            body = resp.json()
            if isinstance(body, dict):
                rec.code, rec.stage = body.get("code"), body.get("stage")
                rec.detail = str(body.get("detail", ""))[:90]
    return rec


def make_client(timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=5.0),
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256),
        trust_env=False,
    )


# --- observers: health polls, metrics, RSS ---------------------------------------------------------------


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


# --- load ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SoakConfig:
    loads: tuple[float, ...] = (1.0, 2.0, 5.0)
    seconds: float = 30.0  # arrival window of each load level
    capacity_seconds: float = 6.0
    capacity_clients: int = 12
    # After the capacity run: seconds of open-loop traffic at the top load level, not judged (0: none).
    warmup_burst_s: float = 3.0
    # Load levels (multipliers) during which the victim is killed; None: every level.
    kill_loads: tuple[float, ...] | None = None
    kill_at: float = 0.4  # fraction of the arrival window
    kill_wait_busy_s: float = 5.0  # at most this long after kill_at for the victim to hold a request
    request_timeout_s: float = 60.0  # the client's bound: past it a request counts as hung
    health_rate_hz: float = 4.0
    seed: int = 7
    max_requests_per_level: int = 5000
    log_dir: Path | None = None  # the services' logs, kept; None: a temporary directory
    stack: StackConfig = field(default_factory=StackConfig)

    def kills_in(self, load: float) -> bool:
        return self.kill_loads is None or load in self.kill_loads


async def measure_capacity(
    stack: SoakStack, mix: list[Flow], seconds: float, clients: int, timeout_s: float, seed: int
) -> tuple[float, list[Record]]:
    """Closed loop over the good flows: ``clients`` callers back to back; 200s per second."""
    good = [f for f in mix if f.good]
    plan = schedule(good, 100_000, seed)
    records: list[Record] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    counter = iter(range(len(plan)))

    async def caller(client: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() >= deadline:
                return
            rec = await send(client, stack.interface.url, plan[i], i, f"soak-cap-{i}", t0)
            records.append(rec)
            if rec.status != 200:
                await asyncio.sleep(0.1)  # a refusal comes back at once: do not spin on it

    async with make_client(timeout_s) as client:
        await asyncio.wait_for(asyncio.gather(*(caller(client) for _ in range(clients))), seconds + timeout_s)
    wall = time.perf_counter() - t0
    ok = sum(1 for r in records if r.status == 200 and r.sent_s + r.latency_s <= seconds)
    return ok / min(wall, seconds), records


@dataclass(slots=True)
class PhaseRun:
    records: list[Record]
    wall_s: float
    began: float  # time.monotonic() at the phase's start
    ended: float
    kill_s: float | None  # since the phase began
    hung: int
    victim_in_flight: float | None = None  # the victim's imgpod_http_in_flight just before the kill


async def open_loop(
    stack: SoakStack,
    plan: list[Flow],
    rate: float,
    label: str,
    timeout_s: float,
    kill_s: float | None,
    before_kill: Callable[[], float | None],
) -> PhaseRun:
    """Send ``plan`` at ``rate`` per second whatever the answers; kill the victim ``kill_s`` in."""
    records: list[Record] = []
    tasks: list[asyncio.Task[Record]] = []
    killed_at: list[float] = []  # when the signal went, since the phase began (set by the kill thread)
    kill_task: asyncio.Task[float | None] | None = None

    def kill() -> float | None:
        busy = before_kill()
        killed_at.append(time.perf_counter() - t0)
        stack.kill(VICTIM)
        return busy

    began = time.monotonic()
    t0 = time.perf_counter()
    async with make_client(timeout_s) as client:
        for i, flow in enumerate(plan):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if kill_s is not None and kill_task is None and time.perf_counter() - t0 >= kill_s:
                kill_task = asyncio.create_task(asyncio.to_thread(kill))
            rid = f"soak-{label}-{i}"
            lag = time.perf_counter() - due
            tasks.append(asyncio.create_task(send(client, stack.interface.url, flow, i, rid, t0, lag)))
        if kill_s is not None and kill_task is None:
            # The plan ran out before the kill time (a very low rate): kill on schedule all the same.
            await asyncio.sleep(max(0.0, t0 + kill_s - time.perf_counter()))
            kill_task = asyncio.create_task(asyncio.to_thread(kill))
        busy = await kill_task if kill_task is not None else None
        # httpx's own timeout bounds each call; this bounds the phase even if something ignores it.
        done, pending = await asyncio.wait(tasks, timeout=timeout_s + 15) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for i, task in enumerate(tasks):
        if task in done and task.exception() is None:
            records.append(task.result())
        else:
            # Past the phase's bound (cancelled), or the harness itself failed on it: either way, no answer.
            error = "hung" if task not in done else type(task.exception()).__name__
            records.append(Record(plan[i].name, f"soak-{label}-{i}", i / rate, timeout_s + 15, None, error))
    kill_at = killed_at[0] if killed_at else None
    wall = time.perf_counter() - t0
    return PhaseRun(records, wall, began, time.monotonic(), kill_at, len(pending), busy)


def hold_and_wait(stack: SoakStack, name: str, timeout_s: float) -> float | None:
    """Make sure the worker holds requests when it dies; how many it held (None: unknown).

    Killing a worker that happens to be idle tests nothing. With its test gate (``victim_gate``) the next
    requests it gets park there, and this returns once one has (bounded); without, it polls the worker's
    ``imgpod_http_in_flight`` until that is 1 or more.
    """
    url = stack.procs[name].url
    deadline = time.monotonic() + timeout_s
    try:
        gated = httpx.post(url + "/v1/test/gate/close", headers=WORKER_AUTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        gated = False
    value: float | None = None
    while time.monotonic() < deadline:
        if gated:
            try:
                gate = httpx.get(url + "/v1/test/gate", headers=WORKER_AUTH, timeout=2).json()
                value = float(gate["parked"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                value = None
        else:
            value = sample(scrape(url, WORKER_AUTH, timeout_s=1.0), "imgpod_http_in_flight")
            if value is None:
                return None
        if value is not None and value >= 1:
            return value
        time.sleep(0.01)
    return value


def wait_idle(stack: SoakStack, timeout_s: float = 60.0) -> bool:
    """Until every interface queue is empty and idle (bounded); True when it got there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            queues = httpx.get(stack.interface.url + "/healthz", timeout=5).json().get("queues", {})
            if all(q.get("depth", 0) == 0 and q.get("in_flight", 0) == 0 for q in queues.values()):
                return True
        time.sleep(0.25)
    return False


# --- judging ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Invariant:
    name: str
    value: str
    limit: str
    passed: bool | None  # None: not measurable
    speed: bool = False  # speed-dependent: judged in the bench, printed only in the test

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass(slots=True)
class LevelResult:
    load: float
    offered_per_s: float
    sent: int
    wall_s: float
    killed_at_s: float | None
    victim_in_flight_at_kill: float | None
    status_counts: dict[str, int]
    by_flow: dict[str, dict[str, int]]
    bad_responses: list[dict[str, Any]]
    admitted: dict[str, float]
    admitted_by_flow: dict[str, dict[str, float]]
    refused_429: dict[str, float]
    health_p99_ms: dict[str, float]
    health_failures: dict[str, int]
    peaks: dict[str, dict[str, Any]]
    rss_growth: dict[str, float | None]
    rss_mb: dict[str, float]
    cpu_s: dict[str, float]
    client_lag_p99_ms: float
    interface_counters: dict[str, float]
    invariants: list[Invariant]

    def failed(self, *, include_speed: bool) -> list[Invariant]:
        return [i for i in self.invariants if i.passed is False and (include_speed or not i.speed)]


def _p99_ms(seconds: list[float]) -> float:
    return round(percentile([s * 1000 for s in seconds], 99), 1) if seconds else float("nan")


def _dist(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1)}


def judge(
    load: float,
    rate: float,
    run: PhaseRun,
    cfg: SoakConfig,
    served_delta: int | None,
    probes: list[Probe],
    peaks: dict[str, Peak],
    rss_start: dict[str, int],
    rss_end: dict[str, int],
    restarted: set[str],
    counters: dict[str, float],
    cpu_s: dict[str, float],
) -> LevelResult:
    recs = run.records
    statuses = Counter("transport" if r.status is None else str(r.status) for r in recs)
    by_flow: dict[str, dict[str, int]] = {}
    for r in recs:
        row = by_flow.setdefault(r.flow, {})
        key = r.error if r.status is None else str(r.status)
        row[key or "transport"] = row.get(key or "transport", 0) + 1

    # 1. Exactly one response each.
    transport = [r for r in recs if r.status is None]
    no_echo = [r for r in recs if r.status is not None and not r.id_echoed]
    counted = "not measurable" if served_delta is None else str(served_delta)
    one_ok = not transport and not no_echo and (served_delta is None or served_delta == len(recs))
    one_value = (
        f"{len(recs) - len(transport)}/{len(recs)} answered, {run.hung} hung, "
        f"{len(no_echo)} wrong id, interface counted {counted}"
    )
    if transport:
        one_value += (
            " (" + ", ".join(f"{k} x{v}" for k, v in Counter(r.error for r in transport).items()) + ")"
        )

    # 2. Only allowed statuses; group the others for evidence.
    bad = [r for r in recs if r.status is not None and r.status not in ALLOWED]
    kill = run.kill_s
    groups: Counter[tuple[Any, ...]] = Counter()
    for r in bad:
        in_flight_at_kill = kill is not None and r.sent_s <= kill <= r.sent_s + r.latency_s
        after_kill = kill is not None and r.sent_s > kill
        when = "in flight at kill" if in_flight_at_kill else ("after kill" if after_kill else "before kill")
        groups[(r.flow, r.status, r.code, r.stage, when, r.detail)] += 1
    bad_responses = [
        {"flow": f, "status": s, "code": c, "stage": st, "when": w, "detail": d, "count": n}
        for (f, s, c, st, w, d), n in groups.most_common()
    ]
    bad_value = ", ".join(f"{s} x{n}" for s, n in Counter(r.status for r in bad).most_common()) or "none"

    # 3. 429: Retry-After on each, and fast.
    refused = [r for r in recs if r.status == 429]
    no_retry_after = [r for r in refused if not r.retry_after]
    t429 = _p99_ms([r.latency_s for r in refused])

    # 4. Admitted latency within the SLA.
    admitted = [r.latency_s for r in recs if r.status == 200]
    adm_p99 = _p99_ms(admitted)
    sla = cfg.stack.sla_ms

    # 5. Peaks.
    measurable = {n: p for n, p in peaks.items() if p.peak is not None}
    over = {n: p for n, p in measurable.items() if p.peak is not None and p.peak > p.limit}
    if not measurable:
        peak_value, peak_ok = "not measurable (imgpod_http_in_flight_max absent)", None
    else:
        worst = max(measurable.items(), key=lambda kv: (kv[1].peak or 0) / kv[1].limit)
        shown = over or dict([worst])
        peak_value = ", ".join(f"{n} {p.peak:g}/{p.limit}" for n, p in shown.items())
        peak_ok = not over

    # 6. Health.
    health: dict[str, list[float]] = {}
    health_failures: Counter[str] = Counter()
    for p in probes:
        health.setdefault(p.service, []).append(p.ms / 1000)
        if p.status != 200:
            health_failures[p.service] += 1
    health_p99 = {name: _p99_ms(v) for name, v in sorted(health.items())}
    worst_health = max(health_p99.items(), key=lambda kv: kv[1], default=("none", float("nan")))

    # 7. RSS.
    growth: dict[str, float | None] = {}
    for name, before in rss_start.items():
        after = rss_end.get(name)
        growth[name] = None if name in restarted or after is None else round(after / before - 1, 4)
    judged = {n: g for n, g in growth.items() if g is not None}
    worst_rss = max(judged.items(), key=lambda kv: kv[1], default=("none", float("nan")))

    invariants = [
        Invariant("exactly one response each", one_value, "all answered, own id", one_ok),
        Invariant("statuses outside 200/4xx/429/503/504", bad_value, "none", not bad),
        Invariant(
            "429 without Retry-After", f"{len(no_retry_after)} of {len(refused)}", "0", not no_retry_after
        ),
        Invariant(
            "429 latency p99",
            f"{t429:.1f} ms (n={len(refused)})" if refused else "no 429",
            f"<= {T429_P99_LIMIT_MS:g} ms",
            None if not refused else t429 <= T429_P99_LIMIT_MS,
            speed=True,
        ),
        Invariant(
            "admitted (200) latency p99",
            f"{adm_p99:.0f} ms (n={len(admitted)})" if admitted else "no 200",
            f"<= SLA {sla:g} ms",
            None if not admitted else adm_p99 <= sla,
            speed=True,
        ),
        Invariant("per-worker peak in flight", peak_value, "<= advertised/setting", peak_ok),
        Invariant(
            "/healthz p99 (worst service)",
            f"{worst_health[0]} {worst_health[1]:.1f} ms",
            f"< {HEALTH_P99_LIMIT_MS:g} ms",
            None if not health_p99 else all(v < HEALTH_P99_LIMIT_MS for v in health_p99.values()),
            speed=True,
        ),
        Invariant(
            "RSS growth since warm-up (worst)",
            f"{worst_rss[0]} {worst_rss[1] * 100:+.1f} %",
            f"< {RSS_GROWTH_LIMIT * 100:g} %",
            None if not judged else all(g < RSS_GROWTH_LIMIT for g in judged.values()),
        ),
    ]
    lag = _p99_ms([r.lag_s for r in recs])
    return LevelResult(
        load=load,
        offered_per_s=round(rate, 2),
        sent=len(recs),
        wall_s=round(run.wall_s, 2),
        killed_at_s=None if kill is None else round(kill, 2),
        victim_in_flight_at_kill=run.victim_in_flight,
        status_counts=dict(statuses.most_common()),
        by_flow=by_flow,
        bad_responses=bad_responses,
        admitted=_dist(admitted),
        admitted_by_flow={
            flow: _dist([r.latency_s for r in recs if r.flow == flow and r.status == 200]) for flow in by_flow
        },
        refused_429=_dist([r.latency_s for r in refused]),
        health_p99_ms=health_p99,
        health_failures=dict(health_failures),
        peaks={n: dataclasses.asdict(p) for n, p in peaks.items()},
        rss_growth=growth,
        rss_mb={name: round(v / 2**20, 1) for name, v in rss_end.items()},
        cpu_s=cpu_s,
        client_lag_p99_ms=lag,
        interface_counters=counters,
        invariants=invariants,
    )


# --- the run ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SoakResult:
    capacity_per_s: float
    capacity_sample: dict[str, int]
    warmup_sample: dict[str, int]
    rss_mb: dict[str, dict[str, float]]  # after the capacity run, and at the baseline after the warm-up
    levels: list[LevelResult]
    restart_s: list[float]
    config: dict[str, Any]

    def failed(self, *, include_speed: bool) -> list[tuple[float, Invariant]]:
        return [(lv.load, inv) for lv in self.levels for inv in lv.failed(include_speed=include_speed)]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_soak(
    cfg: SoakConfig | None = None,
    models: dict[str, Path] | None = None,
    *,
    print_tables: bool = True,
) -> SoakResult:
    """Start the stack, measure capacity, run every load level, judge and (optionally) print."""
    cfg = cfg or SoakConfig()
    mix = build_mix()
    good_share = sum(f.weight for f in mix if f.good) / sum(f.weight for f in mix)
    levels: list[LevelResult] = []
    restarts: list[float] = []
    with (
        soak_stack(cfg.stack, models, cfg.log_dir) as stack,
        HealthPoller(stack, cfg.health_rate_hz) as poller,
    ):
        capacity, cap_records = _run(
            measure_capacity(
                stack, mix, cfg.capacity_seconds, cfg.capacity_clients, cfg.request_timeout_s, cfg.seed
            )
        )
        capacity = max(capacity, 0.5)
        wait_idle(stack)
        rss_after_capacity = rss_of(stack)
        warmup: dict[str, int] = {}
        if cfg.warmup_burst_s > 0:
            # Steady state includes the most requests at once the run will see: a short burst at the top
            # level, so RSS growth afterwards is memory that keeps growing, not the allocator's high-water.
            rate = capacity * max(cfg.loads) / good_share
            plan = schedule(mix, max(1, round(rate * cfg.warmup_burst_s)), cfg.seed - 1)
            burst = _run(open_loop(stack, plan, rate, "warmup", cfg.request_timeout_s, None, lambda: None))
            warmup = dict(Counter("transport" if r.status is None else str(r.status) for r in burst.records))
            wait_idle(stack)
        peaks = PeakTracker(stack)
        peaks.read()
        rss_start = rss_of(stack)

        def arm_kill() -> float | None:
            peaks.read([VICTIM])
            return hold_and_wait(stack, VICTIM, cfg.kill_wait_busy_s)

        for n, load in enumerate(cfg.loads):
            rate = capacity * load / good_share
            count = min(cfg.max_requests_per_level, max(1, round(rate * cfg.seconds)))
            plan = schedule(mix, count, cfg.seed + n + 1)
            kill_s = cfg.seconds * cfg.kill_at if cfg.kills_in(load) else None
            before = served_by_interface(stack)
            cpu_start = cpu_of(stack)
            run = _run(
                open_loop(
                    stack,
                    plan,
                    rate,
                    f"{load:g}x",
                    cfg.request_timeout_s,
                    kill_s,
                    arm_kill,
                )
            )
            wait_idle(stack)
            time.sleep(0.3)  # the interface counts an answer just after sending it
            after = served_by_interface(stack)
            peaks.read()
            cpu = cpu_delta(cpu_start, cpu_of(stack))
            result = judge(
                load,
                rate,
                run,
                cfg,
                None if before is None or after is None else after - before,
                poller.window(run.began, run.ended),
                peaks.peaks(),
                rss_start,
                rss_of(stack),
                set(stack.restarted) | ({VICTIM} if kill_s is not None else set()),
                interface_counters(stack),
                cpu,
            )
            levels.append(result)
            if print_tables:
                print_level(result, capacity)
            if kill_s is not None and n + 1 < len(cfg.loads):
                restarts.append(round(stack.restart(VICTIM), 1))
                peaks.read([VICTIM])
    result = SoakResult(
        capacity_per_s=round(capacity, 3),
        capacity_sample=dict(Counter(str(r.status) for r in cap_records)),
        warmup_sample=warmup,
        rss_mb={
            "after_capacity": {n: round(v / 2**20, 1) for n, v in rss_after_capacity.items()},
            "baseline": {n: round(v / 2**20, 1) for n, v in rss_start.items()},
        },
        levels=levels,
        restart_s=restarts,
        config=dataclasses.asdict(cfg) | {"text2img_workers": list(TEXT2IMG), "victim": VICTIM},
    )
    if print_tables:
        print_summary(result)
    return result


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --- printing --------------------------------------------------------------------------------------------


def print_level(lv: LevelResult, capacity: float) -> None:
    kill = ""
    if lv.killed_at_s is not None:
        busy = "?" if lv.victim_in_flight_at_kill is None else f"{lv.victim_in_flight_at_kill:g}"
        kill = f", {VICTIM} killed at {lv.killed_at_s:g} s with {busy} in flight"
    title = (
        f"Load {lv.load:g}x (capacity {capacity:.2f} ok/s): {lv.offered_per_s:g} req/s offered, "
        f"{lv.sent} sent in {lv.wall_s:g} s{kill}"
    )
    print_table(
        title,
        ["invariant", "value", "limit", "result"],
        [[i.name + (" [speed]" if i.speed else ""), i.value, i.limit, i.verdict] for i in lv.invariants],
    )
    codes = sorted({k for row in lv.by_flow.values() for k in row}, key=lambda k: (not k.isdigit(), k))
    print_table(
        "  answers per flow",
        ["flow", *codes, "ok p50 ms", "ok p99 ms"],
        [
            [
                flow,
                *(row.get(c, 0) for c in codes),
                lv.admitted_by_flow.get(flow, {}).get("p50_ms", "-"),
                lv.admitted_by_flow.get(flow, {}).get("p99_ms", "-"),
            ]
            for flow, row in sorted(lv.by_flow.items())
        ],
    )
    print(
        f"  admitted p50/p99 {lv.admitted.get('p50_ms', '-')}/{lv.admitted.get('p99_ms', '-')} ms; "
        f"429 p50/p99 {lv.refused_429.get('p50_ms', '-')}/{lv.refused_429.get('p99_ms', '-')} ms; "
        f"client lag p99 {lv.client_lag_p99_ms} ms"
    )
    peaks = [
        f"{n} {'-' if p['peak'] is None else format(p['peak'], 'g')}/{p['limit']}"
        for n, p in lv.peaks.items()
    ]
    print("  peaks in flight: " + ", ".join(peaks))
    print("  /healthz p99 ms: " + ", ".join(f"{n} {v:g}" for n, v in lv.health_p99_ms.items()))
    if lv.health_failures:
        print(f"  /healthz not 200: {lv.health_failures}")
    rss = [
        f"{n} {'restarted' if g is None else format(g * 100, '+.1f') + '%'}" for n, g in lv.rss_growth.items()
    ]
    print("  RSS growth: " + ", ".join(rss))
    print("  RSS MB at end: " + ", ".join(f"{n} {v:g}" for n, v in lv.rss_mb.items()))
    print("  CPU s during the level: " + ", ".join(f"{n} {v:g}" for n, v in lv.cpu_s.items()))
    if lv.interface_counters:
        print("  interface: " + ", ".join(f"{k} {v:g}" for k, v in sorted(lv.interface_counters.items())))
    if lv.bad_responses:
        print_table(
            "  answers outside the allowed statuses",
            ["flow", "status", "code", "stage", "when", "n", "detail"],
            [
                [b["flow"], b["status"], b["code"], b["stage"], b["when"], b["count"], b["detail"]]
                for b in lv.bad_responses
            ],
        )


def print_summary(result: SoakResult) -> None:
    print(f"\nSummary (capacity {result.capacity_per_s:g} ok/s; victim restarts: {result.restart_s} s)")
    print(f"  capacity run answers: {result.capacity_sample}; warm-up burst answers: {result.warmup_sample}")
    for when, rss in result.rss_mb.items():
        print(f"  RSS MB {when}: " + ", ".join(f"{n} {v:g}" for n, v in rss.items()))
    names = [i.name for i in result.levels[0].invariants] if result.levels else []
    print_table(
        "invariants per load level",
        ["invariant", *(f"{lv.load:g}x" for lv in result.levels)],
        [[name, *(lv.invariants[k].verdict for lv in result.levels)] for k, name in enumerate(names)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="arrival window per load level")
    parser.add_argument("--loads", default="1,2,5", help="multiples of the measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=6.0)
    parser.add_argument("--capacity-clients", type=int, default=12)
    parser.add_argument("--warmup-burst", type=float, default=3.0, help="seconds at the top level, unjudged")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of each level's window")
    parser.add_argument("--no-kill", action="store_true", help="keep both text2img workers alive")
    parser.add_argument("--sla-ms", type=float, default=10_000.0)
    parser.add_argument("--queue-capacity", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=60.0, help="client bound per request, seconds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    loads = tuple(float(x) for x in args.loads.split(","))
    if not loads or any(x <= 0 for x in loads) or args.seconds <= 0 or not 0 < args.kill_at < 1:
        parser.error("loads and seconds must be positive, --kill-at within (0, 1)")
    cfg = SoakConfig(
        loads=loads,
        seconds=args.seconds,
        capacity_seconds=args.capacity_seconds,
        capacity_clients=args.capacity_clients,
        warmup_burst_s=args.warmup_burst,
        kill_loads=() if args.no_kill else None,
        kill_at=args.kill_at,
        request_timeout_s=args.timeout,
        seed=args.seed,
        log_dir=Path(tempfile.mkdtemp(prefix="imgpod-soak-logs-")),
        stack=StackConfig(sla_ms=args.sla_ms, queue_capacity=args.queue_capacity),
    )
    print(f"service logs: {cfg.log_dir}")
    result = run_soak(cfg)
    write_results("soak", result.to_json())
    failed = result.failed(include_speed=True)
    for load, inv in failed:
        print(f"FAIL {load:g}x: {inv.name}: {inv.value} (limit {inv.limit})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
