"""DNS discovery of candidate peer addresses: Fly's 6PN `.internal` names, Kubernetes headless Services, seeds.

One mechanism serves three worlds. On Fly, `AAAA <app>.internal` lists the 6PN addresses of the started
Machines and `TXT vms.<app>.internal` lists "machine_id region" pairs; `AAAA <id>.vm.<app>.internal`
ties the two together. In Kubernetes, the SRV records `_peer._tcp.<svc>.<ns>.svc.cluster.local` of a
headless Service name every pod with its port. GPU hosts outside both are given as static seeds.

Discovery only proposes addresses to dial. Addresses change whenever a Machine restarts or moves, so a
peer is identified by its node key after the transport's handshake, never by IP; the snapshot includes
this node itself, which the handshake recognises. A source whose lookup fails (SERVFAIL, timeout,
NXDOMAIN) keeps its last good answer: a DNS hiccup must not make a node forget the swarm.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

log = logging.getLogger(__name__)

PEER_PORT_DEFAULT = 7000
FLY_RESOLVER = "fdaa::3"  # Fly's 6PN DNS server, reachable from every Machine
FLY_APP_ENV = "FLY_APP_NAME"  # set by Fly inside every Machine
CANDIDATES_MAX = 1024
LOOKUPS_IN_FLIGHT_MAX = 16
TXT_BYTES_MAX = 64 * 1024

_APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_DNS_NAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?\.?$")


class DiscoveryConfigError(ValueError):
    """A discovery spec, seed list or resolver address that cannot be used; the message says why."""


class LookupFailed(Exception):
    """A DNS lookup gave no usable answer (SERVFAIL, REFUSED, timeout, NXDOMAIN, malformed reply)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An address worth dialling, with what DNS said about it (region and machine id, when known)."""

    host: str
    port: int
    region: str | None = None
    machine_id: str | None = None

    def __post_init__(self) -> None:
        if not self.host or len(self.host) > 253:
            raise ValueError(f"candidate host must be 1..253 characters, got {self.host!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"candidate port must be in 1..65535, got {self.port}")

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def hostport(self) -> str:
        """`[fdaa::1]:7000` for IPv6 literals, `10.0.0.5:7000` or `name:7000` otherwise."""
        return format_hostport(self.host, self.port)

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{format_hostport(self.host.replace('%', '%25'), self.port)}{path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FlySource:
    """Started Machines of a Fly app, through the 6PN `.internal` DNS."""

    app: str
    port: int = PEER_PORT_DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsSource:
    """Every A and AAAA address of one name (a headless Service, a WireGuard peer name), on one port."""

    name: str
    port: int = PEER_PORT_DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvSource:
    """SRV records of one name (`_peer._tcp.<svc>.<ns>.svc.cluster.local`): targets and their ports."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticSource:
    """Fixed seeds (`host:port`), for hosts that no DNS name lists."""

    seeds: tuple[tuple[str, int], ...]


