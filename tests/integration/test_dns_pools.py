"""Workers found by DNS, against a real dnsmasq on a loopback port and real tiny image workers.

Two image workers listen on the same port at two loopback addresses (127.0.0.2, 127.0.0.3), as two pods of
one role do behind a headless Service; the interface's text2img pool names them ``dns://<name>:<port>`` and
asks the test's dnsmasq, whose records the test changes while requests flow (as a cluster's DNS follows the
Service's ready pods). Per worker counts come from each worker's own /metrics.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running, free_port
from tests.helpers.dnsmasq_server import DnsmasqServer, running_dnsmasq
from tests.helpers.waiting import WorkerGate, wait_until
from tests.integration.test_image_workers import TOKEN, image_env

pytestmark = pytest.mark.integration

NAME = "img-pod-text2img"
API_KEY = "dns-pools-test-key-0123456789abcdef"
CLIENT = {"X-API-Key": API_KEY}
ADDRESSES = ("127.0.0.2", "127.0.0.3")


class HostedServiceProcess(ServiceProcess):
    """A service on a given loopback address (Linux routes all of 127.0.0.0/8 to lo), not 127.0.0.1."""

    def __init__(self, module: str, *, host: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(module, env=env, port=port, log_dir=log_dir)
        self.host = host
        self.url = f"http://{host}:{port}"

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--host") + 1] = self.host
        return cmd


def served(worker: ServiceProcess) -> int:
    """How many /v1/generate calls this worker answered, read from its own /metrics."""
    return int(_metric_sum(worker, r'imgpod_http_requests_total\{[^}]*route="/v1/generate"[^}]*\}'))


def in_flight(worker: ServiceProcess) -> int:
    return int(_metric_sum(worker, r"imgpod_http_in_flight(\{[^}]*\})?"))


def _metric_sum(worker: ServiceProcess, pattern: str) -> float:
    text = httpx.get(worker.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    line = re.compile(rf"^{pattern} (\S+)$")
    return sum(float(m.group(m.lastindex or 1)) for m in map(line.match, text.splitlines()) if m)


def pool_view(api: ServiceProcess) -> dict[str, int]:
    return httpx.get(api.url + "/healthz", timeout=10).json()["pools"]["text2img"]


class Load:
    """Requests sent back to back by ``clients`` threads until stopped; every status is kept."""

    def __init__(self, api: ServiceProcess, clients: int = 2) -> None:
        self.api = api
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, client: int) -> None:
        with httpx.Client(timeout=120) as http:
            seed = 0
            while not self._stop.is_set():
                seed += 1
                body = {"prompt": "a lighthouse in fog", "seed": client * 100_000 + seed}
                status = http.post(self.api.url + "/v1/imagegen", json=body, headers=CLIENT).status_code
                with self._lock:
                    self.statuses.append(status)

    def done(self) -> int:
        with self._lock:
            return len(self.statuses)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Send nothing more, and wait for the answers of what was sent."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsmasqServer]:
    with running_dnsmasq(tmp_path_factory.mktemp("dnsmasq")) as server:
        yield server


@pytest.fixture(scope="module")
def pods(
    dns: DnsmasqServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, HostedServiceProcess]]:
    """Two "pods" of one role: the same port, one address each."""
    port = free_port()
    env = image_env(tiny_models["zimage"], IMAGE_TEST_HOOKS="1")
    procs = {
        address: HostedServiceProcess(
            "services.image_worker.main",
            host=address,
            port=port,
            env=env,
            log_dir=tmp_path_factory.mktemp(address.replace(".", "-")),
        )
        for address in ADDRESSES
    }
    with all_running(procs.values()):
        yield procs


def interface(dns: DnsmasqServer, port: int) -> ServiceProcess:
    return ServiceProcess(
        "services.interface.main",
        env={
            "INTERFACE_INTERNAL_TOKEN": TOKEN,
            "INTERFACE_API_KEYS": API_KEY,
            # Pools in front of image workers, with no LLM: no guard to ask.
            "INTERFACE_GUARD": "off",
            "INTERFACE_TEXT2IMG_WORKER_URLS": f"dns://{NAME}:{port}",
            "INTERFACE_DNS_NAMESERVER": dns.nameserver,
            "INTERFACE_DNS_REFRESH_S": "0.3",
            "INTERFACE_HEALTH_INTERVAL_S": "0.3",
        },
    )


def test_pods_join_and_leave_by_dns_while_requests_flow(
    dns: DnsmasqServer, pods: dict[str, HostedServiceProcess]
) -> None:
    first, second = pods[ADDRESSES[0]], pods[ADDRESSES[1]]
    dns.set_records(NAME, [first.host])
    with interface(dns, first.port) as api, Load(api) as load:
        assert pool_view(api) == {"healthy": 1, "configured": 1}
        wait_until(lambda: load.done() >= 4, what="requests flow to the first pod")
        assert served(second) == 0

        # A second pod becomes ready: it joins after the interface's own probe, and gets traffic.
        dns.set_records(NAME, ADDRESSES)
        wait_until(lambda: pool_view(api) == {"healthy": 2, "configured": 2}, what="the second pod joined")
        wait_until(lambda: served(second) >= 3, what="the second pod serves")

        # The first pod leaves: once the interface has looked the name up again, it sends it nothing more.
        dns.set_records(NAME, [second.host])
        wait_until(lambda: pool_view(api)["configured"] == 1, what="the first pod left the pool")
        # Calls routed to it before the refresh finish there; count from when none is left.
        wait_until(lambda: in_flight(first) == 0, what="the first pod's last calls finished")
        first_after_refresh, second_after_refresh = served(first), served(second)
        done_at_refresh = load.done()
        wait_until(lambda: load.done() >= done_at_refresh + 8, what="requests flow after the refresh")
        load.stop()
        metrics = httpx.get(api.url + "/metrics", headers=CLIENT, timeout=10).text
        # Liveness needs no key, where everything else on this interface does.
        assert httpx.get(api.url + "/livez", timeout=10).json() == {"status": "alive"}
        assert httpx.get(api.url + "/v1/jobs/x", timeout=10).status_code == 401
    statuses = load.statuses

    assert statuses and set(statuses) == {200}, f"dropped: {[s for s in statuses if s != 200]}"
    assert served(first) == first_after_refresh  # no request reached the removed address after the refresh
    assert served(second) - second_after_refresh >= 8
    assert served(first) + served(second) == len(statuses)
    changes = dict(
        re.findall(
            r'^imgpod_pool_member_changes_total\{change="(\w+)",pool="text2img"\} (\S+)$', metrics, re.M
        )
    )
    assert changes == {"joined": "2.0", "left": "1.0"}
    after = served(second) - second_after_refresh
    print(
        f"\nDNS pool: {len(statuses)} requests, all 200; first pod {served(first)}, second pod "
        f"{served(second)}; after the first pod left: first +0, second +{after}"
    )


def test_a_failed_lookup_keeps_the_pods_and_is_counted(
    dns: DnsmasqServer, pods: dict[str, HostedServiceProcess]
) -> None:
    dns.set_records(NAME, ADDRESSES)
    port = pods[ADDRESSES[0]].port
    with interface(dns, port) as api:
        assert pool_view(api) == {"healthy": 2, "configured": 2}
        dns.proc.send_signal(signal.SIGSTOP)  # the nameserver stops answering (a timeout per lookup)
        try:

            def failures() -> float:
                text = httpx.get(api.url + "/metrics", headers=CLIENT, timeout=10).text
                found = re.search(r'^imgpod_pool_dns_failures_total\{pool="text2img"\} (\S+)$', text, re.M)
                return float(found.group(1)) if found else 0.0

            wait_until(lambda: failures() >= 2, what="lookups failed twice")
            assert pool_view(api) == {"healthy": 2, "configured": 2}
            for seed in range(2):
                resp = httpx.post(
                    api.url + "/v1/imagegen",
                    json={"prompt": "a quay", "seed": seed},
                    headers=CLIENT,
                    timeout=120,
                )
                assert resp.status_code == 200, resp.text
        finally:
            dns.proc.send_signal(signal.SIGCONT)


def test_livez_answers_without_a_key_and_healthz_is_readiness(pods: dict[str, HostedServiceProcess]) -> None:
    worker = pods[ADDRESSES[1]]
    # The worker requires the internal token everywhere else; liveness needs none (a kubelet holds none).
    assert httpx.get(worker.url + "/v1/test/gate", timeout=10).status_code == 401
    live = httpx.get(worker.url + "/livez", timeout=10)
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert httpx.get(worker.url + "/healthz", timeout=10).status_code == 200


def test_sigterm_to_a_pod_found_by_dns_drains_it_out_of_the_pool_with_every_request_answered(
    dns: DnsmasqServer, pods: dict[str, HostedServiceProcess]
) -> None:
    """Last in this module: it ends the first pod."""
    leaving, staying = pods[ADDRESSES[0]], pods[ADDRESSES[1]]
    dns.set_records(NAME, ADDRESSES)
    gate = WorkerGate(leaving.url, TOKEN)
    with interface(dns, leaving.port) as api:
        assert pool_view(api) == {"healthy": 2, "configured": 2}
        gate.close()
        parked_before = gate.state()["parked"]
        results: list[int] = []
        lock = threading.Lock()

        def send(seed: int) -> None:
            resp = httpx.post(
                api.url + "/v1/imagegen",
                json={"prompt": "a harbour", "seed": seed},
                headers=CLIENT,
                timeout=120,
            )
            with lock:
                results.append(resp.status_code)

        senders = [threading.Thread(target=send, args=(seed,), daemon=True) for seed in range(4)]
        for thread in senders:
            thread.start()
        # Round robin parks some of them in the leaving pod (its gate is shut); the rest are answered.
        wait_until(
            lambda: gate.state()["parked"] > parked_before, what="requests in flight on the leaving pod"
        )
        held = gate.state()["parked"]
        served_by_staying = served(staying)

        leaving.proc.send_signal(signal.SIGTERM)
        # Draining: alive, not ready, and the interface takes it out of rotation (its calls keep running).
        wait_until(
            lambda: httpx.get(leaving.url + "/healthz", timeout=10).status_code == 503, what="not ready"
        )
        assert httpx.get(leaving.url + "/livez", timeout=10).status_code == 200
        wait_until(lambda: pool_view(api)["healthy"] == 1, what="the interface stopped routing to it")
        # New requests meanwhile go to the other pod only.
        for seed in range(10, 13):
            send(seed)
        assert served(staying) >= served_by_staying + 3
        # The cluster drops a pod that is not ready from its Service's records: it leaves the pool.
        dns.set_records(NAME, [staying.host])
        wait_until(lambda: pool_view(api) == {"healthy": 1, "configured": 1}, what="the pod left the pool")
        assert gate.state()["parked"] == held  # still holding what it accepted
        gate.open()
        for thread in senders:
            thread.join(timeout=120)
        # Drained (nothing left in flight): the process exits by itself, the way uvicorn ends on SIGTERM (it
        # re-raises the signal once shut down), not killed.
        assert leaving.proc is not None
        assert leaving.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert results == [200] * 7, results
    print(f"\nDNS drain: {held} request(s) in flight on the leaving pod at SIGTERM, 7 of 7 answered 200")
