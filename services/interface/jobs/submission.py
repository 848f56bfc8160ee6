"""What every generate route does with a prepared request: make it a job, then answer 202 or wait for it.

Order, for every route: prepare (validation, word rules, the deployed workers' limits: a refused request never
queues), an idempotent replay (``Idempotency-Key`` seen before for this key: the earlier job, no admission),
admission (the queue's verdict, then the key's rate limits), the webhook target's check, the record, the
queue. Then ``Prefer: respond-async`` answers 202 with the job's URLs; without it the client waits on its
connection, and closing it cancels the job, as before jobs existed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from services.interface.admission import ClientGone, admit, owner_of, wait_for_disconnect
from services.interface.job_kinds import build_work
from services.interface.jobs.manager import JobCanceled, JobManager, JobSpec, body_hash, job_urls
from services.interface.jobs.records import JobRecord, JobRoute, Webhook
from services.interface.jobs.routes import view_response
from shared.errors import ImgPodError, ValidationFailed
from shared.models import JobOptions

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Stripe's and the IETF draft's bounds: printable ASCII, at most 255 characters.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


# The OpenAPI entry of a generate route's 202, for every route that makes jobs.
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "With `Prefer: respond-async`: the job, queued; poll urls.get, stream urls.stream.",
        "headers": {"Location": {"description": "The job's URL", "schema": {"type": "string"}}},
    }
}


class JobWasCanceled(ImgPodError):
    status_code = 409
    code = "job_canceled"


def wants_async(request: Request) -> bool:
    """RFC 7240: ``Prefer: respond-async`` among the preferences (any parameters ignored)."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";", 1)[0].strip().lower() == "respond-async":
                return True
    return False


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            f"{IDEMPOTENCY_HEADER}: 1 to 255 printable ASCII characters", param=IDEMPOTENCY_HEADER
        )
    return key


@dataclass(frozen=True, slots=True)
class Submitted:
    record: JobRecord
    # False for the earlier job of a replayed Idempotency-Key.
    new: bool
    asynchronous: bool


async def run_job(
    request: Request,
    route: JobRoute,
    spec: dict[str, Any],
    *,
    weight: int,
    client_body: Callable[[], dict[str, Any]],
    options: JobOptions,
    blob: bytes | None = None,
    request_model: BaseModel | None = None,
) -> Any:
    """The route's answer: its response model (waited for), or a 202 with the job's view.

    ``client_body``: the request as the client sent it (before the seed was fixed), made only when an
    Idempotency-Key needs its hash; ``request_model``: the route's validated model of ``spec``, if it has one.
    """
    submitted = await submit_job(
        request,
        route,
        spec,
        weight=weight,
        client_body=client_body,
        options=options,
        blob=blob,
        request_model=request_model,
    )
    return await answer(request, submitted)


async def submit_job(
    request: Request,
    route: JobRoute,
    spec: dict[str, Any],
    *,
    weight: int,
    client_body: Callable[[], dict[str, Any]],
    options: JobOptions,
    blob: bytes | None = None,
    request_model: BaseModel | None = None,
    asynchronous: bool | None = None,
    keep_output: bool = False,
    job_id: str | None = None,
) -> Submitted:
    """Everything up to the queue (see the module's order); ``asynchronous``: None to follow the Prefer
    header, False for a route that always waits (the OpenAI API has no 202). ``keep_output`` and ``job_id``:
    see ``JobManager.submit``."""
    state = request.app.state
    manager: JobManager = state.jobs
    owner = owner_of(request)
    if asynchronous is None:
        asynchronous = wants_async(request)
    key = idempotency_key(request)
    work = await build_work(
        state.flows, route, spec, blob, request_model, owner=owner, personas=state.personas
    )
    digest = body_hash(client_body(), blob) if key is not None else None
    if key is not None:
        earlier = await manager.store.find_idempotent(owner, key)
        if earlier is not None:
            return Submitted(manager.check_replay(earlier, digest), False, asynchronous)
    queue = state.queues[route]
    await admit(request, queue, owner, weight, check=lambda: manager.dispatcher.check(route, weight, owner))
    webhook = await _webhook(request, options)
    record, new = await manager.submit(
        JobSpec(route, spec, weight, work, blob, digest),
        owner,
        asynchronous=asynchronous,
        idempotency_key=key,
        webhook=webhook,
        keep_output=keep_output,
        job_id=job_id,
    )
    return Submitted(record, new, asynchronous)


async def answer(request: Request, submitted: Submitted) -> Any:
    """202 with the job's view, or the job's response once it is done (a disconnect cancels it)."""
    manager: JobManager = request.app.state.jobs
    record = submitted.record
    if submitted.asynchronous:
        headers = {"Location": job_urls(record.id)["get"], "Preference-Applied": "respond-async"}
        if not submitted.new:
            headers["Idempotent-Replayed"] = "true"
        return await view_response(await manager.public_view(record), 202, headers)
    return await _wait(request, manager, record)


async def _webhook(request: Request, options: JobOptions) -> Webhook | None:
    if options.webhook is None:
        if options.webhook_events_filter:
            raise ValidationFailed("webhook_events_filter: needs a webhook", param="webhook_events_filter")
        return None
    check = getattr(request.app.state, "check_webhook", None)
    if check is None:
        raise ValidationFailed("webhook: webhooks are off on this deployment", param="webhook")
    await check(options.webhook)
    return Webhook(options.webhook, tuple(dict.fromkeys(options.webhook_events_filter or ())))


async def _wait(
    request: Request, manager: JobManager, record: JobRecord
) -> BaseModel | dict[str, Any] | Response:
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    waiter = asyncio.ensure_future(manager.wait(record))
    try:
        await asyncio.wait({gone, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiter.done():
        waiter.cancel()
        await manager.cancel(record)
        raise ClientGone()
    try:
        return waiter.result()
    except JobCanceled:
        raise JobWasCanceled("the job was cancelled before it finished", stage="job") from None
