"""WorkerPool calls that read a worker's progress stream, against real servers over loopback HTTP.

The workers are the protocol stand-in (tests/helpers/progress_worker.py) run by uvicorn: the pool's client,
its connection pool and the stream's close are the production ones, so what is asserted here (a line reaches
the caller while the stream is open, a cancel reaches the worker as a disconnect) crosses a real socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running
from services.interface.pools import PoolConfig, WorkerPool, pool_metrics
from shared.errors import ImgPodError, NoHealthyWorker, UpstreamFailed, UpstreamTimeout, ValidationFailed
from shared.http_client import UpstreamBusy, make_async_client
from shared.metrics import ServiceMetrics
from tests.helpers.waiting import until

Steps = list[tuple[int, int]]
# A deadline past the tests' hang bound: a stream that a cancel did not close is never closed by its timeout.
NEVER = 600.0


@pytest.fixture(scope="module")
def stand_ins() -> Iterator[list[ServiceProcess]]:
    procs = [ServiceProcess("tests.helpers.progress_worker") for _ in range(2)]
    with all_running(procs):
        yield procs


class Control:
    """The test's side of the stand-ins: script them, grant lines, read what they saw."""

    def __init__(self, procs: list[ServiceProcess]) -> None:
        self.procs = procs
        self.http = httpx.AsyncClient(timeout=10)

    async def script(self, index: int, **script: Any) -> None:
        (await self.http.post(self.procs[index].url + "/script", json=script)).raise_for_status()

    async def release(self, index: int, lines: int = 1) -> None:
        resp = await self.http.post(self.procs[index].url + "/release", json={"lines": lines})
        resp.raise_for_status()

    async def state(self, index: int) -> dict[str, Any]:
        resp = await self.http.get(self.procs[index].url + "/state")
        resp.raise_for_status()
        return resp.json()

    async def calls(self) -> list[int]:
        return [(await self.state(i))["calls"] for i in range(len(self.procs))]

    async def until_stream(self, index: int, predicate: Any, stream: int = 0) -> dict[str, Any]:
        """Polls the stand-in until its ``stream``-th stream satisfies ``predicate``; returns that stream."""
        seen: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal seen
            streams = (await self.state(index))["streams"]
            seen = streams[stream] if len(streams) > stream else {}
            return bool(seen) and bool(predicate(seen))

        deadline = asyncio.get_running_loop().time() + 60
        while not await check():
            assert asyncio.get_running_loop().time() < deadline, f"stream never got there: {seen}"
            await asyncio.sleep(0.02)
        return seen


def make_pool(procs: list[ServiceProcess], *, bound: int = 4, **config: Any) -> WorkerPool:
    metrics = ServiceMetrics("progress")
    return WorkerPool(
        "text2img",
        [p.url for p in procs],
        client=make_async_client(),
        token=None,
        config=PoolConfig(per_worker_concurrency=bound, **config),
        metrics=metrics,
        pool_metrics=pool_metrics(metrics),
    )


async def call(
    pool: WorkerPool, steps: int = 3, seen: Steps | None = None, *, timeout_s: float = 30, tag: str = ""
) -> dict[str, Any]:
    on_progress = None if seen is None else (lambda p: seen.append((p.step, p.total)))
    return await pool.request(
        "POST",
        "/v1/generate",
        stage="generate",
        timeout_s=timeout_s,
        json={"steps": steps, "tag": tag},
        on_progress=on_progress,
    )


def in_flight(pool: WorkerPool) -> list[int]:
    return [w.in_flight for w in pool.workers]


def lines_of(stream: dict[str, Any]) -> dict[str, Any]:
    """What the stand-in sent on one stream, and whether the client left before the end."""
    return {k: stream[k] for k in ("sent", "final", "disconnected")}


