"""Where jobs live: the store's contract, the in-process event fan-out, and the SQLite store (the default).

Every state change is a compare-and-set (``transition``): a job moves from one of the states it may leave to
the next, or not at all. That is what makes each job end in exactly one terminal state when a cancel, a
finishing run and a reclaiming replica race for it.

Events travel through the store because on several replicas the one that runs a job is not always the one a
client streams from: the SQLite store fans them out in this process, the Redis store over pub/sub. A
subscriber subscribes before it reads the job's state, so it misses nothing between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import IO, Any

from services.interface.jobs.records import JobEvent, JobRecord, JobStatus
from services.interface.sqlite_files import open_sqlite
from shared.errors import ImgPodError


class IdempotencyConflict(ImgPodError):
    status_code = 409
    code = "idempotency_conflict"


class JobStoreBusy(RuntimeError):
    """The SQLite jobs file belongs to another running interface."""


class EventHub:
    """In-process fan-out of job events and cancel signals: per job, every subscriber gets every event.

    A slow subscriber (an SSE client that stopped reading) must not block the others or the job: each has a
    bounded buffer, and when it overflows the oldest progress events are dropped; terminal events are kept.
    """

    def __init__(self, buffer: int = 256) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[JobEvent]]] = defaultdict(set)
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._buffer = buffer

    def publish(self, event: JobEvent) -> None:
        for queue in self._subscribers.get(event.job_id, ()):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[JobEvent]]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(self._buffer)
        self._subscribers[job_id].add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[job_id]

    def on_cancel(self, listener: Callable[[str], None]) -> None:
        self._cancel_listeners.append(listener)

    def cancel(self, job_id: str) -> None:
        for listener in self._cancel_listeners:
            listener(job_id)


class JobStore(ABC):
    """The contract both stores keep; tests/unit/test_job_store.py runs the same cases on each."""

    def __init__(self) -> None:
        self.hub = EventHub()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections and start background readers."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what start took."""

    @property
    def shared(self) -> bool:
        """Whether other interface replicas see this store (their jobs, events and cancels)."""
        return False

    @abstractmethod
    async def create(self, record: JobRecord, blob: bytes | None = None) -> JobRecord:
        """Insert a new record (and its upload). When the owner already used the record's idempotency key:
        the earlier record if the body hash matches, else IdempotencyConflict; nothing is inserted then."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    async def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        """The owner's job made with this Idempotency-Key, if any."""

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Forget a job nobody has seen (refused at the queue after its record was written)."""

    @abstractmethod
    async def blob(self, job_id: str) -> bytes | None: ...

    @abstractmethod
    async def transition(
        self, job_id: str, from_: Collection[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        """Atomically: when the job's status is in ``from_``, set ``to`` and ``fields``; the new record, or
        None when the job is in another state (someone else moved it) or unknown."""

    @abstractmethod
    async def set_progress(self, job_id: str, step: int, total: int) -> None:
        """Record the latest step of a running job (for GET); lossy by design, the events carry each step."""

    @abstractmethod
    async def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first: what a restarted interface resumes."""

    @abstractmethod
    async def expired_ids(self, now: float) -> list[str]:
        """Terminal jobs whose ``expires_at`` has passed and whose output is still held."""

    @abstractmethod
    async def drop_output(self, job_id: str) -> None:
        """Delete the job's result and upload (the record stays, to answer ``expired``)."""

    @abstractmethod
    async def position(self, record: JobRecord) -> int:
        """Queued jobs of the same route created before this one (0: next)."""

    async def publish(self, event: JobEvent) -> None:
        self.hub.publish(event)

    def subscribe(self, job_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[JobEvent]]:
        return self.hub.subscribe(job_id)

    async def signal_cancel(self, job_id: str) -> None:
        """Tell whichever replica runs the job to stop it."""
        self.hub.cancel(job_id)


