"""Webhook delivery for jobs: target checks (no SSRF), signed deliveries, retries, per-job order and throttle.

The jobs manager calls ``check_target`` when a job with a webhook is submitted (a refusal is the client's
422) and ``WebhookSender.notify`` for each of the job's events; ``notify`` only queues, so a slow or dead
receiver never holds a job. Each job has one line of deliveries, sent in order, one at a time; lines of
different jobs run side by side, bounded by ``max_concurrent`` requests in all. The scheme (headers, the
signature a receiver checks, retries) is in docs/JOBS.md "Webhooks"; the allow-list and the settings are in
DEPLOYMENT.md "Job webhooks".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from services.interface.jobs.records import EventType, JobEvent, JobRecord, WebhookEvent
from shared.errors import ValidationFailed
from shared.metrics import ServiceMetrics
from shared.offload import INLINE_BYTES, off_loop_if

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A host name's addresses, as the resolver answers them (a seam for tests: DNS rebinding is not reproducible).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
Outcome = Literal["delivered", "rejected", "expired", "refused", "superseded", "dropped"]
OUTCOMES: tuple[Outcome, ...] = ("delivered", "rejected", "expired", "refused", "superseded", "dropped")

# The webhook event each job event is (queued is not one); a terminal event's job view says how it ended.
WEBHOOK_EVENT: dict[EventType, WebhookEvent] = {
    "started": "start",
    "progress": "progress",
    "completed": "completed",
    "failed": "completed",
    "canceled": "completed",
    "expired": "completed",
}
# The job's status a terminal event stands for, so a receiver can tell them apart without the job view.
TERMINAL_STATUS: dict[EventType, str] = {
    "completed": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
    "expired": "expired",
}

MAX_URL_CHARS = 2048
MIN_SECRET_BYTES = 24
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?)*$"
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# One public answer for "does not resolve" and "resolves to a refused address": two would let a client map
# which internal names exist through the pod's resolver.
_REFUSED_HOST = "webhook host is not reachable or not allowed"


@dataclass(frozen=True, slots=True)
class AllowList:
    """Targets allowed even when private: networks (an address or a CIDR) and exact host names."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.rstrip(".")
            if not _HOST_NAME.match(name):
                raise ValueError(f"webhook allow-list entry is neither a CIDR nor a host name: {raw!r}")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def names(self, host: str) -> bool:
        """Whether the URL's host itself is listed: its name, or an address literal in a listed network."""
        if host in self.hosts:
            return True
        try:
            return self.covers(ipaddress.ip_address(host))
        except ValueError:
            return False

    def covers(self, ip: IPAddress) -> bool:
        candidates = [ip]
        inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        if inner is not None:
            candidates.append(inner)
        return any(c.version == n.version and c in n for c in candidates for n in self.networks)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    # None: webhooks are off (a job asking for one is refused).
    secret: bytes | None = field(default=None, repr=False)
    allow: AllowList = AllowList()
    # One attempt (connect, send, answer headers); the receiver's body is never read.
    timeout_s: float = 10.0
    # Attempts start within this long of the first; then the delivery is given up.
    retry_for_s: float = 300.0
    retry_base_s: float = 1.0
    retry_max_delay_s: float = 60.0
    progress_interval_s: float = 0.5
    # Webhook requests in flight over all jobs.
    max_concurrent: int = 32
    # What close() waits for deliveries in flight before it cancels them.
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        # Standard Webhooks asks for 24 random bytes at least: a short secret can be found offline from one
        # captured delivery. The message never includes the secret.
        if self.secret is not None and len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the webhook secret must be at least {MIN_SECRET_BYTES} bytes")


