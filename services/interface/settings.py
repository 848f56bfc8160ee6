"""Interface settings (``INTERFACE_``): worker URLs per pool, queues, timeouts, limits, keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode, SettingsConfigDict

from services.interface.discovery import is_dns_entry, parse_dns_entry, parse_nameserver
from services.interface.jobs.webhooks import AllowList
from shared.settings import ServiceSettings, StrList, UrlList, parse_str_list

ENDPOINTS = ("profile", "text2img", "chat1to1", "shorts", "scenes", "private", "reply")
GuardMode = Literal["enforce", "observe", "off"]
RATE_LIMIT_STORAGE_SCHEMES = ("memory", "redis", "rediss")
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(parse_str_list)]


class QueueLimits(BaseModel):
    capacity: int = Field(ge=1)
    sla_ms: float = Field(gt=0)


class KeyRateLimits(BaseModel):
    """One API key's own limits; a field left out takes the default (``rate_limit_*``), 0 means none."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=0)
    images_per_hour: int | None = Field(None, ge=0)


# Every list of worker URLs (plain, or dns://host:port entries).
WORKER_URL_FIELDS = (
    "profile_worker_urls",
    "selfie_feature_worker_urls",
    "chat1to1_worker_urls",
    "shorts_worker_urls",
    "scenes_worker_urls",
    "text2img_worker_urls",
    "llm_urls",
)


class InterfaceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INTERFACE_", extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "interface"

    # Uploads of up to max_upload_bytes arrive as multipart, so the body limit must leave room for them.
    max_body_bytes: int = Field(12 * 1024 * 1024, ge=1024)

    profile_worker_urls: UrlList = Field(default_factory=list)
    selfie_feature_worker_urls: UrlList = Field(default_factory=list)
    chat1to1_worker_urls: UrlList = Field(default_factory=list)
    shorts_worker_urls: UrlList = Field(default_factory=list)
    scenes_worker_urls: UrlList = Field(default_factory=list)
    text2img_worker_urls: UrlList = Field(default_factory=list)
    llm_urls: UrlList = Field(default_factory=list)

    # Any URL list above may name workers by DNS: ``dns://<host>:<port>`` is every A/AAAA address of <host>
    # (e.g. a Kubernetes headless Service, one address per ready pod), each a worker http://<address>:<port>,
    # looked up again this often: a new address joins once its /healthz is 200, a gone one is drained.
    dns_refresh_s: float = Field(5.0, gt=0, le=300)
    # The nameserver to ask (<ip>, <ip>:<port> or [<ipv6>]:<port>); unset: the system's (/etc/resolv.conf,
    # with its search domains, so a short Service name resolves in its namespace).
    dns_nameserver: str | None = None
    # Bound of one lookup; a lookup that fails keeps the last known workers.
    dns_timeout_s: float = Field(2.0, gt=0, le=30)
    # Keep-alive connections are sized at start for this many workers per dns:// entry (the HTTP client's pool
    # is fixed then); more workers still serve, with a new connection for calls past it.
    dns_expected_workers: int = Field(8, ge=1, le=1024)

    # Client keys; when the list is empty, /v1 is open (local development).
    api_keys: SecretList = Field(default_factory=list)

    queue_capacity: int = Field(32, ge=1)
    queue_sla_ms: float = Field(60_000, gt=0)
    # Per endpoint, e.g. INTERFACE_QUEUE_OVERRIDES='{"profile": {"capacity": 8, "sla_ms": 120000}}'.
    queue_overrides: dict[str, QueueLimits] = Field(default_factory=dict)
    retry_after_cap_ms: float = Field(30_000, gt=0)
    # Fair share: the most of a queue's places (capacity + consumers, waiting and running) one API key may
    # hold; beyond it that key gets 429 ``key_share`` while the others still get in. 1: no bound. It binds
    # only with two keys or more: a deployment with one client key gives that client the whole queue.
    queue_max_share_per_key: float = Field(0.5, gt=0, le=1)

    def effective_max_share(self) -> float:
        return self.queue_max_share_per_key if len(self.api_keys) > 1 else 1.0

    # Per API key, checked at admission (after validation, before the queue); 0: no limit. Requests count
    # on every queued route, images (a request's ``n``) on the image routes (interface/rate_limits.py).
    rate_limit_requests_per_minute: int = Field(0, ge=0)
    rate_limit_images_per_hour: int = Field(0, ge=0)
    # By key id (the first 12 hex characters of the key's SHA-256), e.g.
    # INTERFACE_RATE_LIMIT_OVERRIDES='{"9f86d081884c": {"images_per_hour": 2000}}'.
    rate_limit_overrides: dict[str, KeyRateLimits] = Field(default_factory=dict)
    # Where the counts live: memory:// (this process), or redis://host:port/db so that every replica shares
    # them (a password in the URL: hence a secret).
    rate_limit_storage_uri: SecretStr = SecretStr("memory://")
    # Bound of one call to a shared store; past it (or on any store error) admission goes on without the
    # limits for a few seconds rather than fail requests: the queues' own bounds still hold.
    rate_limit_storage_timeout_s: float = Field(0.5, gt=0)
    # Image workers advertise devices x max batch on /healthz; this bounds it (and applies when they do not).
    per_worker_concurrency: int = Field(8, ge=1)
    selfie_concurrency: int = Field(2, ge=1)
    llm_concurrency: int = Field(4, ge=1)

    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    eject_after_failures: int = Field(3, ge=1)
    eject_cooldown_s: float = Field(10.0, ge=0)

    analyze_timeout_s: float = Field(60.0, gt=0)
    generate_timeout_s: float = Field(120.0, gt=0)
    expand_timeout_s: float = Field(30.0, gt=0)
    caption_timeout_s: float = Field(20.0, gt=0)
    reply_timeout_s: float = Field(30.0, gt=0)

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(40_000_000, ge=1024)
    # When the caption stage fails after the image was made, answer with a labelled template caption
    # (caption_source "template") rather than throwing the image away.
    caption_fallback: bool = True
    # When the LLM pool cannot reply to a 1:1 chat message (no healthy worker, 5xx, timeout), answer with a
    # labelled in-character template (source "template") instead of the error; off: the error is the answer.
    reply_fallback: bool = True

    # The guard model (the LLM pod's /v1/moderate) on every image route's user prompt and expanded prompt,
    # after the word rules. enforce: its verdict refuses, and a check that cannot be made refuses with 503
    # safety_unavailable. observe: verdicts and failures are counted and logged, nothing is refused (the
    # local stack: a random-weight guard answers noise). off: no call.
    guard: GuardMode = "enforce"
    # Bound of one guard answer once the call is sent (like every stage timeout); past it, 503 in enforce.
    guard_timeout_s: float = Field(3.0, gt=0)

    # Personas' chat images (persona_id): img2img starts each from the persona's approved avatar (the image
    # workers' IMAGE_IMG2IMG_STRENGTH, or the request's strength); off: text to image from the features only.
    appearance_lock: Literal["img2img", "off"] = "img2img"
    # Such an image's face is compared with the avatar's on the selfie worker (identity in the response).
    identity_check: bool = True
    identity_timeout_s: float = Field(10.0, gt=0)

    # The OpenAI-compatible images API (services/interface/openai_images/). Most images one request may ask
    # for (``n``); each is its own item in the model's queue.
    openai_max_n: int = Field(4, ge=1, le=16)
    # ``response_format=url``: the URL serves the image from its job's stored output, from any replica on the
    # same store, until the output expires (jobs_output_ttl_s), behind an HMAC signature made with this key.
    # Unset: a key derived from internal_token (every replica has the same); with neither, random per
    # process, and then refused with a shared (Redis) store, where another replica could not check it.
    openai_url_secret: SecretStr | None = None
    # Public base of those URLs (https://host behind a proxy); the request's own base URL when unset.
    openai_public_url: str | None = None

    # Jobs (services/interface/jobs/, docs/JOBS.md). One interface keeps them in one SQLite file (a second
    # interface on the same file refuses to start); with a Redis URL, every replica shares queues and jobs.
    jobs_sqlite_path: Path = Path(".local/jobs.sqlite3")
    jobs_redis_url: SecretStr | None = None
    # Keys and channels of the jobs in Redis start with this (several deployments may share one Redis).
    jobs_redis_prefix: str = Field("imgpod:jobs:", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Each replica says it lives (and how many consumers it has) this often, and keeps the queue entries of
    # the jobs it runs its own.
    jobs_redis_heartbeat_s: float = Field(2.0, gt=0, le=60)
    # A replica silent this long is taken for dead: its running jobs are reclaimed by the others and its
    # share of the bounds is dropped. At least 3 heartbeats (a slow heartbeat must not lose a live job).
    jobs_redis_claim_idle_s: float = Field(10.0, gt=0, le=600)
    # Finished job records (and their Idempotency-Keys) are deleted from Redis this long after they finish
    # (outputs go earlier, at jobs_output_ttl_s). Redis runs with noeviction, so nothing may live forever.
    jobs_redis_record_ttl_s: float = Field(7 * 86_400, ge=3600)
    # On shutdown, jobs running on this replica get this long to finish; the rest go to other replicas.
    jobs_redis_drain_s: float = Field(0.0, ge=0, le=600)

    # How long a finished job's output (its images, the upload) is kept; GET says ``expired`` after that.
    jobs_output_ttl_s: float = Field(3600.0, gt=0)
    jobs_sweep_interval_s: float = Field(30.0, gt=0)
    # How long a cancel call waits for a running job to stop (one denoising step, normally) before answering.
    jobs_cancel_wait_s: float = Field(5.0, ge=0)

    # Job webhooks (services/interface/jobs/webhooks.py; DEPLOYMENT.md "Job webhooks"). Every delivery is
    # signed with this secret (HMAC-SHA256, its UTF-8 bytes). Unset: webhooks are off, and a job that asks
    # for one is refused (422).
    jobs_webhook_secret: SecretStr | None = None
    # Targets allowed even though they are not public (loopback, link-local, RFC 1918, ULA, ...): addresses,
    # CIDRs and exact host names, e.g. '["10.20.0.0/16", "hooks.internal"]'. http:// is allowed only to a
    # listed host. Empty: public https targets only (no requests into the pod's own networks: no SSRF).
    jobs_webhook_allow: StrList = Field(default_factory=list)
    # One attempt: resolve, connect, send, the answer's status line (the body is never read).
    jobs_webhook_timeout_s: float = Field(15.0, gt=0, le=60)
    # Retries (connection errors, timeouts, 5xx, 429) start within this long of the first attempt; then the
    # delivery is given up. 0: one attempt. A job's deliveries are sent in order, so a dead receiver holds
    # that job's later ones up to this long (never the job itself).
    jobs_webhook_retry_for_s: float = Field(300.0, ge=0, le=86_400)
    # Backoff: base * 2^n, times a random factor in [0.5, 1], capped (a 429/503 Retry-After in seconds is
    # honoured up to the cap).
    jobs_webhook_retry_base_s: float = Field(1.0, gt=0, le=60)
    jobs_webhook_retry_max_delay_s: float = Field(60.0, gt=0, le=3600)
    # A job's progress deliveries are at least this far apart; the latest progress wins.
    jobs_webhook_progress_interval_ms: float = Field(500, ge=500, le=60_000)
    # Webhook requests in flight over all jobs of this replica.
    jobs_webhook_max_concurrent: int = Field(32, ge=1, le=1024)
    # On shutdown, deliveries still queued or in flight get this long, then are cancelled (counted dropped).
    jobs_webhook_close_timeout_s: float = Field(5.0, ge=0, le=60)

    # Personas (services/interface/personas/): stored where the jobs are. One interface: this SQLite file;
    # with jobs_redis_url, that Redis under this prefix, shared by every replica.
    personas_sqlite_path: Path = Path(".local/personas.sqlite3")
    personas_redis_prefix: str = Field("imgpod:personas:", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Personas one API key may keep; past it, creating one is refused (409) until some are deleted.
    personas_max_per_key: int = Field(1000, ge=1, le=1_000_000)

    @field_validator(*WORKER_URL_FIELDS)
    @classmethod
    def _dns_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            if is_dns_entry(entry):
                parse_dns_entry(entry)  # ValueError naming the entry that is not dns://<host>:<port>
        return value

    @field_validator("dns_nameserver")
    @classmethod
    def _nameserver(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_nameserver(value)
        return value.strip()

    @field_validator("jobs_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Blank (deploy.env's "KEY=") is unset. The length check (>= 24) is WebhookConfig's, at startup:
        # a pydantic error here would print the rejected secret in its input_value.
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("jobs_webhook_allow")
    @classmethod
    def _webhook_allow(cls, value: list[str]) -> list[str]:
        AllowList.parse(value)  # ValueError naming the entry that is neither a CIDR nor a host name
        return value

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _known_storage(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().partition("://")[0]
        if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            # The URL itself may hold a password: name only the schemes.
            raise ValueError(f"rate_limit_storage_uri: one of {', '.join(RATE_LIMIT_STORAGE_SCHEMES)}://")
        return value

    @model_validator(mode="after")
    def _claim_outlasts_heartbeats(self) -> InterfaceSettings:
        if self.jobs_redis_claim_idle_s < 3 * self.jobs_redis_heartbeat_s:
            raise ValueError("jobs_redis_claim_idle_s must be at least 3 x jobs_redis_heartbeat_s")
        if self.jobs_redis_record_ttl_s < self.jobs_output_ttl_s:
            raise ValueError("jobs_redis_record_ttl_s must be at least jobs_output_ttl_s")
        return self

    @model_validator(mode="after")
    def _replicas_share_the_url_key(self) -> InterfaceSettings:
        if self.jobs_redis_url is not None and self.openai_url_secret is None and self.internal_token is None:
            # Each replica would sign with a random key of its own: a URL made by one is a 404 on the others.
            raise ValueError(
                "with jobs_redis_url, set openai_url_secret or internal_token (the same on every replica)"
            )
        return self

    @model_validator(mode="after")
    def _drain_outlasts_requests(self) -> InterfaceSettings:
        # A drain shorter than a request's own timeout would cut accepted requests off at every deploy.
        longest = max(self.generate_timeout_s, self.analyze_timeout_s + self.generate_timeout_s)
        if self.drain_timeout_s < longest:
            raise ValueError(f"drain_timeout_s must be at least the longest request timeout ({longest:g} s)")
        return self

    def queue_limits(self, endpoint: str) -> QueueLimits:
        return self.queue_overrides.get(endpoint) or QueueLimits(
            capacity=self.queue_capacity, sla_ms=self.queue_sla_ms
        )
