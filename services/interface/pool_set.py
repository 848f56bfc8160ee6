"""The interface's worker pools, one per kind of worker, built from settings.

Every pool draws its workers from one registry, so a worker listed in two pools (the general text-to-image
pool may list the role workers) has one budget and one health state.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from services.interface.pools import PoolConfig, Worker, WorkerPool, pool_metrics
from services.interface.settings import InterfaceSettings
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
    slots = (
        settings.per_worker_concurrency * sum(map(len, image_urls))
        + settings.selfie_concurrency * len(settings.selfie_feature_worker_urls)
        + settings.llm_concurrency * len(settings.llm_urls)
    )
    keepalive = max(8, slots + 8)
    return ClientLimits(
        default_timeout_s=max(settings.generate_timeout_s, 60.0),
        max_keepalive=keepalive,
        max_connections=max(256, keepalive),
    )


def build_pools(
    settings: InterfaceSettings, client: httpx.AsyncClient, token: str | None, metrics: ServiceMetrics
) -> Pools:
    shared_metrics = pool_metrics(metrics)
    registry: dict[str, Worker] = {}

    def pool(name: str, urls: list[str], concurrency: int) -> WorkerPool:
        config = PoolConfig(
            per_worker_concurrency=concurrency,
            eject_after=settings.eject_after_failures,
            cooldown_s=settings.eject_cooldown_s,
            health_interval_s=settings.health_interval_s,
            health_timeout_s=settings.health_timeout_s,
        )
        return WorkerPool(
            name,
            urls,
            client=client,
            token=token,
            config=config,
            metrics=metrics,
            pool_metrics=shared_metrics,
            registry=registry,
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