def test_each_step_reaches_the_caller_while_the_stream_is_open(stand_ins: list[ServiceProcess]) -> None:
    """Every line is granted by the test: a callback that fired before the next grant cannot be buffered."""

    async def scenario() -> tuple[list[Any], list[dict[str, Any]], dict[str, Any], list[int], int]:
        ctl = Control(stand_ins)
        await ctl.script(0, gated=True)
        await ctl.script(1)
        pool = make_pool(stand_ins)
        await pool.probe_all()
        events: list[Any] = []
        steps: Steps = []
        task = asyncio.create_task(call(pool, 3, steps))
        at_each_step = []
        for k in (1, 2, 3):
            await ctl.release(0)
            await until(lambda k=k: len(steps) == k)
            events.append(steps[-1])
            # The stand-in is parked before its next line: nothing after line k has been sent.
            at_each_step.append(await ctl.state(0))
            assert not task.done()
        await ctl.release(0)
        body = await task
        events.append("result")
        return events, at_each_step, body, in_flight(pool), pool.workers[0].consecutive_failures

    events, at_each_step, body, flying, failures = asyncio.run(scenario())
    assert events == [(1, 3), (2, 3), (3, 3), "result"]
    for k, state in enumerate(at_each_step, start=1):
        assert [lines_of(s) for s in state["streams"]] == [{"sent": k, "final": False, "disconnected": False}]
    assert body == {"port": stand_ins[0].port, "steps": 3, "tag": ""}
    assert flying == [0, 0]
    assert failures == 0


def test_a_finished_stream_leaves_its_connection_for_the_next_call(stand_ins: list[ServiceProcess]) -> None:
    """The pool reads past the final line to the end of the body, so its keep-alive connection is reused."""

    async def scenario() -> list[dict[str, Any]]:
        ctl = Control(stand_ins)
        await ctl.script(0)
        pool = make_pool(stand_ins[:1])
        await pool.probe_all()
        for _ in range(3):
            await call(pool, 2, [])
        return (await ctl.state(0))["streams"]

    streams = asyncio.run(scenario())
    assert len(streams) == 3
    assert len({s["peer"] for s in streams}) == 1


ERRORS = {
    422: ({"detail": "prompt too long", "code": "validation_error"}, {}),
    429: ({"detail": "busy", "code": "overloaded"}, {"Retry-After": "7"}),
    500: ({"detail": "cuda error", "code": "inference_failed"}, {}),
    503: ({"detail": "loading", "code": "model_unavailable"}, {}),
}


@pytest.mark.parametrize("status", sorted(ERRORS))
def test_an_error_line_is_the_error_the_plain_answer_would_be(
    stand_ins: list[ServiceProcess], status: int
) -> None:
    """Same exception, status, headers and detail, and the same retry, as the plain call for that answer."""
    body, headers = ERRORS[status]

    async def attempt(streamed: bool) -> tuple[ImgPodError, list[int], Steps, list[int], int]:
        ctl = Control(stand_ins)
        for i in (0, 1):
            await ctl.script(i, final="error", status=status, body=body, headers=headers)
        pool = make_pool(stand_ins)
        await pool.probe_all()
        steps: Steps = []
        with pytest.raises(ImgPodError) as err:
            await call(pool, 2, steps if streamed else None)
        return err.value, await ctl.calls(), steps, in_flight(pool), pool.workers[0].consecutive_failures

    plain, plain_calls, _, _, plain_failures = asyncio.run(attempt(streamed=False))
    line, line_calls, steps, flying, failures = asyncio.run(attempt(streamed=True))
    assert type(line) is type(plain)
    assert (line.status_code, line.headers(), line.detail) == (
        plain.status_code,
        plain.headers(),
        plain.detail,
    )
    assert line_calls == plain_calls
    assert failures == plain_failures
    assert flying == [0, 0]
    # The steps before the error line did reach the caller (from both workers when it was retried).
    assert steps == [(1, 2), (2, 2)] * line_calls[0] + [(1, 2), (2, 2)] * line_calls[1]
    expected = {
        422: (ValidationFailed, [1, 0], 0),  # the client's fault: passed on, not retried, not counted
        429: (UpstreamBusy, [1, 1], 0),  # busy: tried on the other worker, then passed on with Retry-After
        500: (UpstreamFailed, [1, 0], 1),  # may have done work: not repeated, counted against the worker
        503: (NoHealthyWorker, [1, 1], 0),  # did no work: tried on the other worker
    }[status]
    assert (type(line), line_calls, failures) == expected
    if status == 429:
        assert line.headers() == {"Retry-After": "7"}


