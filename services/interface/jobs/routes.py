"""The job routes: read a job, stream its events, cancel it. A job is its API key's: another key gets 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.interface.admission import owner_of
from services.interface.jobs.manager import REREAD_S, JobManager
from services.interface.jobs.records import TERMINAL_EVENT, JobEvent, JobRecord, JobStatus
from shared.errors import ImgPodError
from shared.offload import off_loop_if

router = APIRouter(tags=["jobs"])
JobId = Annotated[str, Path(pattern=r"^job_[0-9a-f]{24}$", description="The id a 202 answered with")]
_TERMINAL_TYPES = frozenset(TERMINAL_EVENT.values())
# Seconds between SSE comments that keep proxies (RunPod's, a load balancer's) from closing an idle stream.
PING_S = 15


class JobNotFound(ImgPodError):
    status_code = 404
    code = "job_not_found"


async def get_manager(request: Request) -> JobManager:
    return request.app.state.jobs


ManagerDep = Annotated[JobManager, Depends(get_manager)]


async def encode_json(data: dict[str, Any], *, large: bool) -> str:
    """JSON text of a view or event; ``large`` when it carries a job's result (megabytes of base64)."""
    return await off_loop_if(large, json.dumps, data)


async def view_response(
    view: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = await encode_json(view, large="result" in view)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


async def _job(manager: JobManager, job_id: str, request: Request) -> JobRecord:
    record = await manager.find(job_id, owner_of(request))
    if record is None:
        raise JobNotFound("no such job for this API key", stage="jobs")
    return record


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: JobId, request: Request, manager: ManagerDep) -> Response:
    """A job's state: queued (with its position), running (step / total), or how it ended, with the same body
    the synchronous route answers when it succeeded."""
    return await view_response(await manager.public_view(await _job(manager, job_id, request)))


@router.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(job_id: JobId, request: Request, manager: ManagerDep) -> Response:
    """Cancel: a queued job leaves the queue; a running one stops at the image worker's next step. Answers the
    job as it is afterwards (``canceled``, or how it ended if it finished first)."""
    record = await _job(manager, job_id, request)
    return await view_response(await manager.public_view(await manager.cancel(record)))


@router.get("/v1/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(job_id: JobId, request: Request, manager: ManagerDep) -> EventSourceResponse:
    """Server-Sent Events: the job's state now, then each event (queued, started, progress, completed, failed,
    canceled, expired) until it ends; the stream closes after the terminal event."""
    await _job(manager, job_id, request)  # 404 before the stream starts, not inside it
    return EventSourceResponse(_events(manager, job_id), ping=PING_S)


async def _events(manager: JobManager, job_id: str) -> AsyncIterator[ServerSentEvent]:
    # Subscribed before the snapshot is read: an event between the two is never lost (at worst seen twice).
    async with manager.store.subscribe(job_id) as events:
        record = await manager.store.get(job_id)
        if record is None:
            return
        snapshot = await _snapshot(manager, record)
        yield snapshot
        if snapshot.event in _TERMINAL_TYPES:
            return
        while True:
            try:
                event: JobEvent = await asyncio.wait_for(events.get(), REREAD_S)
            except TimeoutError:
                # An event lost while a store connection was down (Redis pub/sub keeps none): the record says.
                record = await manager.store.get(job_id)
                if record is not None and record.status.terminal:
                    yield await _snapshot(manager, record)
                    return
                continue
            # ``at``: when the interface published it (unix seconds), so a client can see how late it came.
            data = {"id": job_id, "at": round(event.at, 4), **event.data}
            large = "job" in data or "partial_image" in data
            yield ServerSentEvent(await encode_json(data, large=large), event=event.type)
            if event.type in _TERMINAL_TYPES:
                return


async def _snapshot(manager: JobManager, record: JobRecord) -> ServerSentEvent:
    status = record.status
    if status is JobStatus.queued:
        data: dict[str, Any] = {"position": await manager.store.position(record)}
        kind = "queued"
    elif status is JobStatus.running:
        data = {"attempt": record.attempts}
        kind = "started"
        if record.step is not None:
            data = {"step": record.step, "total": record.total_steps}
            kind = "progress"
    else:
        data = {"job": manager.view(record)}
        kind = TERMINAL_EVENT[status]
    return ServerSentEvent(await encode_json({"id": record.id, **data}, large="job" in data), event=kind)