def webhook_client(config: WebhookConfig) -> httpx.AsyncClient:
    """The client deliveries want: no proxies from the environment (they would dodge the address check),
    no redirects (a 3xx could point anywhere), no reused connections (each is pinned to a checked address)."""
    return httpx.AsyncClient(
        timeout=config.timeout_s,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=config.max_concurrent, max_keepalive_connections=0),
    )


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and may be routed to (mapped, compatible, NAT64, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast. ``is_global`` alone is not enough on 3.11: it is true for multicast,
    site-local and IPv6 forms that embed a private IPv4 address (``64:ff9b::7f00:1``, ``2002:7f00:1::``)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public(inner)
        if ip.is_site_local:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address the host name resolves to, by the system resolver in the loop's executor."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetUnresolved(ValidationFailed):
    """The host did not resolve (in time): refused at submission, retried at delivery."""


@dataclass(frozen=True, slots=True)
class CheckedTarget:
    url: httpx.URL
    # The checked addresses; a delivery connects to the first, so what was checked is what is reached.
    addresses: tuple[str, ...]

    def request_url(self) -> httpx.URL:
        return self.url.copy_with(host=self.addresses[0])

    def extensions(self) -> dict[str, Any]:
        # TLS must still name (and verify) the host, not the address the URL now holds.
        host = self.url.raw_host.decode("ascii")
        if self.url.scheme != "https" or _is_ip_literal(host):
            return {}
        return {"sni_hostname": host}


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _refuse(detail: str) -> ValidationFailed:
    return ValidationFailed(detail, param="webhook")


def parse_target(url: str) -> httpx.URL:
    """The URL's own checks (no DNS). The same parser parses it here and sends to it: no parser gap."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise _refuse(f"webhook must be a URL of at most {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise _refuse("webhook is not a valid URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise _refuse("webhook must be an https URL")
    if not parsed.host:
        raise _refuse("webhook is not a valid URL")
    if parsed.userinfo:
        raise _refuse("webhook URL must not carry credentials")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise _refuse("webhook is not a valid URL")
    return parsed


async def resolve_target(url: str, config: WebhookConfig, resolve: Resolver = resolve_host) -> CheckedTarget:
    if config.secret is None:
        raise _refuse("webhooks are not enabled on this service")
    parsed = parse_target(url)
    # The ASCII (IDNA) form: what DNS, TLS and the allow-list see.
    host = parsed.raw_host.decode("ascii")
    if parsed.scheme == "http" and not config.allow.names(host):
        raise _refuse("webhook must be an https URL")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(config.timeout_s):
            addresses = tuple(await resolve(host, port))
    except (OSError, TimeoutError, UnicodeError) as exc:
        raise TargetUnresolved(_REFUSED_HOST, param="webhook") from exc
    if not addresses:
        raise TargetUnresolved(_REFUSED_HOST, param="webhook")
    if host not in config.allow.hosts:
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError as exc:
                raise _refuse(_REFUSED_HOST) from exc
            if not (config.allow.covers(ip) or is_public(ip)):
                raise _refuse(_REFUSED_HOST)
    return CheckedTarget(parsed, addresses)


async def check_target(url: str, config: WebhookConfig, resolve: Resolver = resolve_host) -> None:
    """Refuse (422, ``param="webhook"``) a webhook the sender would not deliver to. Delivery checks again."""
    await resolve_target(url, config, resolve)


def signature(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    # The id is signed too (as Standard Webhooks signs it): a replayed body cannot come under a fresh id.
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1=" + hmac.new(secret, content, hashlib.sha256).hexdigest()


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class _Delivery:
    id: str
    job_id: str
    url: str
    type: WebhookEvent
    payload: dict[str, Any]
    body: bytes | None = None


@dataclass(slots=True)
class _JobLine:
    """One job's deliveries: start and completed in order, and at most one progress, the latest."""

    job_id: str
    queue: deque[_Delivery] = field(default_factory=deque)
    progress: _Delivery | None = None
    # No progress is sent before this (monotonic); the line lives until then so a new one cannot skip it.
    progress_due: float = 0.0
    current: _Delivery | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def has_news(self) -> bool:
        return bool(self.queue) or self.progress is not None


class WebhookSender:
    def __init__(
        self,
        config: WebhookConfig,
        client: httpx.AsyncClient,
        metrics: ServiceMetrics | None = None,
        *,
        resolve: Resolver = resolve_host,
        rng: random.Random | None = None,
    ) -> None:
        if config.secret is None:
            raise ValueError("a WebhookSender needs a secret (webhooks are off without one)")
        self.config = config
        self.client = client
        self.resolve = resolve
        self.rng = rng or random.Random()
        self._secret: bytes = config.secret
        self._lines: dict[str, _JobLine] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._closing = False
        self._dropped = 0
        self._outcomes = (
            metrics.counter("imgpod_webhook_deliveries_total", "Webhook deliveries by outcome", ("outcome",))
            if metrics
            else None
        )
        if self._outcomes is not None:
            for outcome in OUTCOMES:
                self._outcomes.labels(outcome=outcome)

    # -- the jobs side ----------------------------------------------------------------------------------

    def notify(self, record: JobRecord, event: JobEvent) -> None:
        """Queue the event's delivery, if the job's webhook wants it, and return at once."""
        hook = record.webhook
        kind = WEBHOOK_EVENT.get(event.type)
        if hook is None or kind is None or not hook.wants(kind) or self._closing:
            return
        delivery = _Delivery("msg_" + secrets.token_hex(12), record.id, hook.url, kind, _payload(event, kind))
        line = self._lines.get(record.id)
        if line is None:
            line = self._lines[record.id] = _JobLine(record.id)
            task = asyncio.create_task(self._run(line), name=f"webhook {record.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if kind == "progress":
            if line.progress is not None:
                self._count("superseded")
            line.progress = delivery
        else:
            # A newer state supersedes a progress still waiting for its turn.
            if line.progress is not None:
                self._count("superseded")
                line.progress = None
            line.queue.append(delivery)
        line.wake.set()

    async def close(self) -> None:
        """Stop taking events; let deliveries in flight finish for up to ``close_timeout_s``, then cancel."""
        self._closing = True
        for line in self._lines.values():
            line.wake.set()
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.config.close_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._dropped:
            # One line for the lot: a shutdown with many receivers down must not flood the log.
            log.warning("webhook deliveries dropped at shutdown", extra={"count": self._dropped})

    @property
    def busy_jobs(self) -> int:
        """Jobs with a delivery queued, in flight or within its progress interval."""
        return len(self._lines)

    # -- one job's line ---------------------------------------------------------------------------------

    async def _run(self, line: _JobLine) -> None:
        try:
            while True:
                if line.queue:
                    await self._deliver(line, line.queue.popleft())
                    continue
                if self._closing:
                    return
                wait_s = line.progress_due - time.monotonic()
                if wait_s > 0:
                    await self._wait(line, wait_s)
                    continue
                if line.progress is None:
                    return
                delivery, line.progress = line.progress, None
                await self._deliver(line, delivery)
                # From the end of the delivery: the receiver then sees progress at least an interval apart.
                line.progress_due = time.monotonic() + self.config.progress_interval_s
        finally:
            # No await since the last check: an event notified from now on starts a new line.
            if self._lines.get(line.job_id) is line:
                del self._lines[line.job_id]
            left = len(line.queue) + (line.progress is not None) + (line.current is not None)
            if left:
                self._count("dropped", left)
                self._dropped += left

    async def _wait(self, line: _JobLine, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking early when the job has a new event (or the sender closes)."""
        line.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await line.wake.wait()

    async def _deliver(self, line: _JobLine, delivery: _Delivery) -> None:
        line.current = delivery
        deadline = time.monotonic() + self.config.retry_for_s
        attempt = 0
        while True:
            outcome, retry_after = await self._attempt(delivery)
            if outcome is not None:
                break
            now = time.monotonic()
            if now >= deadline:
                outcome = "expired"
                break
            delay = min(self.config.retry_max_delay_s, self.config.retry_base_s * 2**attempt)
            # Jitter in [d/2, d]: spreads receivers' recoveries and keeps each gap longer than the one before.
            delay *= self.rng.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.config.retry_max_delay_s))
            delay = min(delay, deadline - now)
            if delivery.type == "progress":
                # A newer event makes this progress stale: give it up rather than hold the line.
                await self._wait(line, delay)
                if line.has_news():
                    outcome = "superseded"
                    break
            else:
                await asyncio.sleep(delay)
            attempt += 1
        line.current = None
        self._count(outcome)
        if outcome != "delivered":
            log.warning(
                "webhook delivery not delivered",
                extra={
                    "job_id": delivery.job_id,
                    "webhook_id": delivery.id,
                    "event": delivery.type,
                    "outcome": outcome,
                    "attempts": attempt + 1,
                },
            )

    async def _attempt(self, delivery: _Delivery) -> tuple[Outcome | None, float | None]:
        """One try: its final outcome, or None to try again (with the receiver's Retry-After, if any)."""
        try:
            # Again at every attempt: the name may resolve elsewhere now (DNS rebinding).
            target = await resolve_target(delivery.url, self.config, self.resolve)
        except TargetUnresolved:
            return None, None
        except ValidationFailed:
            return "refused", None
        if delivery.body is None:
            # Built once, at the first attempt: every retry sends the same bytes under the same Webhook-Id.
            delivery.payload["sent_at"] = round(time.time(), 3)
            delivery.body = await off_loop_if("job" in delivery.payload, _encode, delivery.payload)
        timestamp = str(int(time.time()))
        body = delivery.body
        sig = await off_loop_if(
            len(body) > INLINE_BYTES, signature, self._secret, delivery.id, timestamp, body
        )
        headers = {
            "Host": target.url.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": "img_pod-webhooks/1",
            "Webhook-Id": delivery.id,
            "Webhook-Timestamp": timestamp,
            "Webhook-Signature": sig,
            # Every connection is pinned to one checked address for one host: never reused for another.
            "Connection": "close",
        }
        request = self.client.build_request(
            "POST",
            target.request_url(),
            content=body,
            headers=headers,
            timeout=self.config.timeout_s,
            extensions=target.extensions(),
        )
        try:
            # The wait for a slot is the sender's own backlog, not the receiver's time: outside the timeout.
            async with self._slots:
                async with asyncio.timeout(self.config.timeout_s):
                    response = await self.client.send(request, stream=True, follow_redirects=False)
                    # The body is never read: a receiver cannot make us hold (or parse) its answer.
                    await response.aclose()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            log.info(
                "webhook attempt failed",
                extra={"job_id": delivery.job_id, "webhook_id": delivery.id, "error": type(exc).__name__},
            )
            return None, None
        status = response.status_code
        if 200 <= status < 300:
            return "delivered", None
        if status == 429 or status >= 500:
            return None, _retry_after_s(response.headers.get("retry-after"))
        log.info(
            "webhook refused by its receiver",
            extra={"job_id": delivery.job_id, "webhook_id": delivery.id, "status": status},
        )
        return "rejected", None

    def _count(self, outcome: Outcome, n: int = 1) -> None:
        if self._outcomes is not None:
            self._outcomes.labels(outcome=outcome).inc(n)


def _payload(event: JobEvent, kind: WebhookEvent) -> dict[str, Any]:
    payload: dict[str, Any] = {"id": event.job_id, "type": kind}
    if kind == "progress":
        payload["step"] = event.data.get("step")
        payload["total"] = event.data.get("total")
    if kind == "completed":
        payload["status"] = TERMINAL_STATUS[event.type]
    if "job" in event.data:
        payload["job"] = event.data["job"]
    return payload


def _retry_after_s(value: str | None) -> float | None:
    # Seconds only; an HTTP-date Retry-After falls back to the backoff.
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
