"""Job webhooks (services/interface/jobs/webhooks.py) against a real HTTP receiver.

The receiver is uvicorn on a loopback port, in a thread of its own (its own event loop), so a receiver that
hangs holds nothing of the sender's loop. Each test uses its own path, and the receiver answers what the test
scripted for that path. Signatures are checked with the recipe the documentation gives receivers
(``verify_webhook`` below, copied from docs/JOBS.md "Webhooks").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import random
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devtools.service_process import free_port
from services.interface.jobs.records import EventType, JobEvent, JobRecord, Webhook, WebhookEvent, new_job_id
from services.interface.jobs.webhooks import (
    AllowList,
    WebhookConfig,
    WebhookSender,
    check_target,
    webhook_client,
)
from shared.errors import ValidationFailed
from shared.metrics import ServiceMetrics
from tests.helpers.waiting import until

SECRET = b"whook-test-secret-5f1d0c6e9a7b"
# A public address literal: accepted without asking DNS (the tests run offline).
PUBLIC_IP = "93.184.215.14"


def verify_webhook(secret: bytes, headers: Mapping[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, as documented: headers is the request's (case-insensitive) header mapping,
    body the raw bytes as received (before any JSON parsing)."""
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False  # too old (or from the future): a replay
    signed = headers["webhook-id"].encode() + b"." + timestamp.encode() + b"." + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return any(
        hmac.compare_digest(sig.removeprefix("v1="), expected)
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1=")
    )


@dataclass(frozen=True)
class Hit:
    path: str
    at: float  # time.monotonic() in the receiver's thread: the same clock as the test's
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


# A path's script: one answer per request, the last one repeating. An int is a status, (status, retry_after)
# adds Retry-After, "hang" answers nothing for 30 s.
Answer = int | tuple[int, int] | str


class Receiver:
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.scripts: dict[str, list[Answer]] = {}
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/hook/{name}", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="webhook receiver", daemon=True)

    async def _hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        hit = Hit(name, time.monotonic(), dict(request.headers), await request.body())
        with self._lock:
            self._hits.append(hit)
            seen = sum(1 for h in self._hits if h.path == name)
        script = self.scripts.get(name, [200])
        answer = script[min(seen, len(script)) - 1]
        if answer == "hang":
            # Holds the request until the sender gives up on it (or 30 s).
            for _ in range(600):
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.05)
            return Response(status_code=200)
        if isinstance(answer, tuple):
            return Response(status_code=answer[0], headers={"Retry-After": str(answer[1])})
        assert isinstance(answer, int)
        return Response(status_code=answer)

    def hits(self, name: str) -> list[Hit]:
        with self._lock:
            return [h for h in self._hits if h.path == name]

    def hook(self, name: str, *answers: Answer) -> str:
        if answers:
            self.scripts[name] = list(answers)
        return f"{self.url}/hook/{name}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    rx.start()
    yield rx
    rx.stop()


def make_config(**overrides: Any) -> WebhookConfig:
    values: dict[str, Any] = {
        "secret": SECRET,
        # The receiver is on loopback: refused by default, so the tests allow exactly its address.
        "allow": AllowList.parse(["127.0.0.1"]),
        "timeout_s": 5.0,
        "retry_for_s": 10.0,
        "retry_base_s": 0.05,
        "retry_max_delay_s": 1.0,
        "close_timeout_s": 2.0,
    }
    values.update(overrides)
    return WebhookConfig(**values)


def job(url: str, events: tuple[WebhookEvent, ...] = ()) -> JobRecord:
    return JobRecord(id=new_job_id(), route="text2img", owner=None, spec={}, webhook=Webhook(url, events))


def event(record: JobRecord, kind: EventType, **data: Any) -> JobEvent:
    return JobEvent(record.id, kind, data)


