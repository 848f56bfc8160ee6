"""Slow clients and huge headers against the interface: what they hold, what normal requests see meanwhile.

The interface runs in front of the echo upstream (``bench/echo_worker.py``), started by each ``--servers``
variant (``bench/server_variants.py``: ``uvicorn`` is how every service ran before issue 19, ``guarded`` the
launcher with the edge bounds, ``shared/serve.py``), with production's ``EDGE_*`` defaults unless ``--env``
overrides them. For ``--seconds`` it holds:

- ``--slow`` connections that trickle request headers, one byte every ``--pace`` seconds;
- as many that send headers and part of a body, then nothing (a stalled upload);
- proxied ``POST /v1/imagegen`` calls at ``--rate`` per second, whose latency is measured.

Every second it counts the slow connections still open (from the client side) and the interface's open file
descriptors. Then it probes headers of 256 kB and 8 MB, and opens ``--flood`` idle connections at once to see
how many the server keeps.

    python -m bench.bench_edge                                   # both servers, about 2 minutes
    python -m bench.bench_edge --servers guarded --seconds 20 --slow 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from typing import Any

import httpx
import psutil

from bench.common import percentile, print_table, run_async, write_results
from bench.stack import echo_and_interface

NAME = "bench_edge"
BODY = b'{"prompt": "a lighthouse on a cliff", "width": 64, "height": 64, "steps": 1, "seed": 7}'


class SlowClient:
    """One connection sending ``head`` at once, then ``tail`` a byte per ``pace`` seconds (or nothing)."""

    def __init__(self, port: int, head: bytes, tail: bytes, pace: float) -> None:
        self.port, self.head, self.tail, self.pace = port, head, tail, pace
        self.open = False
        self.closed_after: float | None = None
        self.answer = b""

    async def run(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.open = True
        started = time.monotonic()
        writer.write(self.head)

        async def trickle() -> None:
            for i in range(len(self.tail)):
                await asyncio.sleep(self.pace)
                writer.write(self.tail[i : i + 1])

        sender = asyncio.create_task(trickle())
        reading = asyncio.create_task(reader.read(4096))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done() and not reading.cancelled() and reading.exception() is None:
            self.answer = reading.result()
            self.closed_after = time.monotonic() - started
        for task in (sender, reading, stopping):
            task.cancel()
        self.open = False
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def normal_calls(url: str, rate: float, stop: asyncio.Event) -> list[tuple[float, int | None]]:
    """(latency s, status) of proxied calls at a fixed pace until ``stop``."""
    out: list[tuple[float, int | None]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                resp = await client.post(
                    "/v1/imagegen", content=BODY, headers={"Content-Type": "application/json"}
                )
                status: int | None = resp.status_code
            except httpx.HTTPError:
                status = None
            out.append((time.perf_counter() - started, status))
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    return out


async def hold_slow_clients(port: int, url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    header_tail = b"Host: x\r\nX-Slow: " + b"a" * 10_000 + b"\r\n\r\n"
    body_head = (
        b"POST /v1/imagegen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + BODY[:20]
    )
    headers = [
        SlowClient(port, b"POST /v1/imagegen HTTP/1.1\r\n", header_tail, args.pace) for _ in range(args.slow)
    ]
    bodies = [SlowClient(port, body_head, b"", args.pace) for _ in range(args.slow)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in headers + bodies]
    calls = asyncio.create_task(normal_calls(url, args.rate, stop))
    proc = psutil.Process(pid)
    timeline = []
    for second in range(1, args.seconds + 1):
        await asyncio.sleep(1)
        timeline.append(
            {
                "t": second,
                "slow_headers_open": sum(c.open for c in headers),
                "stalled_bodies_open": sum(c.open for c in bodies),
                "server_fds": proc.num_fds(),
            }
        )
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = await calls
    lat = [s for s, status in outcomes if status == 200]
    return {
        "timeline": timeline,
        "calls": len(outcomes),
        "ok": len(lat),
        "p50_ms": percentile(lat, 50) * 1000 if lat else None,
        "p99_ms": percentile(lat, 99) * 1000 if lat else None,
        "header_answers": sorted({c.answer[:12].decode(errors="replace") for c in headers if c.answer}),
        "body_answers": sorted({c.answer[:12].decode(errors="replace") for c in bodies if c.answer}),
    }


def probe_header(port: int, size: int) -> str:
    """Status line for a request with one header of ``size`` bytes, or how the connection ended."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            with contextlib.suppress(ConnectionError):
                sock.sendall(request)
            answer = sock.recv(4096)
    except (ConnectionError, TimeoutError) as exc:
        return type(exc).__name__
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else "closed"


def flood(port: int, pid: int, count: int) -> dict[str, int]:
    """Open ``count`` idle connections at once; how many the server still holds a second later."""
    proc = psutil.Process(pid)
    before = proc.num_fds()
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(1.0)
    held = proc.num_fds() - before
    for sock in socks:
        sock.close()
    return {"opened": len(socks), "held_by_server": held}


def run_server(server: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(kv.split("=", 1) for kv in args.env)
    with echo_and_interface(interface_extra=env, server=server) as (_, api):
        assert api.proc is not None
        pid = api.proc.pid
        result = run_async(hold_slow_clients(api.port, api.url, pid, args))
        result["headers"] = {
            f"{size // 1024} kB": probe_header(api.port, size) for size in (256 * 1024, 8 << 20)
        }
        result["flood"] = flood(api.port, pid, args.flood)
        result["rss_mb"] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="uvicorn,guarded")
    parser.add_argument(
        "--slow", type=int, default=100, help="slow-header clients (and as many stalled bodies)"
    )
    parser.add_argument("--pace", type=float, default=0.5, help="seconds between trickled bytes")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=float, default=20.0, help="normal calls per second during the hold")
    parser.add_argument("--flood", type=int, default=700, help="idle connections opened at once")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the interface (EDGE_*)")
    args = parser.parse_args()

    results = {server: run_server(server, args) for server in args.servers.split(",")}
    checkpoints = [t for t in (5, 10, 15, 20, 30, 60) if t <= args.seconds]
    rows = []
    for server, r in results.items():
        at = {p["t"]: p for p in r["timeline"]}
        rows.append(
            [
                server,
                *[f"{at[t]['slow_headers_open']}/{at[t]['stalled_bodies_open']}" for t in checkpoints],
                max(p["server_fds"] for p in r["timeline"]),
                f"{r['ok']}/{r['calls']}",
                r["p50_ms"],
                r["p99_ms"],
            ]
        )
    print_table(
        f"{args.slow} slow-header + {args.slow} stalled-body connections, normal calls at {args.rate}/s",
        ["server", *[f"open@{t}s" for t in checkpoints], "max fds", "ok calls", "p50 ms", "p99 ms"],
        rows,
    )
    print_table(
        "probes",
        ["server", "256 kB header", "8 MB header", f"{args.flood} idle conns held", "RSS MB after"],
        [
            [s, r["headers"]["256 kB"], r["headers"]["8192 kB"], r["flood"]["held_by_server"], r["rss_mb"]]
            for s, r in results.items()
        ],
    )
    write_results(NAME, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
