"""The persona store on Redis, for interface replicas that share their jobs there (INTERFACE_JOBS_REDIS_URL).

Key layout under the prefix (``personas_redis_prefix``), for one Redis primary:

- ``persona:{id}``: a hash: ``record`` (the JSON), ``owner`` (the key id, '' on an open deployment), ``seq``;
- ``avatar:{id}:{i}``: candidate i's PNG bytes;
- ``owner:{owner}``: a sorted set of the owner's persona ids by ``seq`` (newest last): the list, its cursor
  and the per-key bound;
- ``seq``: the counter behind ``seq``.

Personas are kept until deleted (no TTL): they are few per key and bounded by ``personas_max_per_key``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.interface.personas.records import MAX_AVATARS, PersonaLimitReached, PersonaRecord
from services.interface.personas.store import Change, PersonaStore, limit_message, owner_key

# ARGV: prefix, id, owner, record, max per owner, then the avatars. Returns the seq, or -1 past the bound.
_CREATE = """
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local index = p .. 'owner:' .. owner
if redis.call('ZCARD', index) >= tonumber(ARGV[5]) then return -1 end
local seq = redis.call('INCR', p .. 'seq')
redis.call('HSET', p .. 'persona:' .. id, 'record', ARGV[4], 'owner', owner, 'seq', seq)
for i = 6, #ARGV do redis.call('SET', p .. 'avatar:' .. id .. ':' .. (i - 6), ARGV[i]) end
redis.call('ZADD', index, seq, id)
return seq
"""

# ARGV: prefix, id, owner, avatars to delete. 1: deleted; 0: none of this owner's.
_DELETE = """
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'persona:' .. id
if redis.call('HGET', key, 'owner') ~= owner then return 0 end
redis.call('DEL', key)
for i = 0, tonumber(ARGV[4]) - 1 do redis.call('DEL', p .. 'avatar:' .. id .. ':' .. i) end
redis.call('ZREM', p .. 'owner:' .. owner, id)
return 1
"""


class RedisPersonaStore(PersonaStore):
    def __init__(self, redis: Redis, max_per_owner: int, *, prefix: str = "imgpod:personas:") -> None:
        super().__init__(max_per_owner)
        self.redis = redis
        self.prefix = prefix
        self._create = redis.register_script(_CREATE)
        self._delete = redis.register_script(_DELETE)

    def _key(self, persona_id: str) -> str:
        return f"{self.prefix}persona:{persona_id}"

    async def create(self, record: PersonaRecord, avatars: Sequence[bytes] = ()) -> PersonaRecord:
        if len(avatars) > MAX_AVATARS:
            raise ValueError(f"at most {MAX_AVATARS} avatars")
        seq = await self._create(
            args=[
                self.prefix,
                record.id,
                owner_key(record.owner),
                json.dumps(record.to_dict()),
                self.max_per_owner,
                *avatars,
            ]
        )
        if seq == -1:
            raise PersonaLimitReached(limit_message(self.max_per_owner), stage="personas")
        return record

    async def get(self, owner: str | None, persona_id: str) -> PersonaRecord | None:
        found_owner, raw = await self.redis.hmget(self._key(persona_id), "owner", "record")
        if raw is None or found_owner.decode() != owner_key(owner):
            return None
        return PersonaRecord.from_dict(json.loads(raw))

    async def count(self, owner: str | None) -> int:
        return int(await self.redis.zcard(f"{self.prefix}owner:{owner_key(owner)}"))

    async def list(
        self, owner: str | None, limit: int, cursor: int | None = None
    ) -> tuple[list[PersonaRecord], int | None]:
        top = f"({cursor}" if cursor is not None else "+inf"
        entries = await self.redis.zrevrangebyscore(
            f"{self.prefix}owner:{owner_key(owner)}", top, "-inf", start=0, num=limit + 1, withscores=True
        )
        page = entries[:limit]
        async with self.redis.pipeline(transaction=False) as pipe:
            for persona_id, _ in page:
                pipe.hget(self._key(persona_id.decode()), "record")
            raws = await pipe.execute()
        # A persona deleted between the two reads is simply not listed.
        records = [PersonaRecord.from_dict(json.loads(raw)) for raw in raws if raw is not None]
        return records, (int(page[-1][1]) if len(entries) > limit else None)

    async def update(self, owner: str | None, persona_id: str, change: Change) -> PersonaRecord | None:
        key = self._key(persona_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    found_owner, raw = await pipe.hmget(key, "owner", "record")
                    if raw is None or found_owner.decode() != owner_key(owner):
                        await pipe.unwatch()
                        return None
                    record = change(PersonaRecord.from_dict(json.loads(raw)))
                    pipe.multi()
                    pipe.hset(key, "record", json.dumps(record.to_dict()))
                    await pipe.execute()
                    return record
                except WatchError:
                    # Another replica wrote it since our read: apply the change to what is there now.
                    continue

    async def avatar(self, owner: str | None, persona_id: str, index: int) -> bytes | None:
        if await self.get(owner, persona_id) is None:
            return None
        png: bytes | None = await self.redis.get(f"{self.prefix}avatar:{persona_id}:{index}")
        return png

    async def delete(self, owner: str | None, persona_id: str) -> bool:
        deleted = await self._delete(args=[self.prefix, persona_id, owner_key(owner), MAX_AVATARS])
        return bool(deleted)
