"""The soak's traffic: the request mix, one request and its record, the capacity run and the open loop.

``bench/soak.py`` drives these per load level; ``bench/soak_invariants.py`` judges the records they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.soak_stack import API_KEY, VICTIM, SoakStack
from devtools.stack_env import PERSONA

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
    from devtools.photos import astronaut, encode

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


# --- load ------------------------------------------------------------------------------------------------


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
