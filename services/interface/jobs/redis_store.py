"""The job store on Redis: what several interface replicas share (records, events, cancels).

Key layout under the prefix (``jobs_redis_prefix``), for one Redis primary (not Redis Cluster: the scripts
touch keys they derive from the prefix):

- ``job:{id}``: a hash: ``status`` and ``v`` (a version bumped by every transition: the compare-and-set),
  ``record`` (the record's JSON without its status, progress and result), ``route``, ``step``, ``total``,
  ``idem`` (the idempotency key's name, so it expires with the record);
- ``result:{id}``, ``blob:{id}``: the output and the upload, apart because they are large;
- ``idem:{owner}:{key}``: the job id an owner's Idempotency-Key names;
- ``queued:{route}``: sorted set of queued job ids by created_at (``position``);
- ``unfinished``: queued and running job ids by created_at; ``expiry``: jobs still holding an output, by
  expires_at;
- channels ``events`` (every job's events) and ``cancel`` (job ids to stop).

Why a version beside the status rather than a compare-and-set on the status inside the JSON: Lua's cjson
would re-encode the record (floats cut to 14 digits, empty lists turned into objects); so Python builds the
new record and the script writes it only when nobody wrote in between, else Python reads again.

Events: each replica holds one subscriber connection feeding its in-process hub, so N streaming clients cost
N local queues, not N Redis connections. A replica's own events reach its own subscribers through Redis too,
once. Pub/sub is at most once: a client that must not miss the end of a job also reads the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from services.interface.jobs.records import JobEvent, JobRecord, JobStatus
from services.interface.jobs.store import IdempotencyConflict, JobStore

log = logging.getLogger(__name__)

# Past this size a JSON text is (de)coded on a thread: a result holds base64 images, megabytes of them.
_OFF_LOOP_BYTES = 64 * 1024
# Record fields kept outside the record's JSON (own hash fields or keys).
_OUTSIDE = ("status", "step", "total_steps", "result")

# Keeps the indexes in step with a job's status and output; shared by both scripts below.
_INDEX = """
local function index(p, id, route, status, created, expires)
  local queued = p .. 'queued:' .. route
  if status == 'queued' then
    redis.call('ZADD', queued, created, id)
  else
    redis.call('ZREM', queued, id)
  end
  if status == 'queued' or status == 'running' then
    redis.call('ZADD', p .. 'unfinished', created, id)
  else
    redis.call('ZREM', p .. 'unfinished', id)
  end
  if expires ~= '' and (redis.call('EXISTS', p .. 'result:' .. id) == 1
      or redis.call('EXISTS', p .. 'blob:' .. id) == 1) then
    redis.call('ZADD', p .. 'expiry', expires, id)
  else
    redis.call('ZREM', p .. 'expiry', id)
  end
end
"""

# ARGV: prefix, id, status, record, route, step, total, idem key ('' none), result, has result, blob,
# has blob, created_at, expires_at ('' none). Returns the earlier job's id when the idempotency key is taken.
_CREATE = (
    _INDEX
    + """
local p, id, idem = ARGV[1], ARGV[2], ARGV[8]
if idem ~= '' then
  local earlier = redis.call('GET', idem)
  if earlier and redis.call('EXISTS', p .. 'job:' .. earlier) == 1 then
    return earlier
  end
  redis.call('SET', idem, id)
end
redis.call('HSET', p .. 'job:' .. id, 'status', ARGV[3], 'v', 0, 'record', ARGV[4], 'route', ARGV[5],
  'step', ARGV[6], 'total', ARGV[7], 'idem', idem)
if ARGV[10] == '1' then redis.call('SET', p .. 'result:' .. id, ARGV[9]) end
if ARGV[12] == '1' then redis.call('SET', p .. 'blob:' .. id, ARGV[11]) end
index(p, id, ARGV[5], ARGV[3], ARGV[13], ARGV[14])
return false
"""
)

# ARGV: prefix, id, version read, status, record, step, total, result mode ('keep', 'set', 'del'), result,
# created_at, expires_at ('' none), terminal ('1'), record ttl ms. 1: written; 0: written by someone else
# since the read (read again); -1: unknown job.
_TRANSITION = (
    _INDEX
    + """
local p, id = ARGV[1], ARGV[2]
local job = p .. 'job:' .. id
local current = redis.call('HMGET', job, 'v', 'route', 'idem')
if not current[1] then return -1 end
if current[1] ~= ARGV[3] then return 0 end
redis.call('HSET', job, 'status', ARGV[4], 'v', tonumber(ARGV[3]) + 1, 'record', ARGV[5],
  'step', ARGV[6], 'total', ARGV[7])
local result = p .. 'result:' .. id
if ARGV[8] == 'set' then
  redis.call('SET', result, ARGV[9])
