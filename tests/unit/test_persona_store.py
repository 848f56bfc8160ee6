"""The persona store's contract (services/interface/personas/store.py), the same cases on both stores: SQLite,
and Redis on a real redis-server with two store instances of their own connections (two replicas)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.interface.jobs.redis_store import connect
from services.interface.personas.access import approved_avatar, build_persona_store, resolve_persona
from services.interface.personas.records import (
    PersonaLimitReached,
    PersonaNotFound,
    PersonaRecord,
    new_persona_id,
)
from services.interface.personas.redis_store import RedisPersonaStore
from services.interface.personas.store import PersonaStore, SqlitePersonaStore
from services.interface.settings import InterfaceSettings
from shared.errors import ValidationFailed
from shared.models import Features
from tests.helpers.redis_server import running_redis_server

Replicas = Callable[[int], AbstractAsyncContextManager[tuple[PersonaStore, PersonaStore]]]
PNGS = [b"\x89PNG\r\n\x1a\n" + bytes([i]) * 32 for i in range(4)]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Replicas:
    if request.param == "sqlite":

        @asynccontextmanager
        async def sqlite_pair(max_per_owner: int) -> AsyncIterator[tuple[PersonaStore, PersonaStore]]:
            store = SqlitePersonaStore(tmp_path / "personas.sqlite3", max_per_owner)
            await store.start()
            try:
                yield store, store
            finally:
                await store.close()

        return sqlite_pair

    url: str = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"

    @asynccontextmanager
    async def redis_pair(max_per_owner: int) -> AsyncIterator[tuple[PersonaStore, PersonaStore]]:
        clients = [connect(url), connect(url)]
        stores = [RedisPersonaStore(c, max_per_owner, prefix=prefix) for c in clients]
        try:
            yield stores[0], stores[1]
        finally:
            for client in clients:
                await client.aclose()

    return redis_pair


def run(
    replicas: Replicas,
    scenario: Callable[[PersonaStore, PersonaStore], Awaitable[Any]],
    max_per_owner: int = 1000,
) -> Any:
    async def main() -> Any:
        async with replicas(max_per_owner) as (a, b):
            return await scenario(a, b)

    return asyncio.run(main())


def persona(owner: str | None = "key1", **fields: Any) -> PersonaRecord:
    fields.setdefault("features", Features(hair_color="auburn", eye_color="green"))
    return PersonaRecord(id=new_persona_id(), owner=owner, **fields)


def test_a_persona_reads_back_the_same_on_another_replica(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        made = persona(name="Ada", personality="dry wit", speaking_style="short sentences")
        assert await a.create(made) == made
        assert await b.get("key1", made.id) == made
        assert made.view().avatars == [] and made.view().avatar_url is None

    run(replicas, scenario)


def test_another_owner_sees_nothing_and_changes_nothing(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        made = await a.create(persona(avatar_count=1, approved=0), PNGS[:1])
        assert await b.get("key2", made.id) is None
        assert await b.get(None, made.id) is None
        assert await b.avatar("key2", made.id, 0) is None
        assert await b.update("key2", made.id, lambda r: r.changed(name="stolen")) is None
        assert await b.delete("key2", made.id) is False
        assert await b.list("key2", 10) == ([], None)
        with pytest.raises(PersonaNotFound):
            await resolve_persona(b, "key2", made.id)
        # Untouched for its owner.
        assert await a.get("key1", made.id) == made
        assert await a.avatar("key1", made.id, 0) == PNGS[0]

    run(replicas, scenario)


def test_update_changes_the_fields_and_the_time(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        made = await a.create(persona(name="Ada", personality="calm"))
        new_features = Features(hair_color="black", glasses=True)
        changed = await b.update(
            "key1", made.id, lambda r: r.changed(name=None, features=new_features, speaking_style="formal")
        )
        assert changed is not None
        again = await a.get("key1", made.id)
        assert again == changed
        assert again.name is None and again.features == new_features
        assert again.personality == "calm" and again.speaking_style == "formal"
        assert again.created_at == made.created_at and again.updated_at >= made.updated_at
        assert await a.update("key1", new_persona_id(), lambda r: r) is None

    run(replicas, scenario)


def test_candidates_are_kept_beside_the_record_and_one_is_approved(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        made = await a.create(persona(avatar_count=3, approved=0), PNGS[:3])
        assert [await b.avatar("key1", made.id, i) for i in range(4)] == [*PNGS[:3], None]
        assert await approved_avatar(b, made) == PNGS[0]

        def pick(index: int) -> Callable[[PersonaRecord], PersonaRecord]:
            def change(record: PersonaRecord) -> PersonaRecord:
                if index >= record.avatar_count:
                    raise ValidationFailed("no such candidate")
                return record.changed(approved=index)

            return change

        picked = await b.update("key1", made.id, pick(2))
        assert picked is not None and picked.approved == 2
        assert await approved_avatar(a, picked) == PNGS[2]
        assert [(v.index, v.approved) for v in picked.view().avatars] == [(0, False), (1, False), (2, True)]
        assert picked.view().avatar_url == f"/v1/personas/{made.id}/avatars/2"
        # A refused change writes nothing.
        with pytest.raises(ValidationFailed):
            await a.update("key1", made.id, pick(3))
        assert (await a.get("key1", made.id)) == picked
        # No candidate approved: no avatar.
        bare = await a.create(persona())
        assert await approved_avatar(a, bare) is None

    run(replicas, scenario)


def test_delete_takes_the_avatars_too(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        made = await a.create(persona(avatar_count=2, approved=0), PNGS[:2])
        kept = await a.create(persona(avatar_count=1, approved=0), PNGS[3:])
        assert await b.delete("key1", made.id) is True
        assert await a.get("key1", made.id) is None
        assert await a.avatar("key1", made.id, 0) is None and await a.avatar("key1", made.id, 1) is None
        assert await a.delete("key1", made.id) is False
        assert await a.avatar("key1", kept.id, 0) == PNGS[3]
        if isinstance(a, RedisPersonaStore):
            assert not await a.redis.keys(f"{a.prefix}avatar:{made.id}:*")
            assert not await a.redis.exists(f"{a.prefix}persona:{made.id}")

    run(replicas, scenario)


def test_list_is_the_owners_newest_first_in_pages(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        mine = [await (a if i % 2 else b).create(persona(name=f"p{i}")) for i in range(5)]
        await a.create(persona(owner="key2"))
        await a.delete("key1", mine[2].id)
        first, cursor = await b.list("key1", 2)
        assert [r.id for r in first] == [mine[4].id, mine[3].id] and cursor is not None
        second, cursor = await a.list("key1", 2, cursor)
        assert [r.id for r in second] == [mine[1].id, mine[0].id]
        assert cursor is None or (await a.list("key1", 2, cursor)) == ([], None)
        assert [r.id for r in (await a.list("key1", 100))[0]] == [
            m.id for m in reversed(mine) if m != mine[2]
        ]

    run(replicas, scenario)


def test_the_bound_per_owner_holds_under_concurrent_creates(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        tries = [(a, b)[i % 2].create(persona()) for i in range(12)]
        outcomes = await asyncio.gather(*tries, return_exceptions=True)
        made = [o for o in outcomes if isinstance(o, PersonaRecord)]
        refused = [o for o in outcomes if isinstance(o, PersonaLimitReached)]
        assert len(made) == 5 and len(refused) == 7
        assert len({r.id for r in made}) == 5
        assert "5 personas" in refused[0].detail and refused[0].status_code == 409
        assert await b.count("key1") == 5 and await b.count("key2") == 0
        with pytest.raises(PersonaLimitReached):
            await a.check_room("key1")
        await a.check_room("key2")
        # Another owner has a bound of its own; a delete makes room again.
        assert await a.create(persona(owner="key2"))
        await b.delete("key1", made[0].id)
        assert await a.create(persona())
        with pytest.raises(PersonaLimitReached):
            await b.create(persona())

    run(replicas, scenario, max_per_owner=5)


def test_an_open_deployment_is_one_owner(replicas: Replicas) -> None:
    async def scenario(a: PersonaStore, b: PersonaStore) -> None:
        made = await a.create(persona(owner=None))
        assert await b.get(None, made.id) == made
        assert await b.get("key1", made.id) is None
        assert [r.id for r in (await b.list(None, 10))[0]] == [made.id]

    run(replicas, scenario)


def test_the_store_follows_the_jobs_choice_of_backend(tmp_path: Path) -> None:
    alone = build_persona_store(
        InterfaceSettings(personas_sqlite_path=tmp_path / "p.sqlite3", personas_max_per_key=7)
    )
    assert isinstance(alone, SqlitePersonaStore)
    assert alone.path == tmp_path / "p.sqlite3" and alone.max_per_owner == 7
    shared = build_persona_store(
        InterfaceSettings(
            jobs_redis_url="redis://127.0.0.1:1/0", internal_token="t" * 24, personas_redis_prefix="dep1:p:"
        )
    )
    assert isinstance(shared, RedisPersonaStore)
    assert shared.prefix == "dep1:p:" and shared.max_per_owner == 1000
    asyncio.run(shared.redis.aclose())
