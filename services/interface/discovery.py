"""Workers found by DNS: a URL-list entry ``dns://<host>:<port>`` is every address <host> resolves to.

Why: on Kubernetes each role's pods sit behind a headless Service, whose name resolves to one A/AAAA record
per ready pod. Through a ClusterIP the interface would see one "worker", and per-worker budgets, health
ejection and round-robin would all be wrong; resolved per pod, each pod is a worker of its own.

This module resolves and remembers; joining and leaving the pool (probe first, drain on the way out) is the
pool's (services/interface/pools.py ``WorkerPool.refresh_members``), because it moves per-worker state.

An answer that names no address (NXDOMAIN, or no A and no AAAA record) is an answer: the role has no ready
pod (scaled to zero), and its workers leave. A lookup that fails (timeout, SERVFAIL, refused, no reachable
nameserver) says nothing about the pods, so the last known addresses stay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger(__name__)

DNS_SCHEME = "dns://"
DEFAULT_DNS_PORT = 53


class ResolutionFailed(Exception):
    """The lookup could not be made; what the pods are is unknown (not: there are none)."""


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """One ``dns://host:port`` entry: the name to resolve and the port every address serves on."""

    host: str
    port: int

    @property
    def entry(self) -> str:
        return f"{DNS_SCHEME}{self.host}:{self.port}"

    def worker_url(self, address: str) -> str:
        # An IPv6 address needs brackets in a URL.
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{self.port}"


def is_dns_entry(entry: str) -> bool:
    return entry.lower().startswith(DNS_SCHEME)


def parse_dns_entry(entry: str) -> DnsTarget:
    """``dns://host:port`` -> DnsTarget; ValueError naming the entry when it is anything else."""
    parts = urlsplit(entry)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme.lower() != "dns"
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"{entry!r}: a DNS entry is dns://<host>:<port> (no path, no credentials)")
    return DnsTarget(parts.hostname.rstrip("."), port)


def parse_nameserver(value: str) -> tuple[str, int]:
    """``10.0.0.10``, ``10.0.0.10:5353``, ``[fd00::a]:5353`` or ``fd00::a`` -> (address, port)."""
    text = value.strip()
    address, port = text, DEFAULT_DNS_PORT
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{value!r}: a nameserver is <ip>, <ip>:<port> or [<ipv6>]:<port>")
            port = int(rest[1:])
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{value!r}: a nameserver is <ip>, <ip>:<port> or [<ipv6>]:<port>")
        port = int(port_text)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        # dnspython needs an address: a nameserver's name would need a nameserver to resolve it.
        raise ValueError(f"{value!r}: a nameserver is an IP address (with an optional port)") from None
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port out of range")
    return address, port


class Resolver(Protocol):
    async def addresses(self, host: str) -> set[str]:
        """Every A and AAAA address of ``host`` (empty: the name has none); ResolutionFailed otherwise."""
        ...


class DnsResolver:
    """dnspython's asyncio stub resolver: the system's configuration (/etc/resolv.conf, with its search
    domains and ndots, which a short Kubernetes Service name needs), or one given nameserver."""

    def __init__(self, nameserver: str | None, timeout_s: float) -> None:
        if nameserver is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            address, port = parse_nameserver(nameserver)
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [address]
            self._resolver.port = port
        # No cache: a pod that left must leave at the next refresh, not when a record's TTL runs out.
        self._resolver.cache = None
        self._timeout_s = timeout_s

    async def addresses(self, host: str) -> set[str]:
        answers = await asyncio.gather(
            self._records(host, "A"), self._records(host, "AAAA"), return_exceptions=True
        )
        addresses: set[str] = set()
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            addresses |= answer
        return addresses

    async def _records(self, host: str, rdtype: str) -> set[str]:
        try:
            answer = await self._resolver.resolve(
                host, rdtype, search=True, lifetime=self._timeout_s, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return set()
        except dns.exception.DNSException as exc:
            # Timeout, NoNameservers (SERVFAIL/REFUSED from every server), malformed answers.
            raise ResolutionFailed(f"{rdtype} lookup failed: {type(exc).__name__}") from exc
        return {record.to_text() for record in answer}


@dataclass(slots=True)
class DiscoveredSet:
    """The worker URLs the pool's DNS entries stand for, as last known; one lookup per entry per refresh."""

    targets: Sequence[DnsTarget]
    resolver: Resolver
    # entry -> its worker URLs at the last successful lookup (absent: never resolved yet).
    known: dict[str, list[str]] = field(default_factory=dict)

    async def refresh(self) -> tuple[list[str], list[DnsTarget]]:
        """Look every entry up again: (worker URLs, entries whose lookup failed and kept their last set)."""
        results = await asyncio.gather(
            *(self.resolver.addresses(t.host) for t in self.targets), return_exceptions=True
        )
        failed: list[DnsTarget] = []
        for target, result in zip(self.targets, results, strict=True):
            if isinstance(result, ResolutionFailed):
                failed.append(target)
                continue
            if isinstance(result, BaseException):
                raise result
            self.known[target.entry] = [target.worker_url(a) for a in sorted(result, key=_address_order)]
        return self.urls(), failed

    def urls(self) -> list[str]:
        return list(dict.fromkeys(url for t in self.targets for url in self.known.get(t.entry, ())))


def membership_change(current: Iterable[str], wanted: Iterable[str]) -> tuple[list[str], list[str]]:
    """(joined, left): URLs in ``wanted`` and not ``current``, and the other way round, in their order."""
    current, wanted = list(dict.fromkeys(current)), list(dict.fromkeys(wanted))
    current_set, wanted_set = set(current), set(wanted)
    joined = [url for url in wanted if url not in current_set]
    left = [url for url in current if url not in wanted_set]
    return joined, left


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)