def count(metrics: ServiceMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("imgpod_webhook_deliveries_total", {"outcome": outcome})
    return value or 0.0


def with_sender(
    config: WebhookConfig,
    body: Callable[[WebhookSender, ServiceMetrics], Awaitable[None]],
    **sender_args: Any,
) -> ServiceMetrics:
    metrics = ServiceMetrics("test")

    async def main() -> None:
        async with webhook_client(config) as client:
            sender = WebhookSender(config, client, metrics, **sender_args)
            try:
                await body(sender, metrics)
            finally:
                await sender.close()

    asyncio.run(main())
    return metrics


def gaps(hits: Sequence[Hit]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(hits)]


# -- signing and payload ----------------------------------------------------------------------------------


def test_a_delivery_is_signed_as_documented_and_carries_the_job(receiver: Receiver) -> None:
    record = job(receiver.hook("signed"))
    view = {"id": record.id, "status": "succeeded", "result": {"images": 1}}

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        sender.notify(record, event(record, "completed", job=view))
        await until(lambda: count(metrics, "delivered") == 2)

    with_sender(make_config(), body)
    start, done = receiver.hits("signed")
    for hit in (start, done):
        assert verify_webhook(SECRET, hit.headers, hit.body)
        # The check is not vacuous: another secret, or one changed byte, fails it.
        assert not verify_webhook(b"another-secret", hit.headers, hit.body)
        assert not verify_webhook(SECRET, hit.headers, hit.body.replace(b'"id"', b'"ID"'))
        # Nor can the body be sent again under another delivery id (the id is signed).
        assert not verify_webhook(SECRET, {**hit.headers, "webhook-id": "msg_" + "0" * 24}, hit.body)
        assert hit.headers["content-type"] == "application/json"
        assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 60
    assert start.headers["webhook-id"] != done.headers["webhook-id"]
    assert start.json()["id"] == record.id and start.json()["type"] == "start" and "job" not in start.json()
    payload = done.json()
    assert payload["type"] == "completed" and payload["status"] == "succeeded" and payload["job"] == view
    assert isinstance(payload["sent_at"], float)


def test_terminal_events_are_completed_naming_how_the_job_ended(receiver: Receiver) -> None:
    kinds: tuple[EventType, ...] = ("failed", "canceled", "expired")
    records = {kind: job(receiver.hook(f"end-{kind}")) for kind in kinds}

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        for kind, record in records.items():
            sender.notify(record, event(record, "queued", position=3))  # not a webhook event
            sender.notify(record, event(record, kind))
        await until(lambda: count(metrics, "delivered") == 3)

    with_sender(make_config(), body)
    for kind in records:
        [hit] = receiver.hits(f"end-{kind}")
        assert hit.json()["type"] == "completed" and hit.json()["status"] == kind


def test_the_events_filter_is_honoured(receiver: Receiver) -> None:
    record = job(receiver.hook("filtered"), events=("completed",))

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        sender.notify(record, event(record, "progress", step=1, total=4))
        sender.notify(record, event(record, "completed"))
        await until(lambda: count(metrics, "delivered") == 1)
        await until(lambda: sender.busy_jobs == 0)

    with_sender(make_config(), body)
    assert [h.json()["type"] for h in receiver.hits("filtered")] == ["completed"]


# -- retries ----------------------------------------------------------------------------------------------


def test_5xx_is_retried_with_growing_gaps_under_one_webhook_id(receiver: Receiver) -> None:
    record = job(receiver.hook("flaky", 500, 500, 200))

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        await until(lambda: count(metrics, "delivered") == 1)

    # A seeded jitter: the draws are fixed, the code path is the real one.
    with_sender(make_config(retry_base_s=0.2), body, rng=random.Random(0))
    hits = receiver.hits("flaky")
    assert len(hits) == 3
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    assert len({h.body for h in hits}) == 1  # a retry re-sends the same bytes
    assert all(verify_webhook(SECRET, h.headers, h.body) for h in hits)
    first, second = gaps(hits)
    print(f"retry gaps: {first:.3f} s, {second:.3f} s")
    assert first >= 0.2 * 0.5 and second > first


def test_a_4xx_is_not_retried(receiver: Receiver) -> None:
    record = job(receiver.hook("bad", 400))

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        await until(lambda: count(metrics, "rejected") == 1)
        # The job's line is gone: nothing is left to try again.
        await until(lambda: sender.busy_jobs == 0)

    metrics = with_sender(make_config(), body)
    assert len(receiver.hits("bad")) == 1
    assert count(metrics, "delivered") == 0


def test_429_waits_its_retry_after(receiver: Receiver) -> None:
    record = job(receiver.hook("limited", (429, 1), 200))

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        await until(lambda: count(metrics, "delivered") == 1)

    with_sender(make_config(retry_base_s=0.01), body)
    [gap] = gaps(receiver.hits("limited"))
    assert gap >= 1.0  # the backoff alone would have been 10 ms at most


def test_retries_stop_when_the_retry_window_is_spent(receiver: Receiver) -> None:
    record = job(receiver.hook("down", 503))
    window_s = 1.0
    spent: list[float] = []

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        started = time.monotonic()
        sender.notify(record, event(record, "started"))
        await until(lambda: count(metrics, "expired") == 1)
        spent.append(time.monotonic() - started)
        await until(lambda: sender.busy_jobs == 0)

    config = make_config(retry_for_s=window_s, retry_base_s=0.1, retry_max_delay_s=0.3)
    metrics = with_sender(config, body)
    hits = receiver.hits("down")
    print(f"{len(hits)} attempts over {hits[-1].at - hits[0].at:.3f} s; given up after {spent[0]:.3f} s")
    assert len(hits) >= 4  # 0, ~0.1, ~0.3, ~0.6, ~0.9, 1.0: retried until the window closed
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    # No attempt starts after the window (the slack is the loopback's latency, not a schedule).
    assert hits[-1].at - hits[0].at <= window_s + 0.5
    assert spent[0] < window_s + config.timeout_s
    assert count(metrics, "delivered") == 0


# -- per-job order, throttle, never blocking ----------------------------------------------------------------


def test_progress_is_throttled_and_the_latest_arrives_last(receiver: Receiver) -> None:
    record = job(receiver.hook("progress"))
    interval_s = 0.5
    steps = 20

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        for step in range(1, steps + 1):
            sender.notify(record, event(record, "progress", step=step, total=steps))
            await asyncio.sleep(0.05)
        await until(lambda: any(h.json().get("step") == steps for h in receiver.hits("progress")))
        sender.notify(record, event(record, "completed"))
        await until(lambda: receiver.hits("progress")[-1].json()["type"] == "completed")

    metrics = with_sender(make_config(progress_interval_s=interval_s), body)
    hits = receiver.hits("progress")
    kinds = [h.json()["type"] for h in hits]
    progress = [h for h in hits if h.json()["type"] == "progress"]
    sent = [h.json()["step"] for h in progress]
    print(f"{steps} progress events over ~{steps * 0.05:.1f} s -> delivered steps {sent}")
    assert kinds[0] == "start" and kinds[-1] == "completed" and kinds[1:-1] == ["progress"] * len(progress)
    assert all(a < b for a, b in itertools.pairwise(sent)) and sent[-1] == steps and len(sent) < steps
    assert all(p.json()["total"] == steps for p in progress)
    assert min(gaps(progress)) >= interval_s
    assert count(metrics, "superseded") == steps - len(sent)


def test_a_newer_state_supersedes_a_waiting_progress(receiver: Receiver) -> None:
    record = job(receiver.hook("supersede"))

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "progress", step=1, total=8))
        await until(lambda: len(receiver.hits("supersede")) == 1)
        sender.notify(record, event(record, "progress", step=2, total=8))  # within the interval: waits
        sender.notify(record, event(record, "completed"))
        await until(lambda: len(receiver.hits("supersede")) == 2)
        await until(lambda: sender.busy_jobs == 0)

    metrics = with_sender(make_config(progress_interval_s=0.5), body)
    first, last = (h.json() for h in receiver.hits("supersede"))
    assert first["step"] == 1 and last["type"] == "completed"
    assert count(metrics, "superseded") == 1


