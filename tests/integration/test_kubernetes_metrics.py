"""Every metric the Kubernetes package reads (ScaledObject triggers, alert rules, the Grafana dashboard) is
one an interface and an image worker really export: both started here on the tiny models, /metrics read
over HTTP.

A name counts when the exposition declares it (``# TYPE``), with the sample names its type makes (counter:
``_total``; histogram: ``_bucket``, ``_sum``, ``_count``). Where a series exists, the labels a query matches
on must be on it (or be added by the scrape: namespace, pod, component...), and the queue and pool names a
query lists must be ones the interface reports.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running
from tests.helpers.kube_objects import all_queries, kubectl, metric_names, selectors
from tests.helpers.redis_server import running_redis_server
from tests.helpers.waiting import WorkerGate
from tests.integration.test_image_workers import TOKEN, image_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize) is not installed"),
]

# Labels Prometheus adds to every scraped series (target labels, and the PodMonitors' relabeling).
SCRAPE_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "instance", "job", "component"})
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "untyped": ("",),
}


class Exposition:
    """The sample names a /metrics text declares, and the label sets of the series it has."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.labels: dict[str, set[str]] = {}
        self.values: dict[tuple[str, str], set[str]] = {}

    def read(self, text: str) -> None:
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, family, kind = line.split(" ", 3)
                base = family.removesuffix("_total") if kind == "counter" else family
                self.names.update(base + suffix for suffix in SUFFIXES[kind])
            elif line and not line.startswith("#"):
                series = line.rsplit(" ", 1)[0]
                name, _, rest = series.partition("{")
                self.labels.setdefault(name, set())
                for pair in filter(None, rest.rstrip("}").split('",')):
                    label, _, value = pair.partition('="')
                    self.labels[name].add(label)
                    self.values.setdefault((name, label), set()).add(value.rstrip('"'))


@pytest.fixture(scope="module")
def live(tiny_models: dict[str, Path]) -> Iterator[Exposition]:
    """An image worker (the chat1to1 role) and an interface in front of it with no shorts worker (a role
    scaled to zero), after one generation and one request for the empty role."""
    worker = ServiceProcess("services.image_worker.main", env=image_env(tiny_models["zimage"]))
    with all_running([worker]):
        env = {
            "INTERFACE_INTERNAL_TOKEN": TOKEN,
            "INTERFACE_GUARD": "off",
            "INTERFACE_HEALTH_INTERVAL_S": "0.3",
            "INTERFACE_TEXT2IMG_WORKER_URLS": worker.url,
            "INTERFACE_CHAT1TO1_WORKER_URLS": worker.url,
        }
        with ServiceProcess("services.interface.main", env=env) as api:
            resp = httpx.post(api.url + "/v1/imagegen", json={"prompt": "a boat", "seed": 1}, timeout=120)
            assert resp.status_code == 200, resp.text
            # Scaled to zero: refused at once (the refusal is what wakes the role), never left hanging.
            started = time.monotonic()
            resp = httpx.post(
                api.url + "/v1/chat/shorts/generate", json={"message": "a fox on a hill"}, timeout=30
            )
            assert (resp.status_code, resp.json()["code"]) == (503, "no_healthy_worker"), resp.text
            # ... with Retry-After: the client comes back once the pod the refusal woke is up.
            assert int(resp.headers["Retry-After"]) >= 1
            assert time.monotonic() - started < 5
            seen = Exposition()
            seen.read(httpx.get(api.url + "/metrics", timeout=10).text)
            seen.read(
                httpx.get(
                    worker.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
                ).text
            )
            yield seen


def test_every_metric_the_package_reads_is_exported(live: Exposition) -> None:
    shipped = all_queries()
    assert len(shipped) > 20
    missing = {
        (where, name) for where, expr in shipped for name in metric_names(expr) if name not in live.names
    }
    assert not missing, sorted(missing)


def test_matched_labels_and_their_values_exist(live: Exposition) -> None:
    checked = 0
    for where, expr in all_queries():
        for sel in selectors(expr):
            have = live.labels.get(sel.metric)
            if have is None:
                continue  # Declared but no series yet (an ejection, a failed job): names are checked above.
            for label, op, value in sel.matchers:
                assert label in have | SCRAPE_LABELS, f"{where}: {sel.metric} has no label {label!r}"
                if label in ("queue", "pool") and op in ("=", "=~"):
                    # Any series' values: a queue no request was refused on yet has no rejected series.
                    known = {v for (_, lab), vals in live.values.items() if lab == label for v in vals}
                    assert set(value.split("|")) <= known, (
                        f"{where}: {label} {value!r} not in {sorted(known)}"
                    )
                    checked += 1
    assert checked >= 10


def test_the_scale_from_zero_signal_is_live(live: Exposition) -> None:
    """The ScaledObjects of shorts and scenes wake on this series: the refusal above made it exist."""
    assert "no_worker" in live.values[("imgpod_queue_rejected_total", "reason")]
    assert "shorts" in live.values[("imgpod_queue_rejected_total", "queue")]


def backlog_gauges(url: str, queue: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    found = dict(re.findall(rf'^imgpod_queue_(depth|in_flight)\{{queue="{queue}"\}} (\S+)$', text, re.M))
    return float(found["depth"]), float(found["in_flight"])


def test_the_backlog_the_scaledobjects_read_is_live_on_redis(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """One job running (parked in the worker) and two waiting, on an interface whose jobs are in Redis."""
    worker = ServiceProcess(
        "services.image_worker.main", env=image_env(tiny_models["zimage"], IMAGE_TEST_HOOKS="1")
    )
    with running_redis_server(tmp_path) as redis, all_running([worker]):
        env = {
            "INTERFACE_INTERNAL_TOKEN": TOKEN,
            "INTERFACE_GUARD": "off",
            "INTERFACE_TEXT2IMG_WORKER_URLS": worker.url,
            "INTERFACE_PER_WORKER_CONCURRENCY": "1",
            "INTERFACE_JOBS_REDIS_URL": redis.url,
        }
        gate = WorkerGate(worker.url, TOKEN)
        with ServiceProcess("services.interface.main", env=env) as api, gate.closed():

            async def three() -> list[int]:
                async with httpx.AsyncClient(timeout=120) as client:
                    posts = [
                        asyncio.create_task(
                            client.post(api.url + "/v1/imagegen", json={"prompt": "a boat", "seed": i})
                        )
                        for i in range(3)
                    ]
                    await asyncio.to_thread(gate.wait_parked, 1)
                    # Past one heartbeat of the dispatcher: the gauges have had their chance to be set.
                    await asyncio.sleep(2.5)
                    seen = await asyncio.to_thread(backlog_gauges, api.url, "text2img")
                    gate.open()
                    codes = [r.status_code for r in await asyncio.gather(*posts)]
                    assert seen == (2.0, 1.0), seen
                    return codes

            assert asyncio.run(three()) == [200, 200, 200]
