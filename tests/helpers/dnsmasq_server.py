"""A real ``dnsmasq`` for tests: a fresh process on a free loopback port, answering from a hosts file.

The test rewrites the hosts file and the server re-reads it on SIGHUP (as a cluster's DNS follows a
Service's endpoints); ``set_records`` returns once the server answers the new records, so a test never
guesses how long a reload takes. Nothing is forwarded upstream: a name the file does not hold is NXDOMAIN.

In CI (``CI`` set) a missing binary fails the test: the tests that need it must run there, never be skipped
silently. On a workstation they are skipped with the command that installs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.service_process import free_port
from services.interface.discovery import DnsResolver, ResolutionFailed
from tests.helpers.redis_server import in_ci
from tests.helpers.waiting import wait_until


@dataclass
class DnsmasqServer:
    port: int
    hosts_file: Path
    proc: subprocess.Popen[bytes]

    @property
    def nameserver(self) -> str:
        """The value of INTERFACE_DNS_NAMESERVER that points at this server."""
        return f"127.0.0.1:{self.port}"

    def answer(self, name: str) -> set[str] | None:
        """What the server answers for ``name`` now (None: no answer at all)."""
        try:
            return asyncio.run(DnsResolver(self.nameserver, timeout_s=1.0).addresses(name))
        except ResolutionFailed:
            return None

    def set_records(self, name: str, addresses: Iterable[str]) -> None:
        """``name`` resolves to exactly ``addresses`` (none: NXDOMAIN) once this returns."""
        wanted = set(addresses)
        self.hosts_file.write_text("".join(f"{address} {name}\n" for address in sorted(wanted)))
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.answer(name) == wanted, what=f"dnsmasq answers {name} -> {sorted(wanted)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def dnsmasq_binary() -> str:
    """The path of ``dnsmasq``; fails the test in CI when it is missing, else skips it."""
    # Debian puts it in /usr/sbin, which a non-root PATH may not hold.
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        if in_ci():
            pytest.fail("dnsmasq is not installed; .ci/run installs it (scripts/install_dnsmasq.sh)")
        pytest.skip("dnsmasq is not installed (bash scripts/install_dnsmasq.sh)")
    return found


@contextmanager
def running_dnsmasq(workdir: Path) -> Iterator[DnsmasqServer]:
    """Start one for the block, with an empty hosts file; its log goes to ``workdir/dnsmasq.log``."""
    binary = dnsmasq_binary()
    port = free_port()
    hosts = workdir / "hosts"
    hosts.write_text("")
    log = workdir / "dnsmasq.log"
    cmd = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # not the machine's /etc/dnsmasq.conf
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",  # no upstream: names outside the file are not forwarded anywhere
        "--no-hosts",  # not the machine's /etc/hosts
        "--domain-needed",  # a plain name outside the file is NXDOMAIN, not "no server" (REFUSED)
        f"--addn-hosts={hosts}",
        "--local-ttl=0",
        "--no-negcache",
        "--pid-file=",
        f"--log-facility={log}",
    ]
    if os.geteuid() == 0:
        # As root dnsmasq would drop to "nobody", who cannot read a test's private temporary directory.
        cmd.append("--user=root")
    # Errors before the log file is open (a bad option, a port taken) go to stderr.
    with (workdir / "dnsmasq.stderr").open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    server = DnsmasqServer(port, hosts, proc)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited ({proc.returncode}); see {workdir}")
        # NXDOMAIN (an empty set) is an answer; None is silence.
        return server.answer("img-pod-dnsmasq-ready") is not None

    try:
        wait_until(answers, what="dnsmasq answers")
        yield server
    finally:
        server.stop()
