"""Per-key rate limits and fair share over real HTTP: the interface (uvicorn on loopback, two API keys) in
front of a worker with a fixed service time (bench/echo_worker.py with ECHO_DELAY_MS), so the stack's
capacity is known.

The flood test drives open loops (fixed arrival rates whatever the answers) with the bench's lean client, so
the load generator's own CPU does not show up as server latency. Its latency bound is generous on purpose:
what it checks is that B's requests do not wait behind A's backlog (several service times), not a speed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.common import Outcome, RawHttpClient, open_loop, percentile, run_async
from devtools.service_process import ServiceProcess
from shared.service import key_id
from tests.helpers.redis_server import RedisServer, running_redis_server
from tests.integration.test_interface_pools import interface_env

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "rate-key-a", "rate-key-b"
DELAY_MS, CONCURRENCY = 250, 2
CAPACITY_PER_S = CONCURRENCY / (DELAY_MS / 1000)  # 8 requests per second
FLOOD_S = 10.0
PROMPT = json.dumps({"prompt": "a lighthouse at dusk"}).encode()


@pytest.fixture(scope="module")
def worker() -> Iterator[ServiceProcess]:
    env = {"ECHO_DELAY_MS": str(DELAY_MS), "ECHO_CONCURRENCY": str(CONCURRENCY)}
    with ServiceProcess("bench.echo_worker", env=env) as proc:
        yield proc


def keyed_env(worker: ServiceProcess, **extra: str) -> dict[str, str]:
    return interface_env(
        INTERFACE_API_KEYS=f"{KEY_A},{KEY_B}",
        INTERFACE_TEXT2IMG_WORKER_URLS=worker.url,
        INTERFACE_RETRY_AFTER_CAP_MS="2000",
        **extra,
    )


def metric(api: ServiceProcess, pattern: str) -> float:
    text = httpx.get(api.url + "/metrics", headers={"X-API-Key": KEY_A}).text
    match = re.search(pattern + r" ([0-9.e+-]+)", text)
    return float(match.group(1)) if match else 0.0


def figures(outcomes: list[Outcome]) -> dict[str, float]:
    ok = [o.seconds for o in outcomes if o.status == 200]
    return {
        "sent": len(outcomes),
        "admitted": len(ok),
        "refused_429": sum(o.status == 429 for o in outcomes),
        "other": sum(o.status not in (200, 429) for o in outcomes),
        "p50_ms": round(percentile(ok, 50) * 1000, 1),
        "p95_ms": round(percentile(ok, 95) * 1000, 1),
        "max_lag_ms": round(max(o.lag for o in outcomes) * 1000, 1),
    }


def test_a_flood_from_one_key_leaves_the_other_keys_requests_admitted_at_normal_latency(
    worker: ServiceProcess,
) -> None:
    # 6 waiting + 2 running places; a key may hold half of them (4), so A never fills the queue.
    env = keyed_env(
        worker,
        INTERFACE_QUEUE_OVERRIDES='{"text2img": {"capacity": 6, "sla_ms": 30000}}',
        INTERFACE_QUEUE_MAX_SHARE_PER_KEY="0.5",
    )
    with ServiceProcess("services.interface.main", env=env) as api:
        url = api.url + "/v1/imagegen"

        async def scenario() -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
            a = RawHttpClient(url, PROMPT, {"X-API-Key": KEY_A})
            b = RawHttpClient(url, PROMPT, {"X-API-Key": KEY_B})
            try:
                alone, _ = await open_loop(b.call, 1.0, 5)  # one at a time: the unloaded latency
                rate_a, rate_b = 10 * CAPACITY_PER_S, CAPACITY_PER_S / 10
                flood = open_loop(a.call, rate_a, int(rate_a * FLOOD_S))

                async def trickle() -> list[Outcome]:
                    # B starts once A's flood has filled A's share.
                    await asyncio.sleep(1.0)
                    return (await open_loop(b.call, rate_b, int(rate_b * (FLOOD_S - 1.5))))[0]

                (a_out, _), b_out = await asyncio.gather(flood, trickle())
                return alone, a_out, b_out
            finally:
                await a.aclose()
                await b.aclose()

        alone, a_out, b_out = run_async(scenario())
        key_share = metric(api, r'imgpod_queue_rejected_total\{queue="text2img",reason="key_share"\}')
        full = metric(api, r'imgpod_queue_rejected_total\{queue="text2img",reason="full"\}')

    unloaded, fa, fb = figures(alone), figures(a_out), figures(b_out)
    print(f"\nunloaded B: {unloaded}\nflooding A (10x capacity): {fa}\nB (a tenth of capacity): {fb}")
    print(f"refusals: key_share {key_share:g}, queue full {full:g}")
    assert unloaded["admitted"] == 5
    assert fb["sent"] >= 6 and fb["admitted"] == fb["sent"], fb
    # Behind A's backlog B would wait several service times; it waits at most for a consumer to free up.
    assert fb["p95_ms"] < 2 * unloaded["p50_ms"] + DELAY_MS, (fb, unloaded)
    # A got its share's worth through, and was refused for its share (never for a full queue).
    assert fa["other"] == 0 and fa["admitted"] + fa["refused_429"] == fa["sent"]
    assert fa["admitted"] <= CAPACITY_PER_S * (FLOOD_S + 1)
    assert key_share == fa["refused_429"] and full == 0


def test_rate_limits_refuse_one_key_with_the_ietf_fields_and_not_the_other(worker: ServiceProcess) -> None:
    env = keyed_env(
        worker,
        INTERFACE_RATE_LIMIT_REQUESTS_PER_MINUTE="3",
        INTERFACE_RATE_LIMIT_IMAGES_PER_HOUR="4",
        INTERFACE_RATE_LIMIT_OVERRIDES=json.dumps({key_id(KEY_B): {"requests_per_minute": 100}}),
    )
    with ServiceProcess("services.interface.main", env=env) as api, httpx.Client(base_url=api.url) as c:
        a, b = {"X-API-Key": KEY_A}, {"Authorization": f"Bearer {KEY_B}"}
        body = {"prompt": "a lighthouse at dusk"}
        seen = [c.post("/v1/imagegen", json=body, headers=a, timeout=30) for _ in range(3)]
        assert [r.status_code for r in seen] == [200, 200, 200]
        assert [r.headers["RateLimit"].split(";")[1] for r in seen] == ["r=2", "r=1", "r=0"]
        assert seen[0].headers["RateLimit-Policy"] == '"requests";q=3;w=60, "images";q=4;w=3600;qu="images"'
        assert seen[-1].headers["RateLimit"].split(", ")[1].startswith('"images";r=1;t=')

        refused = c.post("/v1/imagegen", json=body, headers=a, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited" and refused.json()["reason"] == "rate_limited"
        assert refused.json()["policy"] == "requests" and refused.json()["request_id"]
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 120
        assert refused.headers["RateLimit"] == f'"requests";r=0;t={retry_after}'
        # The OpenAI routes answer the same refusal in OpenAI's shape.
        openai = c.post("/v1/images/generations", json=body, headers=a, timeout=30)
        assert openai.status_code == 429 and openai.json()["error"]["code"] == "rate_limit_exceeded"
        assert "RateLimit" in openai.headers and "Retry-After" in openai.headers

        # B's own override: many requests, the default 4 images an hour; n images count n.
        three = c.post("/v1/images/generations", json={**body, "n": 3}, headers=b, timeout=30)
        assert three.status_code == 200, three.text
        assert three.headers["RateLimit"].split(", ")[1].startswith('"images";r=1;')
        two = c.post("/v1/images/generations", json={**body, "n": 2}, headers=b, timeout=30)
        assert two.status_code == 429 and "images" in two.headers["RateLimit"]
        assert c.post("/v1/imagegen", json=body, headers=b, timeout=30).status_code == 200
        assert metric(api, r'imgpod_queue_rejected_total\{queue="text2img",reason="rate_limited"\}') == 3
        assert metric(api, r'imgpod_rate_limited_total\{policy="images"\}') == 1


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, without persistence, for this test only."""
    with running_redis_server(tmp_path) as server:
        yield server