# --- SQLite ------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    owner TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    idempotency_key TEXT,
    record TEXT NOT NULL,
    result TEXT,
    blob BLOB
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, route, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE result IS NOT NULL OR blob IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (coalesce(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""
# Columns kept outside the record's JSON: indexed, or large (the result's images, the upload).
_COLUMNS = ("route", "owner", "status", "created_at", "expires_at", "idempotency_key")


class SqliteJobStore(JobStore):
    """One SQLite file; every call runs on one thread of its own (sqlite3 connections are not for sharing
    between threads, and a write costs a file sync that must stay off the event loop)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._owner_lock: IO[bytes] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One interface per file: a second one would resume the first one's queued jobs as its own and run
        # them twice. Several replicas share jobs through Redis instead.
        lock = (self.path.parent / (self.path.name + ".lock")).open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise JobStoreBusy(
                f"another interface holds the jobs file {self.path}; give each interface its own file, or set"
                " INTERFACE_JOBS_REDIS_URL to share jobs between replicas"
            ) from None
        self._owner_lock = lock
        self._conn = await asyncio.to_thread(self._open)

    def _open(self) -> sqlite3.Connection:
        return open_sqlite(self.path, _SCHEMA)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)
        if self._owner_lock is not None:
            self._owner_lock.close()
            self._owner_lock = None

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._conn
        if conn is None:
            raise RuntimeError("job store is not started")

        def locked() -> Any:
            with self._lock:
                return fn(conn)

        return await asyncio.to_thread(locked)

    async def create(self, record: JobRecord, blob: bytes | None = None) -> JobRecord:
        data = record.to_dict()
        result = data.pop("result")
        row = (record.id, *(data[c] for c in _COLUMNS), json.dumps(data), _dumps(result), blob)

        def insert(conn: sqlite3.Connection) -> JobRecord:
            try:
                conn.execute(
                    "INSERT INTO jobs (id, route, owner, status, created_at, expires_at, idempotency_key,"
                    " record, result, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                return record
            except sqlite3.IntegrityError:
                if record.idempotency_key is None:
                    raise
            earlier = _find_idempotent(conn, record.owner, record.idempotency_key)
            assert earlier is not None, "the unique index said this key is taken"
            if earlier.body_hash != record.body_hash:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with another request body", param="Idempotency-Key"
                )
            return earlier

        return await self._run(insert)

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._run(
            lambda conn: conn.execute("SELECT record, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return _record(*row) if row else None

    async def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        return await self._run(lambda conn: _find_idempotent(conn, owner, key))

    async def delete(self, job_id: str) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    async def blob(self, job_id: str) -> bytes | None:
        row = await self._run(
            lambda conn: conn.execute("SELECT blob FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return row[0] if row else None

    async def transition(
        self, job_id: str, from_: Collection[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        allowed = {s.value for s in from_}

        def cas(conn: sqlite3.Connection) -> JobRecord | None:
            # One connection behind one lock: the read and the write below are one atomic step.
            row = conn.execute("SELECT record, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            record = _record(*row)
            if record.status.value not in allowed:
                return None
            for name, value in fields.items():
                setattr(record, name, value)
            record.status = to
            data = record.to_dict()
            result = data.pop("result")
            conn.execute(
                "UPDATE jobs SET status = ?, expires_at = ?, record = ?, result = ? WHERE id = ?",
                (to.value, record.expires_at, json.dumps(data), _dumps(result), job_id),
            )
            return record

        return await self._run(cas)

    async def set_progress(self, job_id: str, step: int, total: int) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET record = json_set(record, '$.step', ?, '$.total_steps', ?)"
                " WHERE id = ? AND status = 'running'",
                (step, total, job_id),
            )

        await self._run(update)

    async def unfinished(self) -> list[JobRecord]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT record, result FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
        )
        return [_record(*row) for row in rows]

    async def expired_ids(self, now: float) -> list[str]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT id FROM jobs WHERE expires_at <= ? AND (result IS NOT NULL OR blob IS NOT NULL)",
                (now,),
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def drop_output(self, job_id: str) -> None:
        await self._run(
            lambda conn: conn.execute("UPDATE jobs SET result = NULL, blob = NULL WHERE id = ?", (job_id,))
        )

    async def position(self, record: JobRecord) -> int:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND route = ? AND created_at < ?",
                (record.route, record.created_at),
            ).fetchone()
        )
        return int(row[0])


def _find_idempotent(conn: sqlite3.Connection, owner: str | None, key: str) -> JobRecord | None:
    row = conn.execute(
        "SELECT record, result FROM jobs WHERE coalesce(owner, '') = ? AND idempotency_key = ?",
        (owner or "", key),
    ).fetchone()
    return _record(*row) if row else None


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _record(record: str, result: str | None) -> JobRecord:
    data = json.loads(record)
    data["result"] = json.loads(result) if result is not None else None
    return JobRecord.from_dict(data)
