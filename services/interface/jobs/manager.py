"""The job manager: submit, run, watch, cancel and expire jobs; the one path of every generate route.

A route prepares its request (validation and the word rules, before anything is queued), then hands the
manager a ``JobSpec``: the route, the request as JSON with its seed fixed, and the work. The manager admits
it (the dispatcher's bounds, then the key's rate limits), records it, queues it, and either answers 202 with
the job's URLs (``Prefer: respond-async``) or waits for it on the client's connection, as the routes always
did; a waiting client that disconnects cancels its job.

Running a job (``_run``): the store's compare-and-set moves it from queued to running (a job cancelled or
taken by another replica meanwhile is skipped), the work runs with a progress sink that relays the image
worker's steps as events, and the outcome is one more compare-and-set into exactly one terminal state.

After a restart or on another replica the work closure is gone: ``rebuild`` makes it again from the stored
spec through the route's own prepare step (the fixed seed makes the image the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from services.interface.jobs.dispatch import Dispatcher
from services.interface.jobs.progress import progress_sink
from services.interface.jobs.records import (
    TERMINAL,
    TERMINAL_EVENT,
    JobEvent,
    JobRecord,
    JobRoute,
    JobStatus,
    Webhook,
    new_job_id,
)
from services.interface.jobs.store import IdempotencyConflict, JobStore
from shared.errors import ErrorReply, ImgPodError, InferenceFailed
from shared.metrics import ServiceMetrics
from shared.progress_stream import Progress

log = logging.getLogger(__name__)
Work = Callable[[], Awaitable[BaseModel]]
# Makes a job's work again from its stored spec and upload (after a restart, or on another replica).
Rebuild = Callable[[JobRecord, bytes | None], Awaitable[Work]]
# A job that was running when its replica died is run once more (generations are safe to repeat: fixed seed).
MAX_ATTEMPTS = 2
# How often a waiter on another replica's job reads its record again, in case an event was lost.
REREAD_S = 2.0


class JobFailed(ImgPodError):
    """A job's stored failure, raised again for a client that waits for it elsewhere than where it ran."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(
            reply.get("detail", "the job failed"),
            stage=reply.get("stage"),
            extra=reply.get("extra") or {},
            param=reply.get("param"),
        )
        self.status_code = int(reply.get("status", 500))  # type: ignore[misc]
        self.code = str(reply.get("code", "internal_error"))  # type: ignore[misc]
        self._headers = dict(reply.get("headers") or {})

    def headers(self) -> dict[str, str]:
        return self._headers


class JobCanceled(Exception):
    """The job was cancelled (by its client, or by a cancel call) before it finished."""


@dataclass(slots=True)
class JobSpec:
    route: JobRoute
    # The request as the route's model validates it, seed fixed; what ``rebuild`` takes.
    spec: dict[str, Any]
    weight: int
    work: Work
    blob: bytes | None = None
    # What a replay with the same Idempotency-Key must match: the client's request, before the seed was fixed.
    body_hash: str | None = None


@dataclass(frozen=True, slots=True)
class JobConfig:
    output_ttl_s: float = 3600.0
    sweep_interval_s: float = 30.0
    # How long a cancel call waits for a running job to stop before it answers with what it sees.
    cancel_wait_s: float = 5.0


def body_hash(*parts: bytes | str | dict[str, Any] | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict):
            part = json.dumps(part, sort_keys=True, separators=(",", ":"))
        if isinstance(part, str):
            part = part.encode()
        digest.update(part or b"")
        digest.update(b"\x00")
    return digest.hexdigest()


