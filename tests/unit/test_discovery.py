"""Workers found by DNS: the set logic, joining after a good probe, draining a worker that left, and a failed
lookup keeping the last known workers.

A unit test of one layer, like tests/unit/test_pools.py: the workers are an ``httpx.MockTransport`` handler
and the DNS answers come from a resolver the test scripts, so each refresh's effect is observable call by
call. The same behaviours against a real dnsmasq and real workers: tests/integration/test_dns_pools.py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.interface.discovery import (
    DiscoveredSet,
    DnsResolver,
    DnsTarget,
    ResolutionFailed,
    membership_change,
    parse_dns_entry,
    parse_nameserver,
)
from services.interface.pool_set import build_pools, client_limits
from services.interface.pools import PoolConfig, Worker, WorkerPool, pool_metrics
from services.interface.settings import InterfaceSettings
from shared.errors import NoHealthyWorker
from shared.metrics import ServiceMetrics
from tests.helpers.waiting import until


class ScriptedResolver:
    """Answers what the test last set per name; a name set to None fails (a timeout, SERVFAIL)."""

    def __init__(self, **answers: list[str] | None) -> None:
        self.answers: dict[str, list[str] | None] = dict(answers)
        self.lookups = 0

    async def addresses(self, host: str) -> set[str]:
        self.lookups += 1
        answer = self.answers[host]
        if answer is None:
            raise ResolutionFailed("scripted failure")
        return set(answer)


class Workers:
    """Fake workers by base URL: health status each, and calls held until the test releases them."""

    def __init__(self) -> None:
        self.health: collections.defaultdict[str, int] = collections.defaultdict(lambda: 200)
        self.calls: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.release = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if request.url.path == "/healthz":
            return httpx.Response(self.health[base], json={"status": "ok", "concurrency": 2})
        self.calls[base] += 1
        self.in_flight[base] += 1
        try:
            await self.release.wait()
        finally:
            self.in_flight[base] -= 1
        return httpx.Response(200, json={"worker": base})


def dns_pool(
    workers: Workers,
    resolver: ScriptedResolver,
    entries: list[str],
    static: list[str] | None = None,
    registry: dict[str, Worker] | None = None,
    name: str = "chat1to1",
) -> tuple[WorkerPool, ServiceMetrics]:
    metrics = ServiceMetrics(f"t-{name}")
    pool = WorkerPool(
        name,
        static or [],
        client=httpx.AsyncClient(transport=httpx.MockTransport(workers)),
        token=None,
        config=PoolConfig(per_worker_concurrency=2),
        metrics=metrics,
        pool_metrics=pool_metrics(metrics),
        registry=registry,
        discovered=DiscoveredSet([parse_dns_entry(e) for e in entries], resolver),
    )
    return pool, metrics


def call(pool: WorkerPool) -> Any:
    return pool.request("POST", "/v1/generate", stage="generate", timeout_s=30, json={})


def urls(pool: WorkerPool) -> list[str]:
    return [w.url for w in pool.workers]


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- the set logic ------------------------------------------------------------------------------------


def test_membership_change_is_the_two_set_differences_in_order() -> None:
    current = ["http://10.0.0.1:8005", "http://10.0.0.2:8005", "http://10.0.0.3:8005"]
    wanted = ["http://10.0.0.3:8005", "http://10.0.0.4:8005", "http://10.0.0.1:8005", "http://10.0.0.4:8005"]
    assert membership_change(current, wanted) == (["http://10.0.0.4:8005"], ["http://10.0.0.2:8005"])
    assert membership_change(current, current) == ([], [])
    assert membership_change([], wanted[:2]) == (wanted[:2], [])


def test_dns_entries_and_nameservers_parse_or_name_what_is_wrong() -> None:
    assert parse_dns_entry("dns://img-pod-chat1to1:8005") == DnsTarget("img-pod-chat1to1", 8005)
    assert parse_dns_entry("dns://img-pod-llm.ns.svc.cluster.local.:8002") == DnsTarget(
        "img-pod-llm.ns.svc.cluster.local", 8002
    )
    for bad in ("dns://img-pod-llm", "dns://:8002", "dns://img-pod-llm:8002/v1", "dns://u:p@img-pod-llm:1"):
        with pytest.raises(ValueError, match="dns://<host>:<port>"):
            parse_dns_entry(bad)
    assert DnsTarget("h", 8005).worker_url("10.1.2.3") == "http://10.1.2.3:8005"
    assert DnsTarget("h", 8005).worker_url("fd00::7") == "http://[fd00::7]:8005"
    assert parse_nameserver("10.96.0.10") == ("10.96.0.10", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("fd00::a") == ("fd00::a", 53)
    for bad in ("kube-dns", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_settings_take_dns_entries_beside_urls_and_refuse_malformed_ones() -> None:
    settings = InterfaceSettings(
        chat1to1_worker_urls="dns://img-pod-chat1to1:8005,http://10.0.0.9:8005/",
        dns_nameserver="127.0.0.1:5353",
    )
    # Plain URLs are as before (trailing slash stripped); the DNS entry is kept as written.
    assert settings.chat1to1_worker_urls == ["dns://img-pod-chat1to1:8005", "http://10.0.0.9:8005"]
    assert settings.dns_refresh_s == 5.0
    with pytest.raises(ValidationError, match="dns://<host>:<port>"):
        InterfaceSettings(llm_urls="dns://img-pod-llm")
    with pytest.raises(ValidationError, match="nameserver"):
        InterfaceSettings(dns_nameserver="kube-dns:53")
    # The keep-alive pool is sized for the expected pods behind a name, not for one worker.
    limits = client_limits(InterfaceSettings(chat1to1_worker_urls="dns://img-pod-chat1to1:8005"))
    assert limits.max_keepalive == 8 * 8 + 8


def test_build_pools_splits_static_urls_from_dns_entries() -> None:
    async def scenario() -> tuple[list[str], list[str], bool, bool]:
        settings = InterfaceSettings(
            chat1to1_worker_urls="dns://img-pod-chat1to1:8005,http://10.0.0.9:8005",
            scenes_worker_urls="http://10.0.0.8:8007",
        )
        resolver = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1"]})
        client = httpx.AsyncClient(transport=httpx.MockTransport(Workers()))
        pools = build_pools(settings, client, None, ServiceMetrics("t-build"), resolver=resolver)
        await pools.chat1to1.probe_all()
        await pools.scenes.probe_all()
        return urls(pools.chat1to1), urls(pools.scenes), pools.shorts.deployed, pools.chat1to1.deployed

    chat, scenes, shorts_deployed, chat_deployed = asyncio.run(scenario())
    assert chat == ["http://10.0.0.9:8005", "http://10.0.0.1:8005"]
    assert scenes == ["http://10.0.0.8:8007"]
    assert (shorts_deployed, chat_deployed) == (False, True)


# --- joining, leaving, failing ------------------------------------------------------------------------


def test_a_new_address_joins_only_once_its_probe_says_ready() -> None:
    async def scenario() -> dict[str, Any]:
        workers = Workers()
        workers.release.set()
        resolver = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1"]})
        pool, metrics = dns_pool(workers, resolver, ["dns://img-pod-chat1to1:8005"])
        capacities: list[int] = []
        await pool.probe_all()  # the first probe resolves first: the pool starts with the pod
        pool.on_change(capacities.append)
        seen: dict[str, Any] = {"start": (urls(pool), pool.healthy_count)}
        workers.health["http://10.0.0.2:8005"] = 503  # the new pod is still loading its model
        resolver.answers["img-pod-chat1to1"] = ["10.0.0.1", "10.0.0.2"]
        await pool.refresh_members()
        seen["loading"] = (urls(pool), pool.healthy_count)
        for _ in range(4):
            await call(pool)
        seen["calls_while_loading"] = dict(workers.calls)
        workers.health["http://10.0.0.2:8005"] = 200
        await pool.probe_all()
        workers.calls.clear()
        for _ in range(4):
            await call(pool)
        seen["calls_when_ready"] = dict(workers.calls)
        seen["capacities"] = capacities
        seen["joined"] = sample(metrics, "imgpod_pool_member_changes_total", pool="chat1to1", change="joined")
        await pool.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["start"] == (["http://10.0.0.1:8005"], 1)
    assert seen["loading"] == (["http://10.0.0.1:8005", "http://10.0.0.2:8005"], 1)
    assert seen["calls_while_loading"] == {"http://10.0.0.1:8005": 4}
    assert seen["calls_when_ready"] == {"http://10.0.0.1:8005": 2, "http://10.0.0.2:8005": 2}
    # Queue capacity follows: one worker's budget (2), then two workers' (4) once the second is ready.
    assert seen["capacities"][0] == 2 and seen["capacities"][-1] == 4
    assert seen["joined"] == 2  # the first pod at the first lookup, the second one later


def test_a_removed_address_is_drained_its_calls_finish_and_no_new_call_reaches_it() -> None:
    async def scenario() -> dict[str, Any]:
        workers = Workers()
        resolver = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1", "10.0.0.2"]})
        registry: dict[str, Worker] = {}
        pool, metrics = dns_pool(workers, resolver, ["dns://img-pod-chat1to1:8005"], registry=registry)
        await pool.probe_all()
        capacities: list[int] = []
        pool.on_change(capacities.append)
        # Two calls on each worker (each worker's whole budget), held there.
        held = [asyncio.create_task(call(pool)) for _ in range(4)]
        await until(lambda: sum(workers.in_flight.values()) == 4)
        resolver.answers["img-pod-chat1to1"] = ["10.0.0.2"]
        await pool.refresh_members()
        gone = "http://10.0.0.1:8005"
        seen: dict[str, Any] = {
            "members": urls(pool),
            "in_flight_on_gone": workers.in_flight[gone],
            "still_known": gone in registry,
            "capacity": capacities[-1],
        }
        calls_on_gone = workers.calls[gone]
        # New calls: only the remaining worker, and they wait for its slots rather than use the gone one's.
        later = [asyncio.create_task(call(pool)) for _ in range(3)]
        await asyncio.sleep(0.05)
        workers.release.set()
        seen["held"] = [r["worker"] for r in await asyncio.gather(*held)]
        seen["later"] = [r["worker"] for r in await asyncio.gather(*later)]
        seen["new_calls_on_gone"] = workers.calls[gone] - calls_on_gone
        seen["forgotten"] = gone not in registry
        seen["left"] = sample(metrics, "imgpod_pool_member_changes_total", pool="chat1to1", change="left")
        await pool.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["members"] == ["http://10.0.0.2:8005"]
    assert seen["in_flight_on_gone"] == 2 and seen["still_known"]
    assert seen["capacity"] == 2  # one worker's budget left: the queue shrinks with the pool
    assert sorted(seen["held"]) == ["http://10.0.0.1:8005"] * 2 + ["http://10.0.0.2:8005"] * 2
    assert seen["later"] == ["http://10.0.0.2:8005"] * 3
    assert seen["new_calls_on_gone"] == 0
    assert seen["forgotten"]  # once its last call finished, nothing holds the gone worker
    assert seen["left"] == 1


def test_a_failed_lookup_keeps_the_last_known_workers_and_is_counted() -> None:
    async def scenario() -> dict[str, Any]:
        workers = Workers()
        workers.release.set()
        resolver = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1", "10.0.0.2"]})
        pool, metrics = dns_pool(workers, resolver, ["dns://img-pod-chat1to1:8005"])
        await pool.probe_all()
        resolver.answers["img-pod-chat1to1"] = None
        await pool.refresh_members()
        await pool.refresh_members()
        seen: dict[str, Any] = {"after_failures": (urls(pool), pool.healthy_count)}
        seen["answers"] = sorted({(await call(pool))["worker"] for _ in range(4)})
        seen["failures"] = sample(metrics, "imgpod_pool_dns_failures_total", pool="chat1to1")
        # An answer that names no address is an answer: the role has no pod (scaled to zero).
        resolver.answers["img-pod-chat1to1"] = []
        await pool.refresh_members()
        seen["empty"] = urls(pool)
        try:
            await call(pool)
        except NoHealthyWorker as exc:
            seen["no_worker"] = exc.stage
        await pool.close()
        return seen

    seen = asyncio.run(scenario())
    both = ["http://10.0.0.1:8005", "http://10.0.0.2:8005"]
    assert seen["after_failures"] == (both, 2)
    assert seen["answers"] == both
    assert seen["failures"] == 2
    assert seen["empty"] == []
    assert seen["no_worker"] == "chat1to1"


def test_the_refresh_loop_follows_the_name_and_static_workers_never_move() -> None:
    async def scenario() -> list[list[str]]:
        workers = Workers()
        resolver = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1"]})
        pool, _ = dns_pool(
            workers, resolver, ["dns://img-pod-chat1to1:8005"], static=["http://static-worker:8005"]
        )
        pool.config = PoolConfig(per_worker_concurrency=2, dns_refresh_s=0.01, health_interval_s=0.01)
        await pool.probe_all()
        pool.start_polling()
        seen = [urls(pool)]
        resolver.answers["img-pod-chat1to1"] = ["10.0.0.3"]
        await until(lambda: "http://10.0.0.3:8005" in urls(pool) and pool.healthy_count == 2)
        seen.append(urls(pool))
        await pool.close()
        return seen

    start, moved = asyncio.run(scenario())
    assert start == ["http://static-worker:8005", "http://10.0.0.1:8005"]
    assert moved == ["http://static-worker:8005", "http://10.0.0.3:8005"]


def test_a_worker_two_pools_find_by_dns_has_one_budget_and_stays_while_one_pool_holds_it() -> None:
    async def scenario() -> dict[str, Any]:
        workers = Workers()
        registry: dict[str, Worker] = {}
        r1 = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1"]})
        r2 = ScriptedResolver(**{"img-pod-chat1to1": ["10.0.0.1"]})
        role, _ = dns_pool(workers, r1, ["dns://img-pod-chat1to1:8005"], registry=registry)
        general, _ = dns_pool(
            workers, r2, ["dns://img-pod-chat1to1:8005"], registry=registry, name="text2img"
        )
        await role.probe_all()
        await general.probe_all()
        shared = role.workers[0] is general.workers[0]
        r2.answers["img-pod-chat1to1"] = []
        await general.refresh_members()
        seen = {"shared": shared, "general": urls(general), "role": urls(role), "known": list(registry)}
        await role.close()
        await general.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen == {
        "shared": True,
        "general": [],
        "role": ["http://10.0.0.1:8005"],
        "known": ["http://10.0.0.1:8005"],
    }


# --- the real resolver --------------------------------------------------------------------------------


def test_the_dns_resolver_fails_rather_than_answering_empty_when_no_server_answers() -> None:
    """A nameserver port where nothing listens: a failure (keep the workers), never "no pods"."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Bound and never read: queries go unanswered, as to a nameserver that is down.
        resolver = DnsResolver(f"127.0.0.1:{port}", timeout_s=0.3)
        with pytest.raises(ResolutionFailed):
            asyncio.run(resolver.addresses("img-pod-chat1to1"))
