"""Per-API-key rate limits at admission: requests per minute on every queued route, images per hour on the
image routes (a request's ``n`` images count ``n``).

When: ``services/interface/admission.py`` asks after validation and policy (a malformed or blocked request
costs its key nothing) and after the queue's own check (a request the queue would refuse anyway spends no
quota), just before the request takes its place. An open deployment (no API keys) has no keys to limit.

Counting: the ``limits`` library's sliding window counter: per key and policy, the count of the current
window plus the previous window's count weighted by how much of it still overlaps the last ``w`` seconds.
O(1) memory per key and one atomic Lua call per hit in Redis, where the moving window keeps one entry per
unit spent (10,000 images an hour: 10,000 entries per key).

Storage: ``memory://`` (this process, the default) or ``redis://`` / ``rediss://`` (every replica shares the
counts). Memory uses limits' synchronous ``MemoryStorage``, called straight from the loop (microseconds, no
I/O): its asyncio twin starts a task that sweeps every key on each hit: 0.24 ms of loop CPU per check with
1,000 keys, 2.5 ms with 10,000 (bench/bench_fair_share.py). A store that fails or is slow
(``rate_limit_storage_timeout_s``) must not fail requests: admission goes on without the limits for
``FAIL_OPEN_S`` and says so once in the log and in ``imgpod_rate_limit_store_errors_total``; the queues' fair
share still bounds every key meanwhile.

Response fields, as draft-ietf-httpapi-ratelimit-headers-10 (sections 3 and 4) writes them: the key's
policies in ``RateLimit-Policy: "requests";q=600;w=60, "images";q=100;w=3600;qu="images"``, and what is
left after this request in ``RateLimit: "requests";r=599;t=1``: ``r`` units left, ``t`` seconds until one
more is free again (left out while nothing is spent). "images" is not one of the draft's registered quota
units (requests, content-bytes, concurrent-requests); it is named rather than passed off as requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindow
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from services.interface.settings import ENDPOINTS, InterfaceSettings, KeyRateLimits
from shared.errors import RateLimited, ValidationFailed
from shared.metrics import ServiceMetrics
from shared.service import key_id

log = logging.getLogger(__name__)

REQUESTS = "requests"
IMAGES = "images"
# Queues whose requests make images (and spend images); the rest (the chat reply) only spend requests.
IMAGE_QUEUES = frozenset(ENDPOINTS) - {"reply"}
# After a store failure, admit without limits this long before asking the store again.
FAIL_OPEN_S = 5.0
KEY_PREFIX = "imgpod-ratelimit"
Fields = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Policy:
    """One quota: ``quota`` units per ``window_s`` seconds, named as in the RateLimit fields."""

    name: str
    quota: int
    window_s: int
    item: RateLimitItem

    @classmethod
    def of(cls, name: str, quota: int, window_s: int) -> Policy | None:
        if quota <= 0:
            return None
        # The quota is part of limits' storage key: a changed quota starts fresh counts.
        item = RateLimitItemPerSecond(quota, window_s, namespace=f"{KEY_PREFIX}-{name}")
        return cls(name, quota, window_s, item)

    def describe(self) -> str:
        unit = ';qu="images"' if self.name == IMAGES else ""
        return f'"{self.name}";q={self.quota};w={self.window_s}{unit}'


@dataclass(frozen=True, slots=True)
class KeyPolicies:
    """One key's policies, with its RateLimit-Policy field rendered once."""

    requests: Policy | None
    images: Policy | None
    policy_field: str

    @classmethod
    def of(cls, limits: KeyRateLimits, defaults: KeyRateLimits) -> KeyPolicies:
        rpm = (
            limits.requests_per_minute
            if limits.requests_per_minute is not None
            else defaults.requests_per_minute
        )
        iph = limits.images_per_hour if limits.images_per_hour is not None else defaults.images_per_hour
        requests, images = Policy.of(REQUESTS, rpm or 0, 60), Policy.of(IMAGES, iph or 0, 3600)
        return cls(requests, images, ", ".join(p.describe() for p in (requests, images) if p is not None))


