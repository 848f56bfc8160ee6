"""The dispatcher on Redis: one queue and one set of bounds for every interface replica.

Each route's queue is a Redis Stream (``q:{route}``) read through one consumer group: any replica's consumer
may take any job, and an entry stays pending (unacknowledged) while its job runs. Admission is one Lua script
over the shared numbers, so two replicas never both take the last place:

- ``waiting:{route}``: job -> "units|owner" for every admitted job no consumer has started (a withdrawn one
  leaves it at once; its stream entry is skipped later by whoever reads it);
- ``running:{route}:{replica}``: the same for the jobs a replica runs. Per replica, so that a dead replica's
  share goes with it: a replica's ``live:{replica}`` key is its heartbeat (TTL = claim idle), and the
  admission script drops the running hash and the consumer count of any member whose heartbeat expired.
  A replica that starts a reclaimed job also takes the job out of every other member's hash, so a unit is
  never counted twice;
- ``consumers:{route}``: replica -> consumers (the pools' count on that replica, refreshed each heartbeat),
  ``members:{route}``: the replicas serving the route;
- ``service:{route}``: the shared mean and variance of service time (the same exponentially weighted
  estimate as shared/queue_manager.py), learned by whichever replica ran a job that succeeded.

The bounds are those of the local BoundedQueue of the route (the same settings on every replica), and the
rules are its rules (see its module docstring), except the turns between owners: the stream serves in
arrival order, so the wait estimate is that of a FIFO; ``max_share`` still bounds what one key holds.

Reclaim: a replica running a job refreshes its entry's idle time every heartbeat (XCLAIM to itself, only
while it still owns it). Any idle consumer runs XAUTOCLAIM with the claim idle time on its route's stream and
runs what it takes: the manager's run decides from the record whether the job is run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.interface.jobs.dispatch import Dispatcher, RunJob
from services.interface.jobs.records import JOB_ROUTES, JobRecord
from shared.queue_manager import BoundedQueue

log = logging.getLogger(__name__)

GROUP = "run"

# ARGV: prefix, route, replica, this replica's consumers, mode ('check', 'enqueue', 'force', 'load'), job,
# units, owner, has owner, capacity, sla_s, max_share, initial mean service s.
# Returns {'ok'}, {'no_worker'}, {reason, wait_s} or, for 'load', {waiting, running, consumers, mean, tail}.
_ADMIT = """
local p, r, me, mine, mode = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local job, weight, owner, has_owner = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9] == '1'
local capacity, sla, max_share = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local waiting_key, members_key = p .. 'waiting:' .. r, p .. 'members:' .. r
local consumers_key = p .. 'consumers:' .. r

if mode == 'force' then
  -- Queued before (a restart): at most once in the queue.
  if redis.call('HEXISTS', waiting_key, job) == 1 then return {'ok'} end
end

local function units(value)
  local w, o = string.match(value, '^(%d+)|(.*)$')
  return tonumber(w), o
end

local consumers, in_flight, held = mine, 0, 0
for _, rep in ipairs(redis.call('SMEMBERS', members_key)) do
  local running_key = p .. 'running:' .. r .. ':' .. rep
  if rep ~= me and redis.call('EXISTS', p .. 'live:' .. rep) == 0 then
    -- Its heartbeat expired: it died, and what it ran is reclaimed (and counted) by others.
    redis.call('SREM', members_key, rep)
    redis.call('DEL', running_key)
    redis.call('HDEL', consumers_key, rep)
  else
    if rep ~= me then consumers = consumers + tonumber(redis.call('HGET', consumers_key, rep) or '0') end
    for _, value in ipairs(redis.call('HVALS', running_key)) do
      local w, o = units(value)
      in_flight = in_flight + w
      if o == owner then held = held + w end
    end
  end
end
local depth = 0
for _, value in ipairs(redis.call('HVALS', waiting_key)) do
  local w, o = units(value)
  depth = depth + w
  if o == owner then held = held + w end
