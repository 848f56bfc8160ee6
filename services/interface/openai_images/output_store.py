"""Outputs behind expiring signed URLs (``response_format=url``), in this process's memory.

A stand-in for the async-jobs store (#15): one class with ``put``/``get``/``signed_path``, so that store can
replace it. URLs are per process: a URL made by one interface replica is served by that replica only. The
signature is the credential (an OpenAI client fetches the URL with no API key), so it covers the id and
the expiry, and a URL past its expiry is a 404 even while its bytes are still held.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FILES_PATH = "/v1/images/files"


@dataclass(frozen=True, slots=True)
class StoredOutput:
    data: bytes
    media_type: str
    expires_at: int


class OutputStore:
    def __init__(self, *, ttl_s: float, max_items: int, max_bytes: int, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._secret = secret or secrets.token_bytes(32)
        self._items: OrderedDict[str, StoredOutput] = OrderedDict()
        self._bytes = 0
        # put may run from a worker thread (next to the base64 decode); a lock keeps the counts true.
        self._lock = threading.Lock()

    def _sign(self, file_id: str, expires_at: int) -> str:
        message = f"{file_id}:{expires_at}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def put(self, data: bytes, media_type: str, now: float | None = None) -> str:
        """Keep ``data`` and answer the signed path (with its query) that serves it until it expires."""
        now = time.time() if now is None else now
        file_id = secrets.token_urlsafe(16)
        expires_at = int(now + self.ttl_s)
        with self._lock:
            self._evict(now, incoming=len(data))
            self._items[file_id] = StoredOutput(data, media_type, expires_at)
            self._bytes += len(data)
        return f"{FILES_PATH}/{file_id}?expires={expires_at}&sig={self._sign(file_id, expires_at)}"

    def get(self, file_id: str, expires: int, sig: str, now: float | None = None) -> StoredOutput | None:
        now = time.time() if now is None else now
        if expires < now or not hmac.compare_digest(sig, self._sign(file_id, expires)):
            return None
        with self._lock:
            item = self._items.get(file_id)
        if item is None or item.expires_at != expires:
            return None
        return item

    def _evict(self, now: float, incoming: int) -> None:
        # Oldest first: expired ones, then whatever makes room for the new item within both bounds.
        while self._items:
            file_id, oldest = next(iter(self._items.items()))
            full = len(self._items) >= self.max_items or self._bytes + incoming > self.max_bytes
            if oldest.expires_at >= now and not full:
                return
            del self._items[file_id]
            self._bytes -= len(oldest.data)

    def __len__(self) -> int:
        return len(self._items)
