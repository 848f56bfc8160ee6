"""Who runs a job and when: the queue bounds, the order and the running tasks.

Two dispatchers keep one contract. The local one (the default) is the endpoint queues of this process
(shared/queue_manager.py: bounds, SLA admission, fair share between keys, consumers sized by the pools). The
Redis one (``redis_dispatch.py``) holds the bounds in Redis and the queue in one Stream per endpoint, so that
every replica admits against the same numbers and any replica may run any job.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from services.interface.jobs.records import JobRecord
from shared.queue_manager import BoundedQueue, QueueItem

# Runs one job to its end (the manager's): raises what the work raised, so a queue learns service times from
# successes only (shared/queue_manager.py says why).
RunJob = Callable[[str], Awaitable[None]]


class Dispatcher(ABC):
    # Set when the process stops: a job cancelled then is being left for later, not cancelled by anyone.
    closing: bool = False

    async def start(self, run: RunJob) -> None:
        self._run = run

    async def close(self) -> None:
        """Stop the consumers; queued jobs stay in the store."""
        self.closing = True

    @abstractmethod
    async def check(self, route: str, weight: int, owner: str | None) -> None:
        """Raise what admission would raise right now (Overloaded, NoHealthyWorker), queueing nothing: cheap,
        so a route can refuse before it reads an upload or writes a record."""

    @abstractmethod
    async def enqueue(self, record: JobRecord, *, admit: bool = True) -> None:
        """Admit (unless ``admit`` is off: a job admitted before, resumed after a restart) and queue."""

    @abstractmethod
    async def withdraw(self, record: JobRecord) -> None:
        """A queued job that was cancelled leaves the queue and stops counting against its bounds."""

    @abstractmethod
    def stop_local(self, job_id: str) -> bool:
        """Cancel the job's task when it runs in this process; whether it did."""


class LocalDispatcher(Dispatcher):
    def __init__(self, queues: dict[str, BoundedQueue]) -> None:
        self.queues = queues
        self._items: dict[str, QueueItem] = {}

    async def check(self, route: str, weight: int, owner: str | None) -> None:
        self.queues[route].check_admission(weight, owner)

    async def enqueue(self, record: JobRecord, *, admit: bool = True) -> None:
        job_id = record.id
        item = self.queues[record.route].enqueue(
            lambda: self._run(job_id), record.weight, record.owner, admit=admit
        )
        self._items[job_id] = item
        item.future.add_done_callback(lambda future: self._forget(job_id, future))

    def _forget(self, job_id: str, future: asyncio.Future[object]) -> None:
        self._items.pop(job_id, None)
        # The outcome is the store's and the waiter's (manager.py); the future only has to be read.
        if not future.cancelled():
            with contextlib.suppress(BaseException):
                future.exception()

    async def withdraw(self, record: JobRecord) -> None:
        item = self._items.pop(record.id, None)
        if item is not None:
            self.queues[record.route].withdraw(item)

    def stop_local(self, job_id: str) -> bool:
        item = self._items.get(job_id)
        if item is None or item.task is None:
            return False
        item.task.cancel()
        return True