def test_a_busy_error_line_is_retried_on_the_other_worker(stand_ins: list[ServiceProcess]) -> None:
    async def scenario() -> tuple[dict[str, Any], Steps, list[int], list[int]]:
        ctl = Control(stand_ins)
        await ctl.script(0, final="error", status=429, body={"detail": "busy"}, headers={"Retry-After": "3"})
        await ctl.script(1)
        pool = make_pool(stand_ins)
        await pool.probe_all()
        steps: Steps = []
        body = await call(pool, 2, steps)
        return body, steps, await ctl.calls(), in_flight(pool)

    body, steps, calls, flying = asyncio.run(scenario())
    assert body["port"] == stand_ins[1].port
    # The second worker's steps start from 1 again: the caller sees the retry.
    assert steps == [(1, 2), (2, 2), (1, 2), (2, 2)]
    assert calls == [1, 1]
    assert flying == [0, 0]


@pytest.mark.parametrize("final", ["none", "bad"])
def test_a_stream_without_its_final_line_is_a_failed_worker_call(
    stand_ins: list[ServiceProcess], final: str
) -> None:
    async def scenario() -> tuple[BaseException, list[int], list[int], int]:
        ctl = Control(stand_ins)
        for i in (0, 1):
            await ctl.script(i, final=final)
        pool = make_pool(stand_ins)
        await pool.probe_all()
        with pytest.raises(ImgPodError) as err:
            await call(pool, 2, [])
        return err.value, await ctl.calls(), in_flight(pool), pool.workers[0].consecutive_failures

    err, calls, flying, failures = asyncio.run(scenario())
    assert type(err) is UpstreamFailed and err.status_code == 502
    assert "127.0.0.1" not in err.detail
    assert calls == [1, 0]  # it may have done the work: not repeated
    assert failures == 1  # counted against the worker, as invalid JSON is
    assert flying == [0, 0]


def test_cancelling_the_caller_closes_the_stream_and_then_frees_the_slot(
    stand_ins: list[ServiceProcess],
) -> None:
    """With a budget of one, a second call waits; the cancel of the first reaches the worker as a disconnect,
    and the slot it frees goes to the waiting call."""

    async def scenario() -> dict[str, Any]:
        ctl = Control(stand_ins)
        await ctl.script(0, gated=True)
        pool = make_pool(stand_ins[:1], bound=1)
        await pool.probe_all()
        steps: Steps = []
        first = asyncio.create_task(call(pool, 5, steps, timeout_s=NEVER, tag="first"))
        await ctl.release(0)
        await until(lambda: len(steps) == 1)
        second_steps: Steps = []
        second = asyncio.create_task(call(pool, 2, second_steps, tag="second"))
        await until(lambda: len(pool._slot_waiters) == 1)
        streams_while_waiting = len((await ctl.state(0))["streams"])
        first.cancel()
        outcome = await asyncio.gather(first, return_exceptions=True)
        cancelled = await ctl.until_stream(0, lambda s: s["disconnected"])
        # Granted only now: the first stream is gone and cannot take them.
        await ctl.release(0, 3)
        body = await second
        streams = (await ctl.state(0))["streams"]
        return {
            "outcome": outcome[0],
            "streams_while_waiting": streams_while_waiting,
            "cancelled": cancelled,
            "body": body,
            "second_steps": second_steps,
            "streams": streams,
            "flying": in_flight(pool),
        }

    seen = asyncio.run(scenario())
    assert isinstance(seen["outcome"], asyncio.CancelledError)
    # The second call waited for the slot instead of reaching the worker; the first was cut after 1 line.
    assert seen["streams_while_waiting"] == 1
    assert lines_of(seen["cancelled"]) == {"sent": 1, "final": False, "disconnected": True}
    assert seen["body"]["tag"] == "second"
    assert seen["second_steps"] == [(1, 2), (2, 2)]
    assert [s["tag"] for s in seen["streams"]] == ["first", "second"]
    assert seen["flying"] == [0]


