"""The interface's SQLite files (jobs, personas): one way to open them."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_sqlite(path: Path, schema: str, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection for a store that drives it from worker threads (autocommit; the store locks).

    WAL: readers (GET, SSE snapshots) never wait for a writer; NORMAL: a power cut may lose the last
    transactions, not corrupt the file, and a process kill loses nothing.
    """
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(schema)
    return conn