@dataclass(frozen=True, slots=True)
class Window:
    """A policy's sliding-window counts for one key, as limits' ``get_sliding_window`` reads them: the
    previous window's count and how long it still weighs, the current one's count and its time to live
    (which runs one window past the current window's end)."""

    previous: int
    previous_ttl_s: float
    current: int
    current_ttl_s: float

    def used(self, window_s: float) -> int:
        """Units counted against the quota now, rounded as the library rounds them when it decides a hit."""
        return math.floor(self.previous * self.previous_ttl_s / window_s) + self.current

    def seconds_until_below(self, window_s: float, bound: float) -> float:
        """How long until the weighted count is below ``bound``, if nothing more is spent.

        Until the current window ends the previous count's weight falls linearly to 0; from then on the
        current count, now the previous one, falls from its full value over one window.
        """
        rollover = self.current_ttl_s - window_s if self.current_ttl_s > 0 else math.inf
        rollover = max(0.0, rollover)
        if self.current < bound:
            if self.previous <= 0 or self.previous_ttl_s <= 0:
                return 0.0
            falls_below = self.previous_ttl_s - (bound - self.current) * window_s / self.previous
            return max(0.0, min(falls_below, rollover))
        return rollover + window_s * (1 - bound / self.current)


class Counters(Protocol):
    """Where the counts live: this process, or a store every replica shares."""

    async def hit(self, policy: Policy, key: str, cost: int) -> bool: ...

    async def window(self, policy: Policy, key: str) -> Window: ...

    async def windows(self, policies: list[Policy], key: str) -> list[Window]:
        """Several policies' windows: at once where that saves round trips."""
        ...

    async def close(self) -> None: ...