class JobManager:
    def __init__(
        self,
        store: JobStore,
        dispatcher: Dispatcher,
        rebuild: Rebuild,
        config: JobConfig,
        metrics: ServiceMetrics,
        notify: Callable[[JobRecord, JobEvent], None] | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.rebuild = rebuild
        self.config = config
        self.notify = notify
        # Work closures of jobs submitted here: no rebuild when the job also runs here (the common case).
        self._works: dict[str, Work] = {}
        # Jobs not in the store (see ``submit``), by id: their transitions are made here.
        self._ephemeral: dict[str, JobRecord] = {}
        self._submitted: dict[str, JobRecord] = {}
        self._uploads: dict[str, bytes] = {}
        # Outcomes of jobs that run here, for a waiting client on this replica: the response object itself.
        self._outcomes: dict[str, asyncio.Future[BaseModel]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._m_jobs = metrics.counter(
            "imgpod_jobs_total", "Jobs by route and final status", ("route", "status")
        )
        self._m_async = metrics.counter(
            "imgpod_jobs_async_total", "Jobs submitted with respond-async", ("route",)
        )

    # --- life ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        self.store.hub.on_cancel(self._on_cancel_signal)
        await self.dispatcher.start(self._run)
        if not self.store.shared:
            # Alone on its store: whatever was queued or running belonged to this interface before it stopped.
            # (On Redis, jobs of a dead replica are reclaimed by the dispatcher, not by whoever starts next.)
            await self._resume()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="jobs-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if not self.dispatcher.closing:
            await self.dispatcher.close()
        await self.store.close()

    async def _resume(self) -> None:
        resumed = failed = 0
        for record in await self.store.unfinished():
            if not record.asynchronous:
                # Its client waited on a connection that the restart closed: nobody wants the answer now.
                await self._finish(record, JobStatus.canceled, from_=(JobStatus.queued, JobStatus.running))
                continue
            if record.status is JobStatus.running:
                if record.attempts >= MAX_ATTEMPTS:
                    reply = _interrupted_reply()
                    await self._finish(record, JobStatus.failed, from_=(JobStatus.running,), error=reply)
                    failed += 1
                    continue
                moved = await self.store.transition(record.id, (JobStatus.running,), JobStatus.queued)
                if moved is None:
                    continue
                record = moved
            await self.dispatcher.enqueue(record, admit=False)
            resumed += 1
        if resumed or failed:
            log.info("jobs resumed after a restart", extra={"resumed": resumed, "failed": failed})

    # --- submit ----------------------------------------------------------------------------------------

    async def submit(
        self,
        job: JobSpec,
        owner: str | None,
        *,
        asynchronous: bool,
        idempotency_key: str | None = None,
        webhook: Webhook | None = None,
        keep_output: bool = False,
        job_id: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Record and queue a job that admission let in; (the record, whether it is new). A replay of an
        idempotent request gets the earlier job, and takes no place in the queue.

        ``job_id``: an id the caller made (``new_job_id``) to subscribe to the job's events before it can
        start; such a job is stored, so its events are published. ``keep_output``: store the result even
        though the client waits for it.
        """
        record = JobRecord(
            id=job_id or new_job_id(),
            route=job.route,
            owner=owner,
            spec=job.spec,
            weight=job.weight,
            asynchronous=asynchronous,
            idempotency_key=idempotency_key,
            body_hash=job.body_hash,
            webhook=webhook,
            has_blob=job.blob is not None,
            keeps_output=keep_output,
        )
        # A synchronous job on this interface's own store, with no key or webhook to honour later, is never
        # seen by anyone but its waiter, and a restart cancels it anyway: it lives in memory only. Three
        # store writes per request were a third of the interface's CPU per proxied call (bench, echo).
        durable = (
            asynchronous
            or self.store.shared
            or idempotency_key is not None
            or webhook is not None
            or keep_output
            or job_id is not None
        )
        if durable:
            stored = await self.store.create(record, job.blob)
            if stored.id != record.id:
                return stored, False
        else:
            self._ephemeral[record.id] = record
        self._works[record.id] = job.work
        self._submitted[record.id] = record
        if job.blob is not None:
            self._uploads[record.id] = job.blob
        if not asynchronous:
            # Only a waiting client takes the outcome (``wait`` drops it then); an async job's outcome is the
            # store's, and a future kept for it would hold its images in memory for good.
            self._outcomes[record.id] = asyncio.get_running_loop().create_future()
        try:
            # Admitted again in the same step that queues it: the check before was a cheap early refusal,
            # and other requests may have taken the last places while the record was written.
            await self.dispatcher.enqueue(record)
        except BaseException:
            # Refused (or the client left) before anyone saw the job: no record, so the same Idempotency-Key
            # may be sent again once the queue has room.
            self._forget(record.id)
            if durable:
                await self.store.delete(record.id)
            raise
        if asynchronous:
            self._m_async.labels(job.route).inc()
        # No "queued" event here: nobody can be subscribed to a job whose id is not given out yet. A stream
        # opened later starts with the job's state (routes.py), its position included.
        return record, True

    def check_replay(self, earlier: JobRecord, digest: str | None) -> JobRecord:
        """The earlier job of a replayed Idempotency-Key, when the request is the same one."""
        if earlier.body_hash != digest:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with another request body", param="Idempotency-Key"
            )
        return earlier

    def _drop_local(self, job_id: str) -> None:
        """What this process holds of a job besides its outcome: nothing is left once it ran or left."""
        self._ephemeral.pop(job_id, None)
        self._works.pop(job_id, None)
        self._submitted.pop(job_id, None)
        self._uploads.pop(job_id, None)

    def _forget(self, job_id: str) -> None:
        self._drop_local(job_id)
        outcome = self._outcomes.pop(job_id, None)
        if outcome is not None and not outcome.done():
            outcome.cancel()

    # --- run -------------------------------------------------------------------------------------------

    async def _run(self, job_id: str) -> None:
        # Submitted here: its attempts are known (none); the compare-and-set below is the only read needed.
        record = self._submitted.pop(job_id, None) or await self.store.get(job_id)
        if record is None or record.status.terminal:
            return  # cancelled while queued
        # Running here means reclaimed (Redis): the replica that ran it went silent past the claim time.
        # It runs once more, or fails.
        if record.status is JobStatus.running and record.attempts >= MAX_ATTEMPTS:
            await self._finish(
                record, JobStatus.failed, from_=(JobStatus.running,), error=_interrupted_reply()
            )
            return
        started = await self._transition(
            job_id,
            (record.status,),
            JobStatus.running,
            started_at=time.time(),
            attempts=record.attempts + 1,
        )
        if started is None:
            return  # taken by another replica, or cancelled, meanwhile
        record = started
        await self._emit(record, "started", {"attempt": record.attempts})
        outcome = self._outcomes.get(job_id)
        try:
            work = self._works.pop(job_id, None)
            if work is None:
                blob = self._uploads.pop(job_id, None)
                if blob is None and record.has_blob:
                    blob = await self.store.blob(job_id)
                work = await self.rebuild(record, blob)
            token = progress_sink.set(self._progress_sink(record))
            try:
                response = await work()
            finally:
                progress_sink.reset(token)
        except asyncio.CancelledError:
            if self.dispatcher.closing:
                # Shutting down, not cancelled: the job stays running for a restart or another replica to
                # run again (its seed is fixed), rather than end as if someone had cancelled it.
                raise
            await self._finish(record, JobStatus.canceled, from_=(JobStatus.running,))
            if outcome is not None and not outcome.done():
                outcome.set_exception(JobCanceled())
            raise
        except ImgPodError as exc:
            if exc.status_code >= 500 and outcome is None:
                # Nobody waits on a connection here (an async job, or one rebuilt after a restart or on
                # another replica), so no error handler logs it: the cause is logged here, under the
                # submitter's request id (the work runs in its context).
                log.warning(
                    "job failed",
                    extra={"job_id": job_id, "code": exc.code, "stage": exc.stage, "detail": exc.detail},
                    exc_info=exc,
                )
            await self._finish(record, JobStatus.failed, from_=(JobStatus.running,), error=_reply_of(exc))
            if outcome is not None and not outcome.done():
                outcome.set_exception(exc)
            raise
        except Exception as exc:
            log.error("job failed", extra={"job_id": job_id, "route": record.route}, exc_info=exc)
            public = InferenceFailed("the job failed", stage="job")
            await self._finish(record, JobStatus.failed, from_=(JobStatus.running,), error=_reply_of(public))
            if outcome is not None and not outcome.done():
                outcome.set_exception(public)
            raise
        else:
            # The waiter on this replica takes the object itself; the store keeps the JSON for whoever asks
            # later: a polling client, an idempotent replay, a waiter on another replica.
            keep = (
                record.asynchronous
                or self.store.shared
                or record.idempotency_key is not None
                or record.keeps_output
            )
            result = await asyncio.to_thread(response.model_dump, mode="json") if keep else None
            await self._finish(record, JobStatus.succeeded, from_=(JobStatus.running,), result=result)
            if outcome is not None and not outcome.done():
                outcome.set_result(response)
        finally:
            self._drop_local(job_id)

    def _progress_sink(self, record: JobRecord) -> Callable[[Progress], None]:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        def on_progress(progress: Progress) -> None:
            # Called from the pool's stream reader on this loop; the event goes out without waiting on it.
            task = loop.create_task(self._progressed(record, progress))
            pending.add(task)
            task.add_done_callback(pending.discard)

        return on_progress

    async def _progressed(self, record: JobRecord, progress: Progress) -> None:
        if progress.partial_image is not None:
            # A partial image comes after its step's own line, maybe after later steps: no new position. For
            # the event streams only: a webhook's progress deliveries are steps (megabytes each, otherwise).
            data = {"step": progress.step, "total": progress.total, "partial_image": progress.partial_image}
            await self._emit(record, "progress", data, webhook=False)
            return
        record.step, record.total_steps = progress.step, progress.total
        if record.id in self._ephemeral:
            return  # nobody can watch it
        await self._emit(record, "progress", {"step": progress.step, "total": progress.total})
        await self.store.set_progress(record.id, progress.step, progress.total)

    async def _finish(
        self, record: JobRecord, status: JobStatus, *, from_: tuple[JobStatus, ...], **fields: Any
    ) -> JobRecord | None:
        now = time.time()
        done = await self._transition(
            record.id, from_, status, finished_at=now, expires_at=now + self.config.output_ttl_s, **fields
        )
        if done is None:
            return None
        self._m_jobs.labels(done.route, status.value).inc()
        await self._emit(done, TERMINAL_EVENT[status], {"job": self.view(done)})
        return done

    async def _transition(
        self, job_id: str, from_: Collection[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        record = self._ephemeral.get(job_id)
        if record is None:
            return await self.store.transition(job_id, from_, to, **fields)
        # One event loop owns these records: the check and the change are one step, as in the store's CAS.
        if record.status not in from_:
            return None
        for name, value in fields.items():
            setattr(record, name, value)
        record.status = to
        return record

    async def _emit(
        self, record: JobRecord, type_: Any, data: dict[str, Any], *, webhook: bool = True
    ) -> None:
        if record.id in self._ephemeral:
            return
        event = JobEvent(record.id, type_, data)
        await self.store.publish(event)
        if webhook and self.notify is not None and record.webhook is not None:
            self.notify(record, event)

    # --- wait, watch, cancel ---------------------------------------------------------------------------

    async def wait(self, record: JobRecord) -> BaseModel | dict[str, Any]:
        """The job's response: the object when it ran here, its stored JSON when it ran elsewhere; raises the
        job's error, or JobCanceled."""
        outcome = self._outcomes.get(record.id)
        if outcome is None:
            return await self._wait_stored(record)
        # The one waiter takes the outcome out however it ends: a waiter that went away leaves nothing behind.
        try:
            if not self.store.shared:
                return await asyncio.shield(outcome)
            # On a shared store any replica may run it: the outcome here, or the record, whichever ends first.
            stored = asyncio.ensure_future(self._wait_stored(record))
            try:
                await asyncio.wait({outcome, stored}, return_when=asyncio.FIRST_COMPLETED)
                return outcome.result() if outcome.done() else stored.result()
            finally:
                stored.cancel()
        finally:
            self._outcomes.pop(record.id, None)

    async def _wait_stored(self, record: JobRecord) -> dict[str, Any]:
        async with self.store.subscribe(record.id) as events:
            current = await self.store.get(record.id)
            while current is not None and not current.status.terminal:
                # Pub/sub keeps nothing while a connection is down: the record is read again now and then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events.get(), REREAD_S)
                current = await self.store.get(record.id)
        return _outcome_of(current)

    async def cancel(self, record: JobRecord) -> JobRecord:
        """Cancel a job: a queued one leaves the queue, a running one stops at the worker's next step."""
        if record.status.terminal:
            return record
        done = await self._finish(record, JobStatus.canceled, from_=(JobStatus.queued,))
        if done is not None:
            await self.dispatcher.withdraw(done)
            outcome = self._outcomes.get(record.id)
            if outcome is not None and not outcome.done():
                outcome.set_exception(JobCanceled())
            self._forget(record.id)
            return done
        if record.id in self._ephemeral:
            # Its waiter went away (the only one who knows its id): stop it here, no need to wait.
            self._outcomes.pop(record.id, None)
            self.dispatcher.stop_local(record.id)
            return record
        async with self.store.subscribe(record.id) as events:
            await self.store.signal_cancel(record.id)
            deadline = asyncio.get_running_loop().time() + self.config.cancel_wait_s
            while True:
                current = await self.store.get(record.id)
                if current is None or current.status.terminal:
                    return current or record
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return current
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events.get(), left)

    def _on_cancel_signal(self, job_id: str) -> None:
        self.dispatcher.stop_local(job_id)

    # --- views and expiry ------------------------------------------------------------------------------

    async def find(self, job_id: str, owner: str | None) -> JobRecord | None:
        """The job when ``owner`` may see it (its own key; anyone on an open deployment), else None."""
        record = await self.store.get(job_id)
        if record is None or record.owner != owner:
            return None
        due = record.expires_at is not None and record.expires_at <= time.time()
        if due and record.status in TERMINAL and record.status is not JobStatus.expired:
            return await self._expire(record) or record
        return record

    async def public_view(self, record: JobRecord) -> dict[str, Any]:
        """``view`` with the position of a queued job (a store query, so only for a job that is queued)."""
        position = await self.store.position(record) if record.status is JobStatus.queued else None
        return self.view(record, position)

    def view(self, record: JobRecord, position: int | None = None) -> dict[str, Any]:
        """The public shape of a job (docs/JOBS.md): no owner, spec or upload."""
        urls = job_urls(record.id)
        view: dict[str, Any] = {
            "id": record.id,
            "object": "job",
            "route": record.route,
            "status": record.status.value,
            "created_at": _iso(record.created_at),
            "started_at": _iso(record.started_at),
            "finished_at": _iso(record.finished_at),
            "expires_at": _iso(record.expires_at),
            "urls": urls,
        }
        if record.status is JobStatus.queued and position is not None:
            view["position"] = position
        if record.step is not None and record.status is JobStatus.running:
            view["progress"] = {"step": record.step, "total": record.total_steps}
        if record.status is JobStatus.succeeded and record.result is not None:
            view["result"] = record.result
        if record.error is not None:
            view["error"] = _public_error(record.error)
        return view

    async def _expire(self, record: JobRecord) -> JobRecord | None:
        expired = await self.store.transition(
            record.id, TERMINAL - {JobStatus.expired}, JobStatus.expired, result=None
        )
        await self.store.drop_output(record.id)
        if expired is not None:
            await self.store.publish(JobEvent(record.id, "expired", {"job": self.view(expired)}))
        return expired

    async def sweep(self) -> int:
        """Delete outputs whose time is up; how many."""
        ids = await self.store.expired_ids(time.time())
        for job_id in ids:
            record = await self.store.get(job_id)
            if record is not None:
                await self._expire(record)
        return len(ids)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("job output sweep failed")


def job_urls(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"get": base, "stream": f"{base}/events", "cancel": f"{base}/cancel"}


def _iso(at: float | None) -> str | None:
    if at is None or not math.isfinite(at):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def _reply_of(exc: ImgPodError) -> dict[str, Any]:
    reply = ErrorReply.of(exc)
    return {
        "status": reply.status,
        "detail": reply.detail,
        "code": reply.code,
        "stage": reply.stage,
        "param": reply.param,
        "extra": dict(reply.extra),
        "headers": dict(reply.headers),
    }


def _interrupted_reply() -> dict[str, Any]:
    return _reply_of(
        InferenceFailed("the job was interrupted twice while it ran; submit it again", stage="job")
    )


def _public_error(reply: dict[str, Any]) -> dict[str, Any]:
    error = {"status": reply["status"], "detail": reply["detail"], "code": reply["code"]}
    if reply.get("stage"):
        error["stage"] = reply["stage"]
    error.update(reply.get("extra") or {})
    return error


def _outcome_of(record: JobRecord | None) -> dict[str, Any]:
    if record is None:
        raise JobFailed({"status": 500, "detail": "the job disappeared", "code": "internal_error"})
    if record.status is JobStatus.succeeded and record.result is not None:
        return record.result
    if record.status is JobStatus.failed and record.error is not None:
        raise JobFailed(record.error)
    if record.status is JobStatus.canceled:
        raise JobCanceled()
    raise JobFailed({"status": 410, "detail": "the job's output has expired", "code": "expired"})
