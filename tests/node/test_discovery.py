"""Discovery against a real dnsmasq serving Fly-shaped and Kubernetes-shaped records on a loopback port."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import dns.message
import dns.rcode
import pytest

from moeswarm.node.discovery import (
    Candidate,
    Discovery,
    DiscoveryConfigError,
    DnsSource,
    FlySource,
    ResolverConfig,
    SrvSource,
    StaticSource,
    build_discovery,
    parse_discovery_spec,
    parse_hostport,
    parse_resolver,
    parse_vms_txt,
)
from tests.deploy.dnsmasq import Dnsmasq, Zone, dnsmasq_binary, dnsmasq_for_test, free_port

APP = "moe"
SVC = "moe-peer.train.svc.cluster.local"
SRV_NAME = f"_peer._tcp.{SVC}"
LIFETIME_S = 0.4  # per lookup: keeps the no-answer cases short


def fly_zone(machines: dict[str, tuple[str, str]], app: str = APP) -> Zone:
    """Fly's 6PN DNS for an app: machine id -> (6PN address, region)."""
    hosts = [(addr, f"{app}.internal") for addr, _ in machines.values()]
    hosts += [(addr, f"{mid}.vm.{app}.internal") for mid, (addr, _) in machines.items()]
    vms = ",".join(f"{mid} {region}" for mid, (_, region) in machines.items())
    return Zone(hosts=hosts, txt=[(f"vms.{app}.internal", vms)] if machines else [])


def k8s_zone(pods: dict[str, str]) -> Zone:
    """A StatefulSet behind a headless Service: pod name -> pod IP, SRV `_peer._tcp` per pod."""
    hosts = [(ip, f"{pod}.{SVC}") for pod, ip in pods.items()] + [(ip, SVC) for ip in pods.values()]
    return Zone(hosts=hosts, srv=[(SRV_NAME, f"{pod}.{SVC}", 7000) for pod in pods])


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    yield from dnsmasq_for_test(tmp_path)


def resolver_for(server: Dnsmasq) -> ResolverConfig:
    return ResolverConfig(nameservers=("127.0.0.1",), port=server.port, lifetime_s=LIFETIME_S)


def failure(discovery: Discovery) -> str:
    """The one failing source and why, without the server's own words after the reason."""
    [(source, reason)] = discovery.snapshot.failing
    return f"{source}: {reason.split(' (')[0]}"


def hostports(discovery: Discovery) -> set[str]:
    return {c.hostport for c in discovery.snapshot.candidates}


M1 = ("e784079b449483", "fdaa:0:1a2b:a7b:1c2:4d1f:6a1b:2", "iad")
M2 = ("4d891de2f66587", "fdaa:0:1a2b:a7b:2d3:9e0c:5b2a:2", "ord")
M3 = ("91857e3c1d4e68", "fdaa:0:1a2b:a7b:3e4:2f1d:4c3b:2", "ams")


def machines(*ms: tuple[str, str, str]) -> dict[str, tuple[str, str]]:
    return {mid: (addr, region) for mid, addr, region in ms}


