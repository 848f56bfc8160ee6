"""What the rest of the interface uses of personas: the store built from the settings, and a persona (or
its approved avatar) resolved for one API key, as the chat flows need them."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from services.interface.jobs.redis_store import connect as redis_connect
from services.interface.personas.records import PersonaNotFound, PersonaRecord
from services.interface.personas.redis_store import RedisPersonaStore
from services.interface.personas.store import PersonaStore, SqlitePersonaStore
from services.interface.settings import InterfaceSettings


def build_persona_store(settings: InterfaceSettings) -> PersonaStore:
    """Redis when the jobs are there (replicas share personas as they share jobs), else a SQLite file."""
    if settings.jobs_redis_url is not None:
        # A client of its own: closing the jobs' client at shutdown must not cut a persona read short.
        client = redis_connect(settings.jobs_redis_url.get_secret_value(), max_connections=16)
        return RedisPersonaStore(client, settings.personas_max_per_key, prefix=settings.personas_redis_prefix)
    return SqlitePersonaStore(settings.personas_sqlite_path, settings.personas_max_per_key)


async def close_persona_store(store: PersonaStore) -> None:
    await store.close()
    if isinstance(store, RedisPersonaStore):
        await store.redis.aclose()


def persona_store(source: Request | Any) -> PersonaStore:
    """The app's store, from a request, the app's state, or the store itself."""
    if isinstance(source, PersonaStore):
        return source
    state = source.app.state if isinstance(source, Request) else source
    store: PersonaStore = state.personas
    return store


async def resolve_persona(source: Request | Any, owner: str | None, persona_id: str) -> PersonaRecord:
    """The owner's persona; 404 ``persona_not_found`` when it is missing or another key's."""
    record = await persona_store(source).get(owner, persona_id)
    if record is None:
        raise PersonaNotFound("no such persona for this API key", stage="personas")
    return record


async def approved_avatar(source: Request | Any, record: PersonaRecord) -> bytes | None:
    """The PNG of the persona's approved avatar; None while none is approved (or it was deleted since)."""
    if record.approved is None:
        return None
    return await persona_store(source).avatar(record.owner, record.id, record.approved)
