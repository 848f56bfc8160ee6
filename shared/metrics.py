"""Prometheus metrics on a registry per app, so several apps in one test process never collide."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EdgeCollector(Collector):
    """The server's connection bounds (shared/edge_protocol.py) live below the app; read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from shared.edge_protocol import STATS

        yield GaugeMetricFamily(
            "imgpod_edge_open_connections", "Open client connections", value=STATS.open_connections
        )
        closed = CounterMetricFamily(
            "imgpod_edge_closed",
            "Connections the server closed or refused for a bound (timeouts, header size, connection cap)",
            labels=("reason",),
        )
        for reason, count in sorted(STATS.closed.items()):
            closed.add_metric((reason,), count)
        yield closed


class GpuMemoryCollector(Collector):
    """CUDA memory of this process per device, read at scrape time (torch's allocator counters and the
    driver's total: cheap calls, no device sync). No samples on a machine without CUDA, the family is still
    declared so dashboards and alerts see the name."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "imgpod_gpu_memory_bytes",
            "GPU memory of this process: allocated and reserved by torch, and the device's total",
            labels=("device", "kind"),
        )
        torch = sys.modules.get("torch")  # imported by the models' code; never imported here for a scrape
        if torch is not None and torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                family.add_metric((device, "allocated"), torch.cuda.memory_allocated(index))
                family.add_metric((device, "reserved"), torch.cuda.memory_reserved(index))
                family.add_metric((device, "total"), torch.cuda.get_device_properties(index).total_memory)
        yield family


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = self.counter(
            "imgpod_http_requests_total", "HTTP requests served", ("route", "method", "status")
        )
        self.http_latency = self.histogram(
            "imgpod_http_request_seconds", "HTTP request latency", ("route", "method")
        )
        # Requests being served now and the most at once since start (health and metrics excluded): the
        # soak harness checks the peak against what the service advertised, which polling could miss.
        self.http_in_flight = self.gauge("imgpod_http_in_flight", "Requests being served")
        self.http_in_flight_max = self.gauge("imgpod_http_in_flight_max", "Most requests served at once")
        self.registry.register(EdgeCollector())

    def watch_gpu_memory(self) -> None:
        """Export ``imgpod_gpu_memory_bytes`` (the services that hold a model on a GPU)."""
        self.registry.register(GpuMemoryCollector())

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