elseif ARGV[8] == 'del' then
  redis.call('DEL', result)
end
index(p, id, current[2], ARGV[4], ARGV[10], ARGV[11])
local ttl = tonumber(ARGV[13])
if ARGV[12] == '1' and ttl > 0 then
  -- Terminal records go after a retention time (Redis holds them in memory; noeviction must not fill up).
  for _, key in ipairs({job, result, p .. 'blob:' .. id}) do redis.call('PEXPIRE', key, ttl) end
  if current[3] ~= '' then redis.call('PEXPIRE', current[3], ttl) end
end
return 1
"""
)

# ARGV: prefix, id. The idempotency key goes too, when it still names this job.
_DELETE = """
local p, id = ARGV[1], ARGV[2]
local job = p .. 'job:' .. id
local info = redis.call('HMGET', job, 'route', 'idem')
if not info[1] then return 0 end
if info[2] ~= '' and redis.call('GET', info[2]) == id then redis.call('DEL', info[2]) end
redis.call('DEL', job, p .. 'result:' .. id, p .. 'blob:' .. id)
redis.call('ZREM', p .. 'queued:' .. info[1], id)
redis.call('ZREM', p .. 'unfinished', id)
redis.call('ZREM', p .. 'expiry', id)
return 1
"""

_SET_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total', ARGV[2])
end
"""