def test_a_hanging_receiver_never_blocks_notify_or_other_jobs(receiver: Receiver) -> None:
    stuck = job(receiver.hook("hang", "hang"))
    other = job(receiver.hook("fine"))
    timings: dict[str, float] = {}

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        t0 = time.perf_counter()
        sender.notify(stuck, event(stuck, "started"))
        timings["notify"] = time.perf_counter() - t0
        # Returned before its delivery even began: notify only queues.
        assert receiver.hits("hang") == []
        await until(lambda: len(receiver.hits("hang")) == 1)  # now held by the receiver
        t0 = time.perf_counter()
        sender.notify(stuck, event(stuck, "completed"))
        timings["notify_while_in_flight"] = time.perf_counter() - t0
        sender.notify(other, event(other, "started"))
        await until(lambda: count(metrics, "delivered") == 1)
        assert len(receiver.hits("fine")) == 1 and len(receiver.hits("hang")) == 1  # in order: one at a time
        t0 = time.perf_counter()
        await sender.close()
        timings["close"] = time.perf_counter() - t0

    metrics = with_sender(make_config(close_timeout_s=0.3), body)
    print({k: f"{v * 1000:.3f} ms" for k, v in timings.items()})
    assert timings["notify"] < 0.05 and timings["notify_while_in_flight"] < 0.05
    assert timings["close"] < 0.3 + 2.0  # bounded: the hanging delivery was cancelled
    assert count(metrics, "dropped") == 2  # its start (in flight) and its completed (queued behind it)