def test_replicas_share_the_counts_through_redis(worker: ServiceProcess, redis_server: RedisServer) -> None:
    env = keyed_env(
        worker,
        INTERFACE_RATE_LIMIT_REQUESTS_PER_MINUTE="3",
        INTERFACE_RATE_LIMIT_STORAGE_URI=redis_server.url,
    )
    body = {"prompt": "a lighthouse at dusk"}
    a, b = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
    with (
        ServiceProcess("services.interface.main", env=env) as one,
        ServiceProcess("services.interface.main", env=env) as two,
    ):
        spent = [httpx.post(one.url + "/v1/imagegen", json=body, headers=a, timeout=30) for _ in range(3)]
        assert [r.status_code for r in spent] == [200, 200, 200]
        assert spent[-1].headers["RateLimit"].startswith('"requests";r=0;')
        # Replica two never saw key A, yet knows its budget is spent.
        refused = httpx.post(two.url + "/v1/imagegen", json=body, headers=a, timeout=30)
        assert refused.status_code == 429 and refused.json()["reason"] == "rate_limited", refused.text
        assert refused.headers["RateLimit"].startswith('"requests";r=0;t=')
        other = httpx.post(two.url + "/v1/imagegen", json=body, headers=b, timeout=30)
        assert other.status_code == 200 and other.headers["RateLimit"].startswith('"requests";r=2;')

        # Redis gone: requests are admitted without limits (and without the fields), never failed.
        redis_server.stop()
        unlimited = httpx.post(one.url + "/v1/imagegen", json=body, headers=a, timeout=30)
        assert unlimited.status_code == 200 and "RateLimit" not in unlimited.headers, unlimited.text
        assert metric(one, "imgpod_rate_limit_store_errors_total") == 1