def test_a_cancelled_caller_with_nobody_waiting_leaves_no_call_in_flight(
    stand_ins: list[ServiceProcess],
) -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        ctl = Control(stand_ins)
        await ctl.script(0, gated=True)
        pool = make_pool(stand_ins[:1], bound=1)
        await pool.probe_all()
        steps: Steps = []
        task = asyncio.create_task(call(pool, 4, steps, timeout_s=NEVER))
        await ctl.release(0, 2)
        await until(lambda: len(steps) == 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Read as soon as the cancelled caller resumes: the close has completed and the slot is free.
        flying = pool.workers[0].in_flight
        return flying, await ctl.until_stream(0, lambda s: s["disconnected"])

    flying, stream = asyncio.run(scenario())
    assert flying == 0
    assert lines_of(stream) == {"sent": 2, "final": False, "disconnected": True}


def test_a_plain_json_answer_to_a_progress_request_works_as_before(stand_ins: list[ServiceProcess]) -> None:
    async def scenario() -> tuple[dict[str, Any], Steps, BaseException, list[int]]:
        ctl = Control(stand_ins)
        await ctl.script(0, plain=True)
        pool = make_pool(stand_ins[:1])
        await pool.probe_all()
        steps: Steps = []
        body = await call(pool, 3, steps)
        await ctl.script(0, plain=True, final="none")  # 200 with a body that is not JSON
        with pytest.raises(ImgPodError) as err:
            await call(pool, 3, steps)
        return body, steps, err.value, in_flight(pool)

    body, steps, err, flying = asyncio.run(scenario())
    assert body == {"port": stand_ins[0].port, "steps": 3, "tag": ""}
    assert steps == []
    assert type(err) is UpstreamFailed
    assert flying == [0]


def test_overlapping_streamed_calls_each_get_their_own_steps(stand_ins: list[ServiceProcess]) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Steps], int, list[int]]:
        ctl = Control(stand_ins)
        await ctl.script(0, gated=True)
        pool = make_pool(stand_ins[:1])
        await pool.probe_all()
        steps: dict[str, Steps] = {"a": [], "b": [], "c": []}
        tasks = [
            asyncio.create_task(call(pool, n, steps[tag], tag=tag))
            for tag, n in (("a", 2), ("b", 3), ("c", 4))
        ]
        # All three streams are open at once before any line is granted.
        await ctl.until_stream(0, lambda s: True, stream=2)
        open_at_once = len((await ctl.state(0))["streams"])
        await ctl.release(0, (2 + 1) + (3 + 1) + (4 + 1))
        bodies = await asyncio.gather(*tasks)
        return bodies, steps, open_at_once, in_flight(pool)

    bodies, steps, open_at_once, flying = asyncio.run(scenario())
    assert open_at_once == 3
    assert [b["tag"] for b in bodies] == ["a", "b", "c"]
    assert steps == {tag: [(s, n) for s in range(1, n + 1)] for tag, n in (("a", 2), ("b", 3), ("c", 4))}
    assert flying == [0]


def test_the_deadline_bounds_the_whole_stream_not_each_read(stand_ins: list[ServiceProcess]) -> None:
    """Lines every 0.2 s never trip a 1 s read timeout; the call still ends at its 1 s deadline, closed."""

    async def scenario() -> tuple[BaseException, Steps, dict[str, Any], list[int]]:
        ctl = Control(stand_ins)
        await ctl.script(0, interval_s=0.2)
        pool = make_pool(stand_ins[:1])
        await pool.probe_all()
        steps: Steps = []
        with pytest.raises(ImgPodError) as err:
            await call(pool, 100, steps, timeout_s=1.0)
        stream = await ctl.until_stream(0, lambda s: s["disconnected"])
        return err.value, steps, stream, in_flight(pool)

    err, steps, stream, flying = asyncio.run(scenario())
    assert type(err) is UpstreamTimeout
    assert 0 < len(steps) < 100
    assert stream["disconnected"] and not stream["final"]
    assert flying == [0]


def test_a_stream_from_a_worker_that_stops_answering_is_resent_elsewhere(
    stand_ins: list[ServiceProcess],
) -> None:
    """The worker freezes mid-stream (SIGSTOP): its probe fails, the stream is abandoned and re-sent."""
    frozen = stand_ins[0]
    assert frozen.proc is not None

    async def scenario() -> tuple[dict[str, Any], Steps, list[int]]:
        ctl = Control(stand_ins)
        await ctl.script(0, gated=True)
        await ctl.script(1)
        pool = make_pool(stand_ins, health_timeout_s=0.5)
        await pool.probe_all()
        steps: Steps = []
        task = asyncio.create_task(call(pool, 3, steps))
        await ctl.release(0)
        await until(lambda: len(steps) == 1)
        os.kill(frozen.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            await pool.probe_all()
            body = await task
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        return body, steps, in_flight(pool)

    body, steps, flying = asyncio.run(scenario())
    assert body["port"] == stand_ins[1].port
    assert steps == [(1, 3), (1, 3), (2, 3), (3, 3)]
    assert flying == [0, 0]
