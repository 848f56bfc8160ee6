"""Per-key rate limits (services/interface/rate_limits.py) on limits' real in-memory storage, on a fake clock.

The clock is ``time.time``, the one limits' storage reads, moved by hand: windows of a minute and an hour are
checked to the second without waiting for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from services.interface.rate_limits import (
    FAIL_OPEN_S,
    MemoryCounters,
    Policy,
    RateLimiter,
    RedisCounters,
    Window,
)
from services.interface.settings import InterfaceSettings, KeyRateLimits
from shared.errors import ErrorReply, RateLimited, ValidationFailed, native_shape, openai_shape
from shared.metrics import ServiceMetrics
from shared.service import key_id

# 10 s into a minute (and into an hour): limits' windows are aligned to the epoch.
START = 1_800_000_000.0 - 3600 + 10


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    yield fake


def limiter(
    rpm: int = 0, iph: int = 0, overrides: dict[str, KeyRateLimits] | None = None, metrics: Any = None
) -> RateLimiter:
    defaults = KeyRateLimits(requests_per_minute=rpm, images_per_hour=iph)
    return RateLimiter(defaults, overrides or {}, MemoryCounters(), metrics or ServiceMetrics("t"))


def admit(lim: RateLimiter, key: str, images: int = 0) -> dict[str, str]:
    """The response fields of an admitted request, by their (lowercase, ASGI) names."""
    fields = asyncio.run(lim.admit(key, images))
    return {name.decode(): value.decode() for name, value in fields}


def refusal(lim: RateLimiter, key: str, images: int = 0) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        admit(lim, key, images)
    return caught.value


def metric(metrics: ServiceMetrics, line_start: str) -> float:
    for line in metrics.render()[0].decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_previous_window_weighs_less_as_it_slides_out() -> None:
    # 10 units last minute, 30 s of the current minute left: they weigh 5 now, below 3 after 12 s more.
    w = Window(previous=10, previous_ttl_s=30.0, current=0, current_ttl_s=90.0)
    assert w.used(60) == 5
    assert w.seconds_until_below(60, 3) == pytest.approx(12.0)
    # The current window's own count waits for its end, then falls over a whole window.
    w = Window(previous=0, previous_ttl_s=0.0, current=10, current_ttl_s=80.0)
    assert w.seconds_until_below(60, 5) == pytest.approx(20.0 + 30.0)
    assert Window(0, 0.0, 0, 0.0).seconds_until_below(60, 1) == 0.0


def test_requests_per_minute_refuse_with_a_retry_after_that_is_right_to_the_second(clock: Clock) -> None:
    lim = limiter(rpm=3)
    first = admit(lim, "k1")
    assert first["ratelimit-policy"] == '"requests";q=3;w=60'
    # One spent; one more is free once this minute has ended (50 s) and the spent one has slid out.
    assert first["ratelimit"] == '"requests";r=2;t=51'
    assert admit(lim, "k1")["ratelimit"].startswith('"requests";r=1;')
    assert admit(lim, "k1")["ratelimit"].startswith('"requests";r=0;')

    err = refusal(lim, "k1")
    retry_after = int(err.headers()["Retry-After"])
    assert retry_after == 51
    assert err.headers()["RateLimit"] == '"requests";r=0;t=51'
    assert err.headers()["RateLimit-Policy"] == '"requests";q=3;w=60'
    assert err.status_code == 429 and err.reason == "rate_limited" and err.extra["policy"] == "requests"

    # Another key has its own count.
    assert admit(lim, "k2")["ratelimit"].startswith('"requests";r=2;')
    # Still refused a second before Retry-After, admitted at it, and a refusal spends nothing.
    clock.now += retry_after - 1.5
    refusal(lim, "k1")
    clock.now += 1.5
    assert admit(lim, "k1")["ratelimit"].startswith('"requests";r=0;')


def test_images_count_n_and_a_refusal_spends_nothing_of_that_policy(clock: Clock) -> None:
    lim = limiter(rpm=100, iph=5)
    fields = admit(lim, "k", images=3)
    assert fields["ratelimit-policy"] == '"requests";q=100;w=60, "images";q=5;w=3600;qu="images"'
    assert fields["ratelimit"].split(", ")[1].startswith('"images";r=2;t=')
    err = refusal(lim, "k", images=3)
    assert err.extra["policy"] == "images" and err.headers()["RateLimit"].startswith('"images";r=2;t=')
    # The hour's count is in its current window: room again once it has ended and slid far enough out.
    assert 3590 - 10 < int(err.headers()["Retry-After"]) <= 3600 * 2
    assert admit(lim, "k", images=2)["ratelimit"].split(", ")[1].startswith('"images";r=0;')
    # A route without images spends only the request.
    assert admit(lim, "k", images=0)["ratelimit"].startswith('"requests";r=96;')
    with pytest.raises(ValidationFailed) as caught:
        admit(lim, "k", images=6)
    assert caught.value.param == "n"


def test_overrides_replace_the_defaults_field_by_field(clock: Clock) -> None:
    lim = limiter(
        rpm=5,
        iph=50,
        overrides={"vip": KeyRateLimits(images_per_hour=1000), "tight": KeyRateLimits(requests_per_minute=1)},
    )
    assert (
        admit(lim, "vip", images=1)["ratelimit-policy"]
        == '"requests";q=5;w=60, "images";q=1000;w=3600;qu="images"'
    )
    assert admit(lim, "tight")["ratelimit-policy"] == '"requests";q=1;w=60, "images";q=50;w=3600;qu="images"'
    assert refusal(lim, "tight").extra["policy"] == "requests"
    assert admit(lim, "other")["ratelimit"].startswith('"requests";r=4;')
    # 0 switches a policy off for that key: no field for it at all.
    off = limiter(rpm=5, overrides={"free": KeyRateLimits(requests_per_minute=0)})
    assert admit(off, "free") == {}


def test_refusals_are_counted_by_policy(clock: Clock) -> None:
    metrics = ServiceMetrics("t")
    lim = limiter(rpm=1, iph=1, metrics=metrics)
    admit(lim, "k", images=1)
    refusal(lim, "k", images=1)
    clock.now += 120
    refusal(lim, "k", images=1)
    assert metric(metrics, 'imgpod_rate_limited_total{policy="requests"}') == 1.0
    assert metric(metrics, 'imgpod_rate_limited_total{policy="images"}') == 1.0


def test_the_error_body_says_rate_limited_in_both_shapes() -> None:
    err = RateLimited("spent", retry_after_s=2.2, policy="images", fields={"RateLimit": '"images";r=0;t=3'})
    reply = ErrorReply.of(err)
    status, body = native_shape(reply)
    assert (status, body["code"], body["reason"], body["policy"]) == (
        429,
        "rate_limited",
        "rate_limited",
        "images",
    )
    assert reply.headers["Retry-After"] == "3" and reply.headers["RateLimit"] == '"images";r=0;t=3'
    status, body = openai_shape(reply)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"


class FailingCounters:
    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, policy: Policy, key: str, cost: int) -> bool:
        self.calls += 1
        raise ConnectionError("store down")

    async def window(self, policy: Policy, key: str) -> Window:
        raise AssertionError("not reached")

    async def windows(self, policies: list[Policy], key: str) -> list[Window]:
        raise AssertionError("not reached")

    async def close(self) -> None:
        return None


def test_a_failing_store_admits_without_limits_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = ServiceMetrics("t")
    counters = FailingCounters()
    lim = RateLimiter(KeyRateLimits(requests_per_minute=1), {}, counters, metrics)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    assert admit(lim, "k") == {} and admit(lim, "k") == {}
    # One failed call, then the store is left alone until FAIL_OPEN_S has passed.
    assert counters.calls == 1
    now[0] += FAIL_OPEN_S + 0.1
    assert admit(lim, "k") == {}
    assert counters.calls == 2
    assert metric(metrics, "imgpod_rate_limit_store_errors_total") == 2.0


def test_settings_pick_the_limiter() -> None:
    metrics = ServiceMetrics("t")
    assert RateLimiter.from_settings(InterfaceSettings(), metrics) is None
    keys = [SecretStr("key-one"), SecretStr("key-two")]
    with pytest.raises(ValueError, match="no configured API key has the id 0123456789ab"):
        RateLimiter.from_settings(
            InterfaceSettings(
                api_keys=keys, rate_limit_overrides={"0123456789ab": KeyRateLimits(requests_per_minute=1)}
            ),
            metrics,
        )
    only_override = RateLimiter.from_settings(
        InterfaceSettings(
            api_keys=keys, rate_limit_overrides={key_id("key-two"): KeyRateLimits(images_per_hour=10)}
        ),
        ServiceMetrics("t"),
    )
    assert only_override is not None and isinstance(only_override.counters, MemoryCounters)
    assert only_override.policies_for(key_id("key-one")).policy_field == ""
    shared = RateLimiter.from_settings(
        InterfaceSettings(
            rate_limit_requests_per_minute=60, rate_limit_storage_uri=SecretStr("redis://127.0.0.1:1/0")
        ),
        ServiceMetrics("t"),
    )
    assert shared is not None and isinstance(shared.counters, RedisCounters)
    with pytest.raises(ValueError, match="memory, redis, rediss"):
        InterfaceSettings(rate_limit_storage_uri=SecretStr("memcached://h:1"))


def test_key_ids_are_short_stable_and_not_the_key() -> None:
    assert key_id("key-one") == key_id("key-one") != key_id("key-two")
    assert len(key_id("key-one")) == 12 and "key" not in key_id("key-one")


def test_fair_share_binds_only_between_two_keys_or_more() -> None:
    # One client key (a single backend app) keeps the whole queue; with two or more, the default share binds.
    assert InterfaceSettings(api_keys=[SecretStr("only")]).effective_max_share() == 1.0
    assert InterfaceSettings().effective_max_share() == 1.0
    two = InterfaceSettings(api_keys=[SecretStr("a"), SecretStr("b")])
    assert two.effective_max_share() == 0.5
    assert InterfaceSettings(api_keys=two.api_keys, queue_max_share_per_key=1.0).effective_max_share() == 1.0