# -- the target check ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://127.0.0.1/hook", "not reachable or not allowed"),
        ("https://localhost/hook", "not reachable or not allowed"),
        ("https://[::1]/hook", "not reachable or not allowed"),
        ("https://169.254.169.254/latest/meta-data/", "not reachable or not allowed"),
        ("https://10.1.2.3/hook", "not reachable or not allowed"),
        ("https://192.168.0.10/hook", "not reachable or not allowed"),
        ("https://[::ffff:127.0.0.1]/hook", "not reachable or not allowed"),
        ("https://[::ffff:10.0.0.1]/hook", "not reachable or not allowed"),
        ("https://[64:ff9b::a9fe:a9fe]/hook", "not reachable or not allowed"),  # NAT64 of the metadata IP
        ("https://[fe80::1]/hook", "not reachable or not allowed"),
        ("https://[fd00::1]/hook", "not reachable or not allowed"),
        ("https://0.0.0.0/hook", "not reachable or not allowed"),
        ("https://224.0.0.1/hook", "not reachable or not allowed"),
        ("https://100.64.0.1/hook", "not reachable or not allowed"),
        ("https://127.1/hook", "not reachable or not allowed"),  # a short form the resolver expands
        ("http://example.com/hook", "https"),
        ("ftp://example.com/hook", "https"),
        ("https://user:pass@example.com/hook", "credentials"),
        ("https://token@example.com/hook", "credentials"),
        ("not a url", "https"),
        ("https://example.com:70000/hook", "not a valid URL"),
    ],
)
def test_check_target_refuses(url: str, says: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        asyncio.run(check_target(url, make_config(allow=AllowList())))
    assert caught.value.param == "webhook" and caught.value.status_code == 422
    assert says in caught.value.detail


def test_check_target_accepts_public_and_allow_listed_targets() -> None:
    open_config = make_config(allow=AllowList())
    asyncio.run(check_target(f"https://{PUBLIC_IP}/hook", open_config))
    allowed = make_config(allow=AllowList.parse(["127.0.0.1", "10.0.0.0/8", "localhost"]))
    for url in ("http://127.0.0.1:8080/hook", "https://10.2.3.4/hook", "http://localhost:9000/hook"):
        asyncio.run(check_target(url, allowed))
    # The allow-list names a host, not its neighbours: http to a public host is still refused.
    with pytest.raises(ValidationFailed):
        asyncio.run(check_target(f"http://{PUBLIC_IP}/hook", allowed))


def test_webhooks_are_refused_when_no_secret_is_set() -> None:
    with pytest.raises(ValidationFailed, match="not enabled"):
        asyncio.run(check_target(f"https://{PUBLIC_IP}/hook", make_config(secret=None)))


def test_a_short_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as caught:
        WebhookConfig(secret=b"tooshort-secret")
    assert "tooshort" not in str(caught.value)
    assert "tooshort" not in repr(make_config())  # nor does the config's repr show the secret
    assert SECRET.decode() not in repr(make_config())


def test_allow_list_entries_are_checked() -> None:
    parsed = AllowList.parse(["10.0.0.0/8", "[fd00::1]", "Hooks.Internal.", "127.0.0.1"])
    assert parsed.hosts == frozenset({"hooks.internal"})
    assert len(parsed.networks) == 3
    with pytest.raises(ValueError):
        AllowList.parse(["not a host!"])


def scripted_resolver(answers: dict[str, list[list[str]]]) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver answering each name's scripted answers in turn: DNS rebinding on demand."""

    async def resolve(host: str, port: int) -> list[str]:
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return resolve


def test_delivery_checks_the_target_again_dns_rebinding(receiver: Receiver) -> None:
    url = f"https://rebind.test:{receiver.port}/hook/rebind"
    record = job(url)
    config = make_config(allow=AllowList())
    # Public when the job is submitted, loopback when the delivery is made.
    resolve = scripted_resolver({"rebind.test": [[PUBLIC_IP], ["127.0.0.1"]]})

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        await check_target(url, config, resolve)
        sender.notify(record, event(record, "started"))
        await until(lambda: count(metrics, "refused") == 1)

    metrics = with_sender(config, body, resolve=resolve)
    assert count(metrics, "delivered") == 0 and count(metrics, "expired") == 0
    assert receiver.hits("rebind") == []


def test_delivery_connects_to_the_checked_address(receiver: Receiver) -> None:
    # A name no real resolver knows (.test is reserved): the request can only arrive by the checked address.
    record = job(f"http://hooks.test:{receiver.port}/hook/pinned")
    config = make_config(allow=AllowList.parse(["hooks.test"]))
    resolve = scripted_resolver({"hooks.test": [["127.0.0.1"]]})

    async def body(sender: WebhookSender, metrics: ServiceMetrics) -> None:
        sender.notify(record, event(record, "started"))
        await until(lambda: count(metrics, "delivered") == 1)

    with_sender(config, body, resolve=resolve)
    [hit] = receiver.hits("pinned")
    assert hit.headers["host"] == f"hooks.test:{receiver.port}"
    assert verify_webhook(SECRET, hit.headers, hit.body)


# -- https: pinned to the checked address, verified against the host name ---------------------------------


def make_tls_files(root: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for hooks.test signed by it (openssl's CLI: no Python crypto here)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=hooks.test")
    (root / "ext.cnf").write_text("subjectAltName=DNS:hooks.test\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return root / "ca.pem", root / "leaf.pem", root / "leaf.key"


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Receiver, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    ca, cert, key = make_tls_files(tmp_path_factory.mktemp("webhook-tls"))
    rx = Receiver(tls=(cert, key))
    rx.start()
    yield rx, ca
    rx.stop()


def tls_delivery(rx: Receiver, ca: Path, host: str, path: str) -> ServiceMetrics:
    record = job(f"https://{host}:{rx.port}/hook/{path}")
    config = make_config(allow=AllowList.parse([host]), retry_for_s=0.3)
    metrics = ServiceMetrics("test")

    async def main() -> None:
        # The production client's settings, trusting the test CA instead of the system's.
        client = httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(ca)),
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        async with client:
            resolve = scripted_resolver({host: [["127.0.0.1"]]})
            sender = WebhookSender(config, client, metrics, resolve=resolve)
            sender.notify(record, event(record, "started"))
            await until(lambda: sender.busy_jobs == 0)
            await sender.close()

    asyncio.run(main())
    return metrics


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tls_receiver: tuple[Receiver, Path],
) -> None:
    rx, ca = tls_receiver
    metrics = tls_delivery(rx, ca, "hooks.test", "tls")
    assert count(metrics, "delivered") == 1
    [hit] = rx.hits("tls")
    assert hit.headers["host"] == f"hooks.test:{rx.port}"
    assert verify_webhook(SECRET, hit.headers, hit.body)
    # Same address, another name: the certificate (for hooks.test) does not match it, so nothing is sent.
    metrics = tls_delivery(rx, ca, "other.test", "tls-mismatch")
    assert count(metrics, "delivered") == 0 and count(metrics, "expired") == 1
    assert rx.hits("tls-mismatch") == []