end
local service = redis.call('HMGET', p .. 'service:' .. r, 'mean', 'var')
local mean = tonumber(service[1]) or tonumber(ARGV[13])
local tail = mean + 2 * math.sqrt(tonumber(service[2]) or 0)
if mode == 'load' then
  return {tostring(depth), tostring(in_flight), tostring(consumers), tostring(mean), tostring(tail)}
end

if mode ~= 'force' then
  if consumers <= 0 then return {'no_worker'} end
  if has_owner and max_share < 1.0 then
    local limit = math.max(1, math.floor(max_share * (capacity + consumers)))
    if held > 0 and held + weight > limit then return {'key_share', tostring(mean)} end
  end
  local wait = (depth + math.max(0, in_flight - consumers + 1)) / consumers * mean
  if depth + weight > math.max(capacity, weight) then return {'full', tostring(wait)} end
  if not (depth == 0 and in_flight + weight <= consumers) and wait + tail > sla then
    return {'sla', tostring(wait)}
  end
end
if mode ~= 'check' then
  redis.call('HSET', waiting_key, job, weight .. '|' .. owner)
  redis.call('XADD', p .. 'q:' .. r, '*', 'job', job, 'units', weight, 'owner', owner)
end
return {'ok'}
"""

# A consumer starts a job. ARGV: prefix, route, replica, job, units, owner, reclaimed ('1').
# 1: counted as running here; 0: withdrawn before it started (counts nothing).
_START = """
local p, r, me, job = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local was_waiting = redis.call('HDEL', p .. 'waiting:' .. r, job)
if was_waiting == 0 and ARGV[7] ~= '1' then return 0 end
for _, rep in ipairs(redis.call('SMEMBERS', p .. 'members:' .. r)) do
  if rep ~= me then redis.call('HDEL', p .. 'running:' .. r .. ':' .. rep, job) end
end
redis.call('SADD', p .. 'members:' .. r, me)
redis.call('HSET', p .. 'running:' .. r .. ':' .. me, job, ARGV[5] .. '|' .. ARGV[6])
return 1
"""

# A job ended. ARGV: prefix, route, replica, job, entry id, seconds ('' learns nothing), initial mean, alpha.
_FINISH = """
local p, r, me, job, entry = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local stream = p .. 'q:' .. r
redis.call('HDEL', p .. 'running:' .. r .. ':' .. me, job)
redis.call('XACK', stream, 'run', entry)
redis.call('XDEL', stream, entry)
if ARGV[6] ~= '' then
  local key = p .. 'service:' .. r
  local seconds, alpha = tonumber(ARGV[6]), tonumber(ARGV[8])
  local state = redis.call('HMGET', key, 'mean', 'var')
  local mean, var = tonumber(state[1]) or tonumber(ARGV[7]), tonumber(state[2]) or 0
  local diff = seconds - mean
  local step = alpha * diff
  redis.call('HSET', key, 'mean', tostring(mean + step), 'var', tostring((1 - alpha) * (var + diff * step)))
