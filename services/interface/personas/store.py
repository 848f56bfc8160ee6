"""Where personas live: the store's contract and the SQLite store (the default; Redis: redis_store.py).

A persona belongs to the API key that made it: every read and write names the owner, and another owner's
persona is answered exactly as a missing one (None). The avatar candidates (PNG bytes) are kept apart from the
record, which stays small enough to read on every chat request.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.interface.personas.records import MAX_AVATARS, PersonaLimitReached, PersonaRecord
from services.interface.sqlite_files import open_sqlite

# A change applied to a record read in the same atomic step; it may raise to refuse the change.
Change = Callable[[PersonaRecord], PersonaRecord]


def owner_key(owner: str | None) -> str:
    return owner or ""


def limit_message(max_per_owner: int) -> str:
    return f"this API key already has {max_per_owner} personas, the most it may keep; delete some first"


class PersonaStore(ABC):
    """The contract both stores keep; tests/unit/test_persona_store.py runs the same cases on each."""

    def __init__(self, max_per_owner: int) -> None:
        self.max_per_owner = max_per_owner

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what start took."""

    @abstractmethod
    async def create(self, record: PersonaRecord, avatars: Sequence[bytes] = ()) -> PersonaRecord:
        """Insert the record and its avatar candidates together; PersonaLimitReached when the owner already
        has ``max_per_owner`` personas (checked and inserted in one atomic step)."""

    @abstractmethod
    async def get(self, owner: str | None, persona_id: str) -> PersonaRecord | None: ...

    @abstractmethod
    async def count(self, owner: str | None) -> int: ...

    async def check_room(self, owner: str | None) -> None:
        """PersonaLimitReached now, before work is spent on a persona that ``create`` would refuse (which
        still checks: this one is not atomic with it)."""
        if await self.count(owner) >= self.max_per_owner:
            raise PersonaLimitReached(limit_message(self.max_per_owner), stage="personas")

    @abstractmethod
    async def list(
        self, owner: str | None, limit: int, cursor: int | None = None
    ) -> tuple[list[PersonaRecord], int | None]:
        """The owner's personas, newest first, older than ``cursor``; and the cursor of the next page (None
        on the last)."""

    @abstractmethod
    async def update(self, owner: str | None, persona_id: str, change: Change) -> PersonaRecord | None:
        """Read, ``change`` and write the record as one atomic step; the new record, or None when missing."""

    @abstractmethod
    async def avatar(self, owner: str | None, persona_id: str, index: int) -> bytes | None: ...

    @abstractmethod
    async def delete(self, owner: str | None, persona_id: str) -> bool:
        """Delete the record and its avatars; False when there was none."""


# --- SQLite ------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS personas (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS personas_owner ON personas (owner, seq);
CREATE TABLE IF NOT EXISTS persona_avatars (
    persona_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (persona_id, idx)
);
"""


class SqlitePersonaStore(PersonaStore):
    """One SQLite file; calls run on a thread (a write costs a file sync that must stay off the event loop),
    one at a time per process. Writes take the database's write lock first (BEGIN IMMEDIATE), so the count
    behind the per-key bound is exact even if two processes were ever pointed at one file."""

    def __init__(self, path: Path, max_per_owner: int) -> None:
        super().__init__(max_per_owner)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await asyncio.to_thread(self._open)

    def _open(self) -> sqlite3.Connection:
        return open_sqlite(self.path, _SCHEMA, timeout_s=10.0)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool = False) -> Any:
        conn = self._conn
        if conn is None:
            raise RuntimeError("persona store is not started")

        def locked() -> Any:
            with self._lock:
                if not write:
                    return fn(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result

        return await asyncio.to_thread(locked)

    async def create(self, record: PersonaRecord, avatars: Sequence[bytes] = ()) -> PersonaRecord:
        if len(avatars) > MAX_AVATARS:
            raise ValueError(f"at most {MAX_AVATARS} avatars")
        owner = owner_key(record.owner)
        text = json.dumps(record.to_dict())

        def insert(conn: sqlite3.Connection) -> PersonaRecord:
            (count,) = conn.execute("SELECT count(*) FROM personas WHERE owner = ?", (owner,)).fetchone()
            if count >= self.max_per_owner:
                raise PersonaLimitReached(limit_message(self.max_per_owner), stage="personas")
            conn.execute(
                "INSERT INTO personas (id, owner, record) VALUES (?, ?, ?)", (record.id, owner, text)
            )
            conn.executemany(
                "INSERT INTO persona_avatars (persona_id, idx, png) VALUES (?, ?, ?)",
                [(record.id, i, png) for i, png in enumerate(avatars)],
            )
            return record

        return await self._run(insert, write=True)

    async def get(self, owner: str | None, persona_id: str) -> PersonaRecord | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT record FROM personas WHERE id = ? AND owner = ?", (persona_id, owner_key(owner))
            ).fetchone()
        )
        return PersonaRecord.from_dict(json.loads(row[0])) if row else None

    async def count(self, owner: str | None) -> int:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT count(*) FROM personas WHERE owner = ?", (owner_key(owner),)
            ).fetchone()
        )
        return int(row[0])

    async def list(
        self, owner: str | None, limit: int, cursor: int | None = None
    ) -> tuple[list[PersonaRecord], int | None]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT seq, record FROM personas WHERE owner = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (owner_key(owner), cursor if cursor is not None else 2**63 - 1, limit + 1),
            ).fetchall()
        )
        page = rows[:limit]
        records = [PersonaRecord.from_dict(json.loads(text)) for _, text in page]
        return records, (page[-1][0] if len(rows) > limit else None)

    async def update(self, owner: str | None, persona_id: str, change: Change) -> PersonaRecord | None:
        def write(conn: sqlite3.Connection) -> PersonaRecord | None:
            row = conn.execute(
                "SELECT record FROM personas WHERE id = ? AND owner = ?", (persona_id, owner_key(owner))
            ).fetchone()
            if row is None:
                return None
            record = change(PersonaRecord.from_dict(json.loads(row[0])))
            conn.execute(
                "UPDATE personas SET record = ? WHERE id = ?", (json.dumps(record.to_dict()), persona_id)
            )
            return record

        return await self._run(write, write=True)

    async def avatar(self, owner: str | None, persona_id: str, index: int) -> bytes | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT a.png FROM persona_avatars a JOIN personas p ON p.id = a.persona_id"
                " WHERE a.persona_id = ? AND a.idx = ? AND p.owner = ?",
                (persona_id, index, owner_key(owner)),
            ).fetchone()
        )
        return bytes(row[0]) if row else None

    async def delete(self, owner: str | None, persona_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            gone = conn.execute(
                "DELETE FROM personas WHERE id = ? AND owner = ?", (persona_id, owner_key(owner))
            ).rowcount
            if gone:
                conn.execute("DELETE FROM persona_avatars WHERE persona_id = ?", (persona_id,))
            return bool(gone)

        return await self._run(remove, write=True)