async def test_fly_machines_found_with_region_and_machine_id(dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(fly_zone(machines(M1, M2)))
    discovery = Discovery([FlySource(app=APP, port=7000)], resolver=resolver_for(dnsmasq))
    change = await discovery.poll_once()
    assert {(c.host, c.port, c.region, c.machine_id) for c in change.added} == {
        (M1[1], 7000, "iad", M1[0]),
        (M2[1], 7000, "ord", M2[0]),
    }
    assert hostports(discovery) == {f"[{M1[1]}]:7000", f"[{M2[1]}]:7000"}
    assert discovery.snapshot.failing == ()


async def test_fly_follows_machines_added_removed_and_moved(dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(fly_zone(machines(M1, M2)))
    discovery = Discovery([FlySource(app=APP)], resolver=resolver_for(dnsmasq))
    await discovery.poll_once()

    dnsmasq.restart(fly_zone(machines(M1, M2, M3)))  # `fly scale count 3`: new TXT, new AAAA
    change = await discovery.poll_once()
    assert [(c.host, c.region, c.machine_id) for c in change.added] == [(M3[1], "ams", M3[0])]
    assert change.removed == ()
    assert change.updated == ()

    dnsmasq.restart(fly_zone(machines(M2, M3)))  # scale down: M1 is destroyed
    change = await discovery.poll_once()
    assert [c.machine_id for c in change.removed] == [M1[0]]
    assert change.added == ()

    # M2 restarts on another host: its 6PN address changes while dnsmasq keeps running.
    moved = (M2[0], "fdaa:0:1a2b:a7b:9f9:1111:2222:2", M2[2])
    dnsmasq.set_hosts(fly_zone(machines(moved, M3)).hosts)
    change = await discovery.poll_once()
    assert [(c.host, c.machine_id, c.region) for c in change.added] == [(moved[1], M2[0], "ord")]
    assert [c.host for c in change.removed] == [M2[1]]

    assert not await discovery.poll_once()  # nothing changed: no event


async def test_fly_machine_list_longer_than_one_txt_string(dnsmasq: Dnsmasq) -> None:
    """More than 255 bytes of "id region" pairs: DNS splits the TXT value, discovery joins it back."""
    many = [(f"{i:014x}", f"fdaa:0:1a2b:a7b:{i:x}::2", "iad") for i in range(1, 25)]
    dnsmasq.start(fly_zone(machines(*many)))
    discovery = Discovery([FlySource(app=APP)], resolver=resolver_for(dnsmasq))
    await discovery.poll_once()
    assert {(c.machine_id, c.host) for c in discovery.snapshot.candidates} == {(m, a) for m, a, _ in many}


async def test_kubernetes_srv_and_headless_service(dnsmasq: Dnsmasq) -> None:
    pods = {"moe-0": "10.8.0.10", "moe-1": "10.8.1.11", "moe-2": "10.8.2.12"}
    zone = k8s_zone(pods)
    zone.srv.append((SRV_NAME, f"moe-9.{SVC}", 7000))  # a pod whose address DNS does not know (yet)
    dnsmasq.start(zone)
    srv = Discovery([SrvSource(name=SRV_NAME)], resolver=resolver_for(dnsmasq))
    change = await srv.poll_once()
    assert {(c.machine_id, c.host, c.port) for c in change.added} == {(p, ip, 7000) for p, ip in pods.items()}

    headless = Discovery([DnsSource(name=SVC, port=7000)], resolver=resolver_for(dnsmasq))
    assert hostports(headless) == set()
    await headless.poll_once()
    assert hostports(headless) == {f"{ip}:7000" for ip in pods.values()}

    dnsmasq.restart(k8s_zone({**pods, "moe-3": "10.8.3.13"}))  # kubectl scale statefulset moe --replicas=4
    change = await srv.poll_once()
    assert [(c.machine_id, c.host) for c in change.added] == [("moe-3", "10.8.3.13")]
    dnsmasq.restart(k8s_zone({"moe-0": "10.8.0.10", "moe-1": "10.8.1.11"}))
    change = await srv.poll_once()
    assert sorted(c.machine_id or "" for c in change.removed) == ["moe-2", "moe-3"]


class ServfailServer(asyncio.DatagramProtocol):
    """A DNS server that answers every query with SERVFAIL."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = dns.message.make_response(dns.message.from_wire(data))
        reply.set_rcode(dns.rcode.SERVFAIL)
        self.transport.sendto(reply.to_wire(), addr)


@pytest.fixture
async def servfail_port() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(ServfailServer, local_addr=("127.0.0.1", 0))
    yield int(transport.get_extra_info("sockname")[1])
    transport.close()


async def test_keeps_last_good_snapshot_through_servfail_silence_and_nxdomain(
    dnsmasq: Dnsmasq, servfail_port: int
) -> None:
    seed = StaticSource(seeds=(("gpu-1.example.net", 7000),))
    dnsmasq.start(fly_zone(machines(M1, M2)))
    discovery = Discovery([FlySource(app=APP), seed], resolver=resolver_for(dnsmasq))
    await discovery.poll_once()
    good = discovery.snapshot.candidates
    assert len(good) == 3

    # dnsmasq answers SERVFAIL: its upstream for .internal fails.
    dnsmasq.restart(Zone(forward=[("internal", f"127.0.0.1#{servfail_port}")]))
    change = await discovery.poll_once()
    assert not change
    assert discovery.snapshot.candidates == good
    assert failure(discovery) == f"fly:{APP}: {APP}.internal AAAA: server failure"

    # dnsmasq never answers: its upstream is a dead port.
    dnsmasq.restart(Zone(forward=[("internal", f"127.0.0.1#{free_port()}")]))
    assert not await discovery.poll_once()
    assert discovery.snapshot.candidates == good
    assert failure(discovery) == f"fly:{APP}: {APP}.internal AAAA: no answer within {LIFETIME_S}s"

    # No DNS server at all: a UDP socket on the port that reads nothing.
    dnsmasq.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", dnsmasq.port))
        assert not await discovery.poll_once()
    assert discovery.snapshot.candidates == good
    assert failure(discovery).endswith(f"no answer within {LIFETIME_S}s")

    # The app's names vanish (NXDOMAIN): a glitch, not proof that the swarm is gone.
    dnsmasq.restart(Zone())
    assert not await discovery.poll_once()
    assert discovery.snapshot.candidates == good
    assert failure(discovery) == f"fly:{APP}: {APP}.internal AAAA: no such name"

    dnsmasq.restart(fly_zone(machines(M2, M3)))  # healthy again, and the swarm changed meanwhile
    change = await discovery.poll_once()
    assert [c.machine_id for c in change.added] == [M3[0]]
    assert [c.machine_id for c in change.removed] == [M1[0]]
    assert discovery.snapshot.failing == ()


async def test_a_source_that_never_answered_yields_nothing_and_others_still_count(dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(Zone())
    seed = StaticSource(seeds=(("fdaa:0:1a2b::5", 7000),))
    discovery = Discovery([SrvSource(name=SRV_NAME), seed], resolver=resolver_for(dnsmasq))
    change = await discovery.poll_once()
    assert [c.hostport for c in change.added] == ["[fdaa:0:1a2b::5]:7000"]
    assert failure(discovery) == f"srv:{SRV_NAME}: {SRV_NAME} SRV: no such name"


async def test_watch_yields_the_first_snapshot_then_changes(dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(fly_zone(machines(M1)))
    discovery = Discovery([FlySource(app=APP)], resolver=resolver_for(dnsmasq), interval_s=0.05)
    seen: list[set[str | None]] = []
    async with asyncio.timeout(10):
        async for change in discovery.watch():
            seen.append({c.machine_id for c in change.added})
            if len(seen) == 1:
                dnsmasq.set_hosts(fly_zone(machines(M1, M2)).hosts)  # M2's address, TXT not yet
            else:
                break
    assert seen == [{M1[0]}, {None}]  # M2 is dialable before the machine list names it


def test_dnsmasq_helper_leaves_no_process(tmp_path: Path) -> None:
    binary = dnsmasq_binary()
    if binary is None:
        pytest.skip("dnsmasq is not installed")
    server = Dnsmasq(tmp_path, binary)
    server.start(Zone())
    pid = server._proc.pid if server._proc else 0
    server.stop()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fly:moe-swarm", FlySource(app="moe-swarm", port=7100)),
        ("fly", FlySource(app="from-env", port=7100)),
        (
            "dns:moe-peer.train.svc.cluster.local",
            DnsSource(name="moe-peer.train.svc.cluster.local", port=7100),
        ),
        ("dns:gpu-a._peer.internal:7000", DnsSource(name="gpu-a._peer.internal", port=7000)),
        (
            "srv:_peer._tcp.moe.default.svc.cluster.local",
            SrvSource(name="_peer._tcp.moe.default.svc.cluster.local"),
        ),
        (
            "static:10.0.0.1:7000,[fdaa:0:0:0::7]:7001,gpu.example.net",
            StaticSource(seeds=(("10.0.0.1", 7000), ("fdaa::7", 7001), ("gpu.example.net", 7100))),
        ),
    ],
)
def test_discovery_specs(spec: str, expected: object) -> None:
    assert parse_discovery_spec(spec, peer_port=7100, env={"FLY_APP_NAME": "from-env"}) == expected


@pytest.mark.parametrize(
    "spec", ["fly", "fly:Bad_App", "dns:", "srv:has space", "static:", "static:h:0", "consul:x", "dns:[::1"]
)
def test_bad_discovery_specs_are_refused_with_a_message(spec: str) -> None:
    with pytest.raises(DiscoveryConfigError):
        parse_discovery_spec(spec, env={})


def test_addresses_and_urls() -> None:
    assert parse_hostport("fdaa::3", 53) == ("fdaa::3", 53)
    assert parse_hostport("[fdaa:0:18::3]:5353", 53) == ("fdaa:0:18::3", 5353)
    assert parse_hostport("127.0.0.1:5353", 53) == ("127.0.0.1", 5353)
    v6 = Candidate(host="fdaa::1", port=7000)
    assert v6.hostport == "[fdaa::1]:7000"
    assert v6.url("/v1/status") == "http://[fdaa::1]:7000/v1/status"
    assert Candidate(host="fe80::1%eth0", port=7001).url() == "http://[fe80::1%25eth0]:7001/"
    assert Candidate(host="10.0.0.5", port=7000).hostport == "10.0.0.5:7000"
    with pytest.raises(ValueError, match="port"):
        Candidate(host="10.0.0.5", port=0)


def test_resolver_and_node_settings() -> None:
    assert parse_resolver("system") == ResolverConfig()
    assert parse_resolver("[fdaa:0:18::3]:53").nameservers == ("fdaa:0:18::3",)
    with pytest.raises(DiscoveryConfigError, match="IP address"):
        parse_resolver("dns.example.net")
    on_fly = build_discovery("fly", peers=("[fdaa:0:18:a7b:d6b:0:a:2]:7000",), env={"FLY_APP_NAME": "moe"})
    assert on_fly is not None
    assert on_fly.sources == (FlySource(app="moe"), StaticSource(seeds=(("fdaa:0:18:a7b:d6b:0:a:2", 7000),)))
    assert on_fly.resolver_config.nameservers == ("fdaa::3",)
    wireguard_peer = build_discovery("fly:moe@[fdaa:0:18::3]", peer_port=7100)
    assert wireguard_peer is not None
    assert wireguard_peer.sources == (FlySource(app="moe", port=7100),)
    assert wireguard_peer.resolver_config == ResolverConfig(nameservers=("fdaa:0:18::3",), port=53)
    k8s = build_discovery(f"srv:{SRV_NAME}@10.96.0.10:53")
    assert k8s is not None
    assert k8s.resolver_config.nameservers == ("10.96.0.10",)
    assert build_discovery(None) is None
    assert build_discovery("none", peers="") is None


def test_vms_txt_parsing_skips_malformed_pairs() -> None:
    text = "e784079b449483 iad, 4d891de2f66587 ord,garbage,a b c,,UPPER iad"
    assert parse_vms_txt(text) == {"e784079b449483": "iad", "4d891de2f66587": "ord"}
    assert len(parse_vms_txt(",".join(f"{i:014x} iad" for i in range(50)), machines_max=10)) == 10