DiscoverySource = FlySource | DnsSource | SrvSource | StaticSource


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolverConfig:
    """Which DNS server to ask; no nameservers means the system's resolv.conf."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    lifetime_s: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySnapshot:
    """The candidates as of the last poll, sorted; `failing` holds (source, reason) for failed lookups."""

    candidates: tuple[Candidate, ...] = ()
    failing: tuple[tuple[str, str], ...] = ()
    polled_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryChange:
    """What one poll changed: addresses that appeared, vanished, or whose region or machine id changed."""

    added: tuple[Candidate, ...] = ()
    removed: tuple[Candidate, ...] = ()
    updated: tuple[Candidate, ...] = ()
    snapshot: DiscoverySnapshot = field(default_factory=DiscoverySnapshot)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """`[v6]:port`, `[v6]`, bare `v6`, `host:port` or `host`; IP literals come back in canonical form."""
    text = text.strip()
    port_text = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise DiscoveryConfigError(f"bad address {text!r}: expected [ipv6]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise DiscoveryConfigError(f"bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise DiscoveryConfigError(f"port out of range in {text!r}")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not _DNS_NAME_RE.match(host):
            raise DiscoveryConfigError(f"bad host in {text!r}") from None
    return host, port


def parse_seeds(text: str, default_port: int = PEER_PORT_DEFAULT) -> StaticSource:
    """`--peers host:port,[fdaa::5]:7000,...` as a static source."""
    seeds = tuple(parse_hostport(part, default_port) for part in text.split(",") if part.strip())
    if not seeds:
        raise DiscoveryConfigError("the seed list is empty")
    if len(seeds) > CANDIDATES_MAX:
        raise DiscoveryConfigError(f"more than {CANDIDATES_MAX} seeds")
    return StaticSource(seeds=seeds)


def parse_discovery_spec(
    spec: str, *, peer_port: int = PEER_PORT_DEFAULT, env: Mapping[str, str] | None = None
) -> DiscoverySource:
    """`fly` (app from FLY_APP_NAME), `fly:<app>`, `dns:<name>[:port]`, `srv:<name>`, `static:h:p,...`.

    `build_discovery` also takes `<spec>@<resolver>` (`fly:moe@[fdaa:0:18::3]`), for hosts whose
    resolv.conf does not point at the right DNS server, such as a WireGuard peer of Fly's 6PN.
    """
    kind, _, rest = spec.strip().partition(":")
    if kind == "fly":
        app = rest or (env or {}).get(FLY_APP_ENV, "")
        if not _APP_RE.match(app):
            raise DiscoveryConfigError(f"fly discovery needs fly:<app> or {FLY_APP_ENV}, got {app!r}")
        return FlySource(app=app, port=peer_port)
    if kind == "dns":
        host, port = parse_hostport(rest, peer_port)
        return DnsSource(name=host, port=port)
    if kind == "srv":
        if not _DNS_NAME_RE.match(rest):
            raise DiscoveryConfigError(f"bad SRV name {rest!r}")
        return SrvSource(name=rest)
    if kind == "static":
        return parse_seeds(rest, peer_port)
    raise DiscoveryConfigError(
        f"unknown discovery {spec!r}: use fly[:app], dns:name[:port], srv:name, static:h:p,.."
    )


def parse_resolver(text: str, *, lifetime_s: float = 2.0) -> ResolverConfig:
    """`system`, `fdaa::3`, `127.0.0.1:5353` or `[fdaa:0:18::3]:53`: the DNS server discovery asks."""
    if text.strip() in ("", "system"):
        return ResolverConfig(lifetime_s=lifetime_s)
    host, port = parse_hostport(text, 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DiscoveryConfigError(f"the DNS resolver must be an IP address, got {text!r}") from None
    return ResolverConfig(nameservers=(host,), port=port, lifetime_s=lifetime_s)


def default_resolver(sources: Sequence[DiscoverySource]) -> ResolverConfig:
    """Fly sources ask fdaa::3 directly, whatever the image's resolv.conf says; the rest use the system's."""
    if any(isinstance(s, FlySource) for s in sources):
        return ResolverConfig(nameservers=(FLY_RESOLVER,))
    return ResolverConfig()


def parse_vms_txt(text: str, machines_max: int = CANDIDATES_MAX) -> dict[str, str]:
    """`TXT vms.<app>.internal` = "id region,id region" -> {machine_id: region}; malformed pairs are skipped."""
    machines: dict[str, str] = {}
    for pair in text.split(","):
        parts = pair.split()
        if len(parts) == 2 and all(_TOKEN_RE.match(p) for p in parts) and len(machines) < machines_max:
            machines[parts[0]] = parts[1]
        elif pair.strip():
            log.warning("discovery: skipping malformed vms entry %r", pair[:80])
    return machines


def describe(source: DiscoverySource) -> str:
    if isinstance(source, FlySource):
        return f"fly:{source.app}"
    if isinstance(source, DnsSource):
        return f"dns:{format_hostport(source.name, source.port)}"
    if isinstance(source, SrvSource):
        return f"srv:{source.name}"
    return "static:" + ",".join(format_hostport(h, p) for h, p in source.seeds)


class Discovery:
    """Polls its sources, keeps each one's last good answer, and reports what changed between polls."""

    def __init__(
        self,
        sources: Sequence[DiscoverySource],
        *,
        resolver: ResolverConfig | None = None,
        interval_s: float = 5.0,
        candidates_max: int = CANDIDATES_MAX,
    ) -> None:
        if not sources:
            raise DiscoveryConfigError("discovery needs at least one source")
        self.sources = tuple(sources)
        self.interval_s = interval_s
        self.candidates_max = candidates_max
        self.resolver_config = resolver or default_resolver(self.sources)
        self._resolver = _make_resolver(self.resolver_config)
        self._last_good: dict[DiscoverySource, tuple[Candidate, ...]] = {}
        self._failing: dict[DiscoverySource, str] = {}  # source -> why its last lookup failed
        self._fly_machines: dict[str, dict[str, tuple[str, str]]] = {}  # app -> id -> (6PN address, region)
        self._lookups = asyncio.Semaphore(LOOKUPS_IN_FLIGHT_MAX)
        self.snapshot = DiscoverySnapshot()

    async def poll_once(self) -> DiscoveryChange:
        """Asks every source once. DNS failures are logged and leave that source's last answer in place."""
        for source in self.sources:
            try:
                found = await self._resolve(source)
            except LookupFailed as exc:
                level = logging.DEBUG if source in self._failing else logging.WARNING
                log.log(level, "discovery: %s failed, keeping its last answer: %s", describe(source), exc)
                self._failing[source] = str(exc)
                continue
            if self._failing.pop(source, None) is not None:
                log.info("discovery: %s answers again (%d candidates)", describe(source), len(found))
            self._last_good[source] = tuple(found)
        return self._publish(asyncio.get_running_loop().time())

    async def watch(self) -> AsyncIterator[DiscoveryChange]:
        """Polls every `interval_s` until cancelled, yielding each change (the first one lists everything)."""
        while True:
            change = await self.poll_once()
            if change:
                yield change
            await asyncio.sleep(self.interval_s)

    def _publish(self, now: float) -> DiscoveryChange:
        merged: dict[tuple[str, int], Candidate] = {}
        for source in self.sources:
            for cand in self._last_good.get(source, ()):
                old = merged.get(cand.key)
                merged[cand.key] = cand if old is None else _merge(old, cand)
        keys = sorted(merged)
        if len(keys) > self.candidates_max:
            log.warning("discovery: %d candidates, keeping the first %d", len(keys), self.candidates_max)
            keys = keys[: self.candidates_max]
        previous = {c.key: c for c in self.snapshot.candidates}
        current = {k: merged[k] for k in keys}
        self.snapshot = DiscoverySnapshot(
            candidates=tuple(current.values()),
            failing=tuple((describe(s), self._failing[s]) for s in self.sources if s in self._failing),
            polled_at=now,
        )
        return DiscoveryChange(
            added=tuple(c for k, c in current.items() if k not in previous),
            removed=tuple(c for k, c in previous.items() if k not in current),
            updated=tuple(c for k, c in current.items() if k in previous and previous[k] != c),
            snapshot=self.snapshot,
        )

    async def _resolve(self, source: DiscoverySource) -> list[Candidate]:
        if isinstance(source, StaticSource):
            return [Candidate(host=h, port=p) for h, p in source.seeds]
        if isinstance(source, DnsSource):
            return [Candidate(host=a, port=source.port) for a in await self._addresses(source.name)]
        if isinstance(source, SrvSource):
            return await self._resolve_srv(source)
        return await self._resolve_fly(source)

    async def _lookup(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            qname = dns.name.from_text(name)
            async with self._lookups:
                return await self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise LookupFailed(f"{name} {rdtype}: no such name") from None
        except dns.resolver.NoNameservers as exc:
            raise LookupFailed(f"{name} {rdtype}: server failure ({exc})") from None
        except dns.exception.Timeout:
            raise LookupFailed(f"{name} {rdtype}: no answer within {self._resolver.lifetime}s") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise LookupFailed(f"{name} {rdtype}: {type(exc).__name__}: {exc}") from None

    async def _addresses(self, name: str) -> list[str]:
        """A and AAAA together; if either lookup fails the whole answer is unusable (it may be partial)."""
        addresses: list[str] = []
        for outcome in await asyncio.gather(
            self._lookup(name, "A"), self._lookup(name, "AAAA"), return_exceptions=True
        ):
            if isinstance(outcome, BaseException):
                raise outcome
            addresses.extend(_ip(r.address) for r in outcome)
        return addresses[: self.candidates_max]

    async def _resolve_srv(self, source: SrvSource) -> list[Candidate]:
        """SRV targets with their ports; addresses from the reply's additional section, else looked up."""
        answer = await self._lookup(source.name, "SRV")
        glue: dict[dns.name.Name, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(rrset.name, []).extend(_ip(r.address) for r in rrset)
        records = [r for r in list(answer)[: self.candidates_max] if 0 < r.port < 65536]
        missing = [r.target for r in records if r.target not in glue]
        for target, outcome in zip(
            missing,
            await asyncio.gather(*(self._addresses(t.to_text()) for t in missing), return_exceptions=True),
            strict=True,
        ):
            if isinstance(outcome, LookupFailed):
                log.warning("discovery: %s: skipping a target: %s", source.name, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                glue[target] = outcome
        return [
            Candidate(host=a, port=r.port, machine_id=r.target.labels[0].decode("ascii", "replace") or None)
            for r in records
            for a in glue.get(r.target, ())
        ]

    async def _resolve_fly(self, source: FlySource) -> list[Candidate]:
        """AAAA of the app gives the addresses; TXT vms and `<id>.vm` names add machine ids and regions."""
        answer = await self._lookup(f"{source.app}.internal", "AAAA")
        addresses = [_ip(r.address) for r in answer][: self.candidates_max]
        previous = self._fly_machines.get(source.app, {})
        try:
            txt = await self._lookup(f"vms.{source.app}.internal", "TXT")
            listed = parse_vms_txt(_txt_text(txt, TXT_BYTES_MAX), self.candidates_max)
        except LookupFailed as exc:
            log.info("discovery: %s: no machine list, reusing the last: %s", describe(source), exc)
            listed = {m: region for m, (_, region) in previous.items()}
        # Only Machines that are new, or whose address left the AAAA set, cost a lookup.
        to_ask = [m for m in listed if m not in previous or previous[m][0] not in addresses]
        asked = await asyncio.gather(*(self._machine_address(source.app, m) for m in to_ask))
        located = {m: previous[m][0] for m in listed if m in previous and m not in to_ask}
        located.update({m: a for m, a in zip(to_ask, asked, strict=True) if a is not None})
        self._fly_machines[source.app] = {m: (a, listed[m]) for m, a in located.items()}
        owner = {a: m for m, a in located.items()}
        regions = {a: listed[m] for a, m in owner.items()}
        return [
            Candidate(host=a, port=source.port, machine_id=owner.get(a), region=regions.get(a))
            for a in addresses
        ]

    async def _machine_address(self, app: str, machine_id: str) -> str | None:
        """The 6PN address of one Machine; None when it cannot be told (it then stays unattributed)."""
        try:
            answer = await self._lookup(f"{machine_id}.vm.{app}.internal", "AAAA")
        except LookupFailed as exc:
            log.debug("discovery: fly:%s: machine %s: %s", app, machine_id, exc)
            return None
        return next((_ip(r.address) for r in answer), None)


def _txt_text(answer: dns.resolver.Answer, bytes_max: int) -> str:
    """Joins a TXT answer: the strings of one record are concatenated (DNS splits them at 255 bytes)."""
    records = [b"".join(r.strings) for r in answer]
    joined = b",".join(records)[:bytes_max]
    return joined.decode("ascii", "replace")


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _merge(a: Candidate, b: Candidate) -> Candidate:
    return replace(a, region=a.region or b.region, machine_id=a.machine_id or b.machine_id)


def _make_resolver(config: ResolverConfig) -> dns.asyncresolver.Resolver:
    try:
        resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
    except dns.resolver.NoResolverConfiguration as exc:
        raise DiscoveryConfigError(f"no system DNS configuration; give a resolver address ({exc})") from None
    if config.nameservers:
        resolver.nameservers = list(config.nameservers)
        resolver.port = config.port
    resolver.lifetime = config.lifetime_s
    resolver.timeout = config.lifetime_s
    resolver.cache = None
    return resolver


def split_resolver(spec: str) -> tuple[str, ResolverConfig | None]:
    """`fly:moe@[fdaa:0:18::3]:53` -> (`fly:moe`, that server): a spec may name the DNS server to ask."""
    body, at, server = spec.strip().rpartition("@")
    return (body, parse_resolver(server)) if at else (spec.strip(), None)


def build_discovery(
    spec: str | None,
    *,
    peers: str | Sequence[str] = (),
    peer_port: int = PEER_PORT_DEFAULT,
    interval_s: float = 5.0,
    env: Mapping[str, str] | None = None,
) -> Discovery | None:
    """From the node's settings (MOESWARM_DISCOVERY, MOESWARM_PEERS); None when neither is set.

    `env` (default: the process environment) supplies FLY_APP_NAME for the bare spec `fly`.
    """
    sources: list[DiscoverySource] = []
    resolver = None
    if spec and spec.strip() not in ("", "none"):
        body, resolver = split_resolver(spec)
        sources.append(
            parse_discovery_spec(body, peer_port=peer_port, env=os.environ if env is None else env)
        )
    seeds = peers if isinstance(peers, str) else ",".join(peers)
    if seeds.strip():
        sources.append(parse_seeds(seeds, peer_port))
    return Discovery(sources, resolver=resolver, interval_s=interval_s) if sources else None
