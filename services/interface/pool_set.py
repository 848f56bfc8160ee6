"""The interface's worker pools, one per kind of worker, built from settings.

Every pool draws its workers from one registry, so a worker listed in two pools (the general text-to-image
pool may list the role workers) has one budget and one health state. ``dns://`` entries become the pool's
DiscoveredSet (services/interface/discovery.py), all looked up through one resolver.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from services.interface.discovery import (
    DiscoveredSet,
    DnsResolver,
    Resolver,
    is_dns_entry,
    parse_dns_entry,
)
from services.interface.pools import PoolConfig, Worker, WorkerPool, pool_metrics
from services.interface.settings import WORKER_URL_FIELDS, InterfaceSettings
from shared.http_client import ClientLimits
from shared.metrics import ServiceMetrics
from shared.roles import ChatKind


@dataclass(slots=True)
class Pools:
    profile: WorkerPool
    selfie: WorkerPool
    chat1to1: WorkerPool
    shorts: WorkerPool
    scenes: WorkerPool
    text2img: WorkerPool
    llm: WorkerPool

    def all(self) -> list[WorkerPool]:
        return [self.profile, self.selfie, self.chat1to1, self.shorts, self.scenes, self.text2img, self.llm]

    def chat_pool(self, kind: ChatKind) -> WorkerPool:
        return {"1to1": self.chat1to1, "shorts": self.shorts, "scenes": self.scenes}[kind]

    def for_queues(self) -> dict[str, list[WorkerPool]]:
        """The pools each public endpoint's flow calls; the scarcest bounds the queue's consumers."""
        return {
            "profile": [self.selfie, self.profile],
            "text2img": [self.text2img],
            "chat1to1": [self.llm, self.chat1to1],
            "shorts": [self.llm, self.shorts],
            "scenes": [self.llm, self.scenes],
            "private": [self.chat1to1],
            "reply": [self.llm],
        }


def client_limits(settings: InterfaceSettings) -> ClientLimits:
    """Keep-alive connections for every call that can be in flight at once, so none pays a new connect."""
    image_urls = (
        settings.profile_worker_urls,
        settings.chat1to1_worker_urls,
        settings.shorts_worker_urls,
        settings.scenes_worker_urls,
        settings.text2img_worker_urls,
    )

    def workers(urls: list[str]) -> int:
        # A DNS entry stands for as many workers as its name has pods: sized for the expected number.
        return sum(settings.dns_expected_workers if is_dns_entry(u) else 1 for u in urls)

    slots = (
        settings.per_worker_concurrency * sum(map(workers, image_urls))
        + settings.selfie_concurrency * workers(settings.selfie_feature_worker_urls)
        + settings.llm_concurrency * workers(settings.llm_urls)
    )
    keepalive = max(8, slots + 8)
    return ClientLimits(
        default_timeout_s=max(settings.generate_timeout_s, 60.0),
        max_keepalive=keepalive,
        max_connections=max(256, keepalive),
    )


def build_pools(
    settings: InterfaceSettings,
    client: httpx.AsyncClient,
    token: str | None,
    metrics: ServiceMetrics,
    resolver: Resolver | None = None,
) -> Pools:
    """``resolver`` answers the pools' DNS entries; unset, dnspython's, as the dns_* settings say."""
    shared_metrics = pool_metrics(metrics)
    registry: dict[str, Worker] = {}
    all_urls = [u for name in WORKER_URL_FIELDS for u in getattr(settings, name)]
    if resolver is None and any(map(is_dns_entry, all_urls)):
        # Made only when some pool names workers by DNS: it reads /etc/resolv.conf.
        resolver = DnsResolver(settings.dns_nameserver, settings.dns_timeout_s)

    def discovered(urls: list[str]) -> DiscoveredSet | None:
        targets = [parse_dns_entry(u) for u in urls if is_dns_entry(u)]
        if not targets or resolver is None:
            return None
        return DiscoveredSet(targets, resolver)

    def pool(name: str, urls: list[str], concurrency: int) -> WorkerPool:
        config = PoolConfig(
            per_worker_concurrency=concurrency,
            eject_after=settings.eject_after_failures,
            cooldown_s=settings.eject_cooldown_s,
            health_interval_s=settings.health_interval_s,
            health_timeout_s=settings.health_timeout_s,
            dns_refresh_s=settings.dns_refresh_s,
        )
        return WorkerPool(
            name,
            [u for u in urls if not is_dns_entry(u)],
            client=client,
            token=token,
            config=config,
            metrics=metrics,
            pool_metrics=shared_metrics,
            registry=registry,
            discovered=discovered(urls),
        )

    image_bound = settings.per_worker_concurrency
    return Pools(
        profile=pool("profile", settings.profile_worker_urls, image_bound),
        selfie=pool("selfie_feature", settings.selfie_feature_worker_urls, settings.selfie_concurrency),
        chat1to1=pool("chat1to1", settings.chat1to1_worker_urls, image_bound),
        shorts=pool("shorts", settings.shorts_worker_urls, image_bound),
        scenes=pool("scenes", settings.scenes_worker_urls, image_bound),
        text2img=pool("text2img", settings.text2img_worker_urls, image_bound),
        llm=pool("llm", settings.llm_urls, settings.llm_concurrency),
    )