class RedisJobStore(JobStore):
    """Job records, outputs and events in Redis, shared by every replica that names the same prefix."""

    def __init__(
        self, redis: Redis, *, prefix: str = "imgpod:jobs:", record_ttl_s: float = 7 * 86400
    ) -> None:
        super().__init__()
        self.redis = redis
        self.prefix = prefix
        self._record_ttl_ms = int(record_ttl_s * 1000)
        self._events_channel = prefix + "events"
        self._cancel_channel = prefix + "cancel"
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._set_progress = redis.register_script(_SET_PROGRESS)
        self._delete = redis.register_script(_DELETE)
        self._listener: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        return True

    async def start(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self._events_channel, self._cancel_channel)
        # SUBSCRIBE is only sent above; until Redis confirms it, an event published elsewhere could pass us.
        confirmed = 0
        while confirmed < 2:
            message = await pubsub.get_message(timeout=10.0)
            if message is None:
                await pubsub.aclose()
                raise RedisError("no confirmation of the job channels' subscription")
            confirmed += message["type"] == "subscribe"
        self._listener = asyncio.create_task(self._listen(pubsub), name="job-events-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self, pubsub: Any) -> None:
        backoff = 0.1
        try:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                except RedisError as exc:
                    # The client reconnects and subscribes again on the next read; events sent meanwhile are
                    # lost (pub/sub keeps nothing), which readers of the record make up for.
                    log.warning("job events subscription lost (%s); reconnecting", type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                if message is None or message["type"] != "message":
                    continue
                await self._deliver(message["channel"].decode(), message["data"])
        finally:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()

    async def _deliver(self, channel: str, data: bytes) -> None:
        try:
            if channel == self._events_channel:
                self.hub.publish(JobEvent.from_dict(await _loads(data)))
            elif channel == self._cancel_channel:
                self.hub.cancel(data.decode())
        except Exception:
            # One malformed message (another version's replica) must not stop the listener.
            log.exception("could not deliver a job message from %s", channel)

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.prefix}{kind}:{job_id}"

    def _idem_key(self, record: JobRecord) -> str:
        if record.idempotency_key is None:
            return ""
        return f"{self.prefix}idem:{record.owner or ''}:{record.idempotency_key}"

    async def create(self, record: JobRecord, blob: bytes | None = None) -> JobRecord:
        data, step, total = _split(record)
        result = await _dumps(record.result) if record.result is not None else ""
        earlier_id = await self._create(
            args=[
                self.prefix,
                record.id,
                record.status.value,
                json.dumps(data),
                record.route,
                _num(step),
                _num(total),
                self._idem_key(record),
                result,
                "1" if record.result is not None else "0",
                blob if blob is not None else b"",
                "1" if blob is not None else "0",
                repr(record.created_at),
                _num(record.expires_at),
            ]
        )
        if earlier_id is None:
            return record
        earlier = await self.get(earlier_id.decode())
        if earlier is None:
            raise IdempotencyConflict("this Idempotency-Key is being reused; retry", param="Idempotency-Key")
        if earlier.body_hash != record.body_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with another request body", param="Idempotency-Key"
            )
        return earlier

    async def _load(self, job_id: str) -> tuple[JobRecord, bytes] | None:
        """The record and the version it was read at."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._key("job", job_id), "status", "v", "record", "step", "total")
            pipe.get(self._key("result", job_id))
            (status, version, raw, step, total), result = await pipe.execute()
        if raw is None:
            return None
        data = json.loads(raw)
        data["status"] = status.decode()
        data["step"] = _parse_num(step)
        data["total_steps"] = _parse_num(total)
        data["result"] = await _loads(result) if result is not None else None
        return JobRecord.from_dict(data), version

    async def get(self, job_id: str) -> JobRecord | None:
        loaded = await self._load(job_id)
        return loaded[0] if loaded else None

    async def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        job_id = await self.redis.get(f"{self.prefix}idem:{owner or ''}:{key}")
        return await self.get(job_id.decode()) if job_id is not None else None

    async def delete(self, job_id: str) -> None:
        await self._delete(args=[self.prefix, job_id])

    async def blob(self, job_id: str) -> bytes | None:
        value: bytes | None = await self.redis.get(self._key("blob", job_id))
        return value

    async def transition(
        self, job_id: str, from_: Collection[JobStatus], to: JobStatus, **fields: Any
    ) -> JobRecord | None:
        while True:
            loaded = await self._load(job_id)
            if loaded is None:
                return None
            record, version = loaded
            if record.status not in from_:
                return None
            for name, value in fields.items():
                setattr(record, name, value)
            record.status = to
            data, step, total = _split(record)
            if "result" not in fields:
                mode, result = "keep", ""
            elif record.result is None:
                mode, result = "del", ""
            else:
                mode, result = "set", await _dumps(record.result)
            written = await self._transition(
                args=[
                    self.prefix,
                    job_id,
                    version,
                    to.value,
                    json.dumps(data),
                    _num(step),
                    _num(total),
                    mode,
                    result,
                    repr(record.created_at),
                    _num(record.expires_at),
                    "1" if to.terminal else "0",
                    self._record_ttl_ms,
                ]
            )
            if written == 1:
                return record
            if written == -1:
                return None
            # Someone wrote the job since our read (a cancel, a reclaiming replica): decide again on what is
            # there now. Each retry follows another writer's success, so this ends.

    async def set_progress(self, job_id: str, step: int, total: int) -> None:
        await self._set_progress(keys=[self._key("job", job_id)], args=[step, total])

    async def unfinished(self) -> list[JobRecord]:
        ids = await self.redis.zrange(self.prefix + "unfinished", 0, -1)
        records = await asyncio.gather(*(self.get(job_id.decode()) for job_id in ids))
        return [r for r in records if r is not None and not r.status.terminal]

    async def expired_ids(self, now: float) -> list[str]:
        ids = await self.redis.zrangebyscore(self.prefix + "expiry", "-inf", repr(now))
        return [job_id.decode() for job_id in ids]

    async def drop_output(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("result", job_id), self._key("blob", job_id))
            pipe.zrem(self.prefix + "expiry", job_id)
            await pipe.execute()

    async def position(self, record: JobRecord) -> int:
        ahead: int = await self.redis.zcount(
            f"{self.prefix}queued:{record.route}", "-inf", f"({record.created_at!r}"
        )
        return ahead

    async def publish(self, event: JobEvent) -> None:
        # Through Redis only, also for this replica's own subscribers: they get it once, from the listener.
        # A terminal event may carry the job's view with its output, a progress event a partial image: those
        # are encoded off the loop.
        small = event.type == "progress" and "partial_image" not in event.data
        data = json.dumps(event.to_dict()) if small else await _dumps(event.to_dict())
        await self.redis.publish(self._events_channel, data)

    async def signal_cancel(self, job_id: str) -> None:
        await self.redis.publish(self._cancel_channel, job_id)


def _split(record: JobRecord) -> tuple[dict[str, Any], int | None, int | None]:
    data = record.to_dict()
    for name in _OUTSIDE:
        data.pop(name)
    return data, record.step, record.total_steps


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _parse_num(raw: bytes | None) -> int | None:
    return int(raw) if raw else None


async def _dumps(value: Any) -> str:
    # Size unknown before encoding; results and terminal events come once per job: the thread hop is cheap.
    return await asyncio.to_thread(json.dumps, value)


async def _loads(raw: bytes) -> Any:
    if len(raw) > _OFF_LOOP_BYTES:
        return await asyncio.to_thread(json.loads, raw)
    return json.loads(raw)


def connect(url: str, *, max_connections: int = 64, wait_s: float = 5.0) -> Redis:
    """A client for the jobs' Redis: bytes in and out (uploads are binary), no read timeout (the readers block
    on XREADGROUP for a heartbeat at a time). A burst of requests waits up to ``wait_s`` for one of
    ``max_connections`` connections rather than failing (the default pool raises past its size)."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=wait_s, health_check_interval=30
    )
    return Redis(connection_pool=pool)