end
"""

# Keep this replica's running entries fresh, only those it still owns (never take one back from a replica
# that reclaimed it). ARGV: stream, replica, idle ms to set ('0': now), entry ids... Returns the ids it
# no longer owns.
_REFRESH = """
local stream, me = ARGV[1], ARGV[2]
local lost = {}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', stream, 'run', ARGV[i], ARGV[i], 1, me)
  if #pending > 0 then
    redis.call('XCLAIM', stream, 'run', me, 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


@dataclass(frozen=True, slots=True)
class RouteLoad:
    """The shared numbers admission reads for one route (for tests and gauges)."""

    waiting: int
    running: int
    consumers: int
    mean_service_s: float
    service_tail_s: float


@dataclass(slots=True)
class _Running:
    route: str
    entry: str
    task: asyncio.Task[None]


class RedisDispatcher(Dispatcher):
    def __init__(
        self,
        redis: Redis,
        queues: dict[str, BoundedQueue],
        *,
        replica: str,
        prefix: str = "imgpod:jobs:",
        heartbeat_s: float = 2.0,
        claim_idle_s: float = 10.0,
        drain_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if claim_idle_s < 2 * heartbeat_s:
            raise ValueError("claim_idle_s must be at least two heartbeats, or live jobs get reclaimed")
        self.redis = redis
        self.queues = queues
        self.replica = replica
        self.prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.drain_s = drain_s
        self._clock = clock
        self._admit = redis.register_script(_ADMIT)
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)
        self._refresh = redis.register_script(_REFRESH)
        # One reader per route takes as many entries as the route has free consumers (slots) here, and runs
        # each in a task of its own: one blocking connection per route, however many consumers.
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._busy: dict[str, int] = dict.fromkeys(queues, 0)
        self._slot_freed: dict[str, asyncio.Event] = {route: asyncio.Event() for route in queues}
        self._handlers: set[asyncio.Task[None]] = set()
        self._running: dict[str, _Running] = {}
        self._next_claim: dict[str, float] = dict.fromkeys(queues, 0.0)
        self._claim_cursor: dict[str, str] = dict.fromkeys(queues, "0-0")
        self._heartbeat: asyncio.Task[None] | None = None
        # Set by close: consumers take nothing new, and the manager can tell a job cancelled because this
        # replica stops (leave it running: another replica reclaims it) from one cancelled by its client.
        self.closing = False

    def _stream(self, route: str) -> str:
        return f"{self.prefix}q:{route}"

    # --- life ------------------------------------------------------------------------------------------

    async def start(self, run: RunJob) -> None:
        await super().start(run)
        for route in self.queues:
            await self._ensure_group(route)
        await self._beat()
        for route in self.queues:
            self._readers[route] = asyncio.create_task(self._read(route), name=f"jobs-reader-{route}")
        self._heartbeat = asyncio.create_task(self._heartbeat_forever(), name="jobs-dispatch-heartbeat")

    async def _ensure_group(self, route: str) -> None:
        try:
            await self.redis.xgroup_create(self._stream(route), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def close(self) -> None:
        """Take nothing new; let running jobs finish for ``drain_s``; hand what still runs over to the other
        replicas (its entries claimable now, not after the claim idle time), cancelling it here; leave."""
        self.closing = True
        readers = list(self._readers.values())
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if self._handlers and self.drain_s > 0:
            await asyncio.wait(self._handlers, timeout=self.drain_s)
        tasks = [*self._handlers, *([self._heartbeat] if self._heartbeat is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._hand_over()
        except RedisError as exc:
            log.warning("could not hand over running jobs (%s); they are reclaimed later", type(exc).__name__)

    async def _hand_over(self) -> None:
        by_route: dict[str, list[str]] = {}
        for running in self._running.values():
            by_route.setdefault(running.route, []).append(running.entry)
        self._running.clear()
        for route, entries in by_route.items():
            await self._refresh(args=[self._stream(route), self.replica, self.claim_idle_ms, *entries])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self.prefix}live:{self.replica}")
            for route in self.queues:
                pipe.srem(f"{self.prefix}members:{route}", self.replica)
                pipe.hdel(f"{self.prefix}consumers:{route}", self.replica)
                pipe.delete(f"{self.prefix}running:{route}:{self.replica}")
            await pipe.execute()

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except RedisError as exc:
                log.warning("jobs heartbeat failed (%s)", type(exc).__name__)
            try:
                await self._report_load()
            except RedisError as exc:
                log.warning("jobs load report failed (%s)", type(exc).__name__)
            # The pools may have added consumers: let the readers look.
            for event in self._slot_freed.values():
                event.set()

    async def _beat(self) -> None:
        """Say this replica lives and how many consumers it has; keep its running entries its own."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.prefix}live:{self.replica}", b"1", px=self.claim_idle_ms)
            for route, queue in self.queues.items():
                pipe.hset(f"{self.prefix}consumers:{route}", self.replica, queue.consumers)
                pipe.sadd(f"{self.prefix}members:{route}", self.replica)
            await pipe.execute()
        by_route: dict[str, list[str]] = {}
        for running in self._running.values():
            by_route.setdefault(running.route, []).append(running.entry)
        for route, entries in by_route.items():
            lost = {
                e.decode() for e in await self._refresh(args=[self._stream(route), self.replica, 0, *entries])
            }
            # An entry acknowledged meanwhile (its job just ended) is not lost.
            lost &= {r.entry for r in self._running.values()}
            if lost:
                # Reclaimed by another replica (this one stalled past the claim idle time): the store's
                # compare-and-set keeps one outcome; this replica's run goes on.
                log.warning("jobs reclaimed from this replica while running", extra={"count": len(lost)})

    # --- admission -------------------------------------------------------------------------------------

    async def _admission(
        self, mode: str, route: str, weight: int, owner: str | None, job_id: str = ""
    ) -> Any:
        queue = self.queues[route]
        return await self._admit(
            args=[
                self.prefix,
                route,
                self.replica,
                queue.consumers,
                mode,
                job_id,
                weight,
                owner or "",
                "1" if owner is not None else "0",
                queue.capacity,
                queue.sla_s,
                queue.max_share,
                _initial_mean(queue),
            ]
        )

    async def _admit_or_raise(
        self, mode: str, route: str, weight: int, owner: str | None, job_id: str
    ) -> None:
        queue = self.queues[route]
        for _ in range(2):
            answer = await self._admission(mode, route, weight, owner, job_id)
            verdict = answer[0].decode()
            if verdict == "ok":
                return
            if verdict != "no_worker":
                # The local queue words the refusal (and counts it): the same message, reason and Retry-After
                # cap as on a single interface.
                raise queue._refuse(verdict, float(answer[1]))
            # No consumer anywhere, so none here either: the local queue refuses with the same 503 (naming
            # the empty pool). When it does not, the pools found a worker meanwhile: admit again.
            queue.check_admission(weight, owner)
        raise queue._refuse("full", queue.retry_after_cap_s)

    async def check(self, route: str, weight: int, owner: str | None) -> None:
        await self._admit_or_raise("check", route, weight, owner, "")

    async def enqueue(self, record: JobRecord, *, admit: bool = True) -> None:
        mode = "enqueue" if admit else "force"
        await self._admit_or_raise(mode, record.route, record.weight, record.owner, record.id)
        queue = self.queues[record.route]
        queue.metrics.admitted.labels(queue.name).inc()

    async def withdraw(self, record: JobRecord) -> None:
        await self.redis.hdel(f"{self.prefix}waiting:{record.route}", record.id)

    def stop_local(self, job_id: str) -> bool:
        running = self._running.get(job_id)
        if running is None:
            return False
        running.task.cancel()
        return True

    async def _report_load(self) -> None:
        """The shared backlog of each route on this replica's queue gauges (every replica reports the same
        numbers: dashboards and KEDA take their max, never their sum)."""
        for route, queue in self.queues.items():
            if route not in JOB_ROUTES:
                continue  # a queue of this replica's own (the replies): its gauges are its own
            load = await self.load(route)
            queue.report_shared(load.waiting, load.running)

    async def load(self, route: str) -> RouteLoad:
        waiting, running, consumers, mean, tail = await self._admission("load", route, 0, None)
        return RouteLoad(int(waiting), int(running), int(consumers), float(mean), float(tail))

    # --- consumers -------------------------------------------------------------------------------------

    async def _read(self, route: str) -> None:
        backoff = 0.1
        freed = self._slot_freed[route]
        while not self.closing:
            freed.clear()
            free = self.queues[route].consumers - self._busy[route]
            if free <= 0:
                # Every consumer here is busy: wait for one to finish (or a heartbeat: the pools may grow).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), self.heartbeat_s)
                continue
            try:
                entries = await self._next_entries(route, free)
                backoff = 0.1
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream was deleted (a flushed Redis): make it again.
                await self._ensure_group(route)
                continue
            except RedisError as exc:
                log.warning("jobs queue %s unreachable (%s)", route, type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for entry, fields, reclaimed in entries:
                self._busy[route] += 1
                task = asyncio.create_task(self._handle(route, entry, fields, reclaimed))
                self._handlers.add(task)
                task.add_done_callback(lambda done, route=route: self._handled(route, done))

    def _handled(self, route: str, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._busy[route] -= 1
        self._slot_freed[route].set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job dispatch failed", exc_info=task.exception())

    async def _next_entries(
        self, route: str, count: int
    ) -> list[tuple[str, dict[bytes, bytes] | None, bool]]:
        """Up to ``count`` reclaimable entries when it is time to look for them, else new ones (none after a
        heartbeat of waiting): (entry id, fields, reclaimed)."""
        stream = self._stream(route)
        now = time.monotonic()
        if now >= self._next_claim[route]:
            self._next_claim[route] = now + self.heartbeat_s
            cursor, claimed, *_ = await self.redis.xautoclaim(
                stream,
                GROUP,
                self.replica,
                self.claim_idle_ms,
                start_id=self._claim_cursor[route],
                count=count,
            )
            self._claim_cursor[route] = cursor.decode()
            if claimed:
                # There may be more: look again as soon as a consumer is free.
                self._next_claim[route] = now
                return [(entry.decode(), fields, True) for entry, fields in claimed]
        answer = await self.redis.xreadgroup(
            GROUP, self.replica, {stream: ">"}, count=count, block=int(self.heartbeat_s * 1000)
        )
        return [(entry.decode(), fields, False) for _, entries in answer or () for entry, fields in entries]

    async def _handle(
        self, route: str, entry: str, fields: dict[bytes, bytes] | None, reclaimed: bool
    ) -> None:
        if not fields:
            # Deleted from the stream while pending (nothing to run): just settle it.
            await self.redis.xack(self._stream(route), GROUP, entry)
            return
        if self.closing:
            # Read while this replica was closing: another replica takes it now, still counted as before.
            await self._refresh(args=[self._stream(route), self.replica, self.claim_idle_ms, entry])
            return
        job_id = fields[b"job"].decode()
        if not reclaimed:
            # A stream entry's id is its enqueue time (ms, Redis' clock): the time it waited for a consumer.
            self.queues[route].observe_shared_wait(time.time() - int(entry.split("-", 1)[0]) / 1000)
        counted = await self._start(
            args=[
                self.prefix,
                route,
                self.replica,
                job_id,
                fields[b"units"],
                fields[b"owner"],
                "1" if reclaimed else "0",
            ]
        )
        started = self._clock()
        task = asyncio.create_task(self._run(job_id), name=f"job-{job_id}")
        self._running[job_id] = _Running(route, entry, task)
        # On this handler's cancellation (close, or a replica going down) the job is cancelled and its entry
        # stays pending, for another replica to reclaim.
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        elapsed = self._clock() - started
        # Learn only from a job that ran here from the queue and succeeded: a withdrawn one returns at once, a
        # reclaimed one may be skipped by the manager, a failure says nothing of the next job's time.
        learned = counted == 1 and not reclaimed and not task.cancelled() and task.exception() is None
        if not task.cancelled() and task.exception() is not None:
            log.debug("job %s ended with %s", job_id, type(task.exception()).__name__)
        queue = self.queues[route]
        # No longer refreshed from here: should the settling below fail, the entry is reclaimed later.
        self._running.pop(job_id, None)
        try:
            await self._finish(
                args=[
                    self.prefix,
                    route,
                    self.replica,
                    job_id,
                    entry,
                    repr(elapsed) if learned else "",
                    _initial_mean(queue),
                    _ALPHA,
                ]
            )
        except RedisError as exc:
            # The entry stays pending and is reclaimed; the manager's run then finds the job finished.
            log.warning("could not settle job %s (%s)", job_id, type(exc).__name__)


# The weight of a new service time in the shared estimate: BoundedQueue's.
_ALPHA = 0.2


def _initial_mean(queue: BoundedQueue) -> float:
    # The shared estimate starts where a local queue starts; the local one learns nothing on a Redis replica
    # (its consumers never run a job), so its mean is still the initial one.
    return queue.mean_service_s