class MemoryCounters:
    """limits' synchronous in-process storage: no I/O and no task per hit (see the module docstring)."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)

    async def hit(self, policy: Policy, key: str, cost: int) -> bool:
        return self.strategy.hit(policy.item, key, cost=cost)

    async def window(self, policy: Policy, key: str) -> Window:
        return Window(*self.storage.get_sliding_window(policy.item.key_for(key), policy.window_s))

    async def windows(self, policies: list[Policy], key: str) -> list[Window]:
        # In turn: nothing here waits, and a gather's tasks would cost more than the reads.
        return [await self.window(policy, key) for policy in policies]

    async def close(self) -> None:
        return None


class RedisCounters:
    """limits' asyncio Redis storage (the ``redis`` client): counts shared by every replica."""

    def __init__(self, uri: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.storage = RedisStorage(
            "async+" + uri,
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.strategy = AsyncSlidingWindow(self.storage)

    async def hit(self, policy: Policy, key: str, cost: int) -> bool:
        async with asyncio.timeout(self.timeout_s):
            return await self.strategy.hit(policy.item, key, cost=cost)

    async def window(self, policy: Policy, key: str) -> Window:
        async with asyncio.timeout(self.timeout_s):
            return Window(*await self.storage.get_sliding_window(policy.item.key_for(key), policy.window_s))

    async def windows(self, policies: list[Policy], key: str) -> list[Window]:
        # Side by side: one round trip's time for both.
        return list(await asyncio.gather(*(self.window(policy, key) for policy in policies)))

    async def close(self) -> None:
        # limits has no close of its own; the redis client under it holds the connection pool.
        await self.storage.bridge.storage.aclose()


class RateLimiter:
    def __init__(
        self,
        defaults: KeyRateLimits,
        overrides: Mapping[str, KeyRateLimits],
        counters: Counters,
        metrics: ServiceMetrics,
    ) -> None:
        self.defaults = defaults
        self.overrides = dict(overrides)
        self.counters = counters
        # Per key id, built on first use: the keys are the configured ones, a bounded set.
        self._policies: dict[str, KeyPolicies] = {}
        self._open_until = 0.0
        refused = metrics.counter(
            "imgpod_rate_limited_total", "Requests refused by a key's limit", ("policy",)
        )
        self._m_refused = {name: refused.labels(name) for name in (REQUESTS, IMAGES)}
        self._m_store_errors = metrics.counter(
            "imgpod_rate_limit_store_errors_total", "Rate limit store calls that failed (admitted unlimited)"
        )

    @classmethod
    def from_settings(cls, settings: InterfaceSettings, metrics: ServiceMetrics) -> RateLimiter | None:
        """The limiter the settings ask for; None when no key has any limit (nothing to do per request)."""
        defaults = KeyRateLimits(
            requests_per_minute=settings.rate_limit_requests_per_minute,
            images_per_hour=settings.rate_limit_images_per_hour,
        )
        limited = [defaults, *settings.rate_limit_overrides.values()]
        if not any(lim.requests_per_minute or lim.images_per_hour for lim in limited):
            return None
        if settings.api_keys:
            known = {key_id(k.get_secret_value()) for k in settings.api_keys}
            unknown = sorted(set(settings.rate_limit_overrides) - known)
            if unknown:
                # A mistyped id would silently leave its key on the defaults.
                raise ValueError(
                    f"rate_limit_overrides: no configured API key has the id {', '.join(unknown)}"
                )
        uri = settings.rate_limit_storage_uri.get_secret_value()
        counters: Counters = (
            MemoryCounters()
            if uri.startswith("memory://")
            else RedisCounters(uri, settings.rate_limit_storage_timeout_s)
        )
        return cls(defaults, settings.rate_limit_overrides, counters, metrics)

    def policies_for(self, key: str) -> KeyPolicies:
        policies = self._policies.get(key)
        if policies is None:
            limits = self.overrides.get(key, self.defaults)
            policies = self._policies[key] = KeyPolicies.of(limits, self.defaults)
        return policies

    async def admit(self, key: str, images: int) -> Fields:
        """Spend one request and ``images`` images of ``key``'s quotas, or raise RateLimited without spending
        on the policy that refused. Returns the RateLimit fields for the response (none when unlimited)."""
        policies = self.policies_for(key)
        spend = [(policies.requests, 1), (policies.images, images)]
        costs = [(policy, cost) for policy, cost in spend if policy is not None and cost > 0]
        if not costs:
            return []
        if policies.images is not None and images > policies.images.quota:
            # More than a whole window's quota could never pass: a refusal to retry would be a lie.
            raise ValidationFailed(
                f"n: {images} images is more than this API key may make in an hour ({policies.images.quota})",
                param="n",
            )
        if time.monotonic() < self._open_until:
            return []
        try:
            for policy, cost in costs:
                if not await self.counters.hit(policy, key, cost):
                    window = await self.counters.window(policy, key)
                    raise self._refusal(policies, policy, cost, window)
            windows = await self.counters.windows([policy for policy, _ in costs], key)
        except RateLimited:
            raise
        except Exception as exc:
            # Any store failure (refused connection, timeout, a script error): admit (module docstring).
            self._fail_open(exc)
            return []
        if self._open_until:
            self._open_until = 0.0
            log.warning("rate limit store answers again: limits apply")
        limit_field = ", ".join(
            _limit_item(policy, window) for (policy, _), window in zip(costs, windows, strict=True)
        )
        return [(b"ratelimit-policy", policies.policy_field.encode()), (b"ratelimit", limit_field.encode())]

    def _refusal(self, policies: KeyPolicies, policy: Policy, cost: int, window: Window) -> RateLimited:
        self._m_refused[policy.name].inc()
        # Room for ``cost`` units: the weighted count must fall below quota - cost + 1 (it is rounded down).
        retry_s = _seconds_past(window.seconds_until_below(policy.window_s, policy.quota - cost + 1))
        left = max(0, policy.quota - window.used(policy.window_s))
        what = "requests per minute" if policy.name == REQUESTS else "images per hour"
        return RateLimited(
            f"this API key has used its {policy.quota} {what}; retry after the Retry-After seconds",
            retry_after_s=retry_s,
            policy=policy.name,
            fields={
                "RateLimit-Policy": policies.policy_field,
                "RateLimit": f'"{policy.name}";r={left};t={retry_s}',
            },
        )

    def _fail_open(self, exc: Exception) -> None:
        self._m_store_errors.inc()
        if not self._open_until:
            # Once per outage, not per request. The log is the operator's: the store's own words belong there.
            log.warning(
                "rate limit store failed: admitting without limits",
                extra={"error": type(exc).__name__},
                exc_info=exc,
            )
        self._open_until = time.monotonic() + FAIL_OPEN_S

    async def close(self) -> None:
        await self.counters.close()


def _limit_item(policy: Policy, window: Window) -> str:
    used = window.used(policy.window_s)
    item = f'"{policy.name}";r={max(0, policy.quota - used)}'
    if used:
        item += f";t={_seconds_past(window.seconds_until_below(policy.window_s, used))}"
    return item


def _seconds_past(seconds: float) -> int:
    """Whole seconds strictly past the moment: at the moment itself the count is still at the bound. The
    microsecond absorbs float noise (a window's end computed as 49.99999999 s away is 50 s away)."""
    return math.floor(seconds + 1e-6) + 1
