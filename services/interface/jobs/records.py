"""What a job is: its record, its states and the events it emits."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

# The routes whose requests are jobs; the name is also the queue (settings.ENDPOINTS) they wait in.
JobRoute = Literal["profile", "text2img", "chat1to1", "shorts", "scenes", "private"]
JOB_ROUTES: frozenset[str] = frozenset(get_args(JobRoute))
EventType = Literal["queued", "started", "progress", "completed", "failed", "canceled", "expired"]
WebhookEvent = Literal["start", "progress", "completed"]


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    expired = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


TERMINAL = frozenset(s for s in JobStatus if s.terminal)
# The event a job emits when it reaches each terminal state.
TERMINAL_EVENT: dict[JobStatus, EventType] = {
    JobStatus.succeeded: "completed",
    JobStatus.failed: "failed",
    JobStatus.canceled: "canceled",
    JobStatus.expired: "expired",
}


def new_job_id() -> str:
    # 96 random bits: ids are unguessable, though ownership, not secrecy, is what guards them.
    return "job_" + secrets.token_hex(12)


@dataclass(slots=True)
class Webhook:
    url: str
    # Empty: every event kind.
    events: tuple[WebhookEvent, ...] = ()

    def wants(self, event: WebhookEvent) -> bool:
        return not self.events or event in self.events


@dataclass(slots=True)
class JobRecord:
    id: str
    route: JobRoute
    # The API key's id (shared/service.py KEY_ID); None on an open deployment.
    owner: str | None
    # The validated request as JSON, its seed fixed, so any replica can run it again and get the same image.
    spec: dict[str, Any]
    # Units of the queue's bounds the job takes (its images).
    weight: int = 1
    status: JobStatus = JobStatus.queued
    # Whether a client asked for 202 (it polls or streams) or waits on its connection.
    asynchronous: bool = False
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    # The output and the upload are deleted at this time; the record stays, as ``expired``.
    expires_at: float | None = None
    step: int | None = None
    total_steps: int | None = None
    # Runs started: a job that was running when its replica died is run once more, then failed.
    attempts: int = 0
    # The synchronous route's response body, when succeeded.
    result: dict[str, Any] | None = None
    # When failed: {"status", "body", "headers"} as the synchronous route would have answered.
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    body_hash: str | None = None
    webhook: Webhook | None = None
    # Whether the request carried an upload (the profile's selfie), kept beside the record until it expires.
    has_blob: bool = False
    # Whether its result is stored even though its client waits for it: the OpenAI route's signed image URLs
    # are served from it, by any replica.
    keeps_output: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        data = dict(data)
        data["status"] = JobStatus(data["status"])
        hook = data.get("webhook")
        data["webhook"] = Webhook(hook["url"], tuple(hook.get("events") or ())) if hook else None
        return cls(**data)


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    type: EventType
    # Event fields: position (queued), step/total (progress), the public job view (terminal events).
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "type": self.type, "data": self.data, "at": self.at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobEvent:
        return cls(data["job_id"], data["type"], data.get("data") or {}, data.get("at", time.time()))
