"""The peer transport on loopback: admission, verified delivery, bad input, blobs and reconnection."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import blake3
import pytest

from moeswarm.clocks import HLCTimestamp
from moeswarm.identity import Envelope, Identity, seal
from moeswarm.node import admission
from moeswarm.node.admission import ClusterKey
from moeswarm.node.blobs import BlobHashMismatch, BlobNotFound, BlobTooLarge
from moeswarm.node.handshake import CLOSE_DUPLICATE, CLOSE_POLICY, CLOSE_TOO_SLOW
from moeswarm.node.metrics import NodeMetrics
from moeswarm.node.pacing import Backoff, TokenBucket
from moeswarm.node.peer_link import Outgoing, PeerLink
from moeswarm.node.transport import PeerTransport, TransportLimits
from moeswarm.wire import decode_as, encode, message

KEY = "transport test cluster key 0123"
LIMITS = TransportLimits(backoff_base_s=0.02, backoff_max_s=0.3, handshake_timeout_s=5.0, heartbeat_s=5.0,
                         strikes_max=4, frame_bytes_max=64 * 1024)
WAIT_S = 15.0
_seq = itertools.count(1)  # one counter, so a restarted sender's seqs keep increasing as a real node's do


@message("test.transport_note", max_bytes=128 * 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    text: str


def ident(n: int) -> Identity:
    return Identity.generate(bytes([n]) * 32)


def sealed(identity: Identity, text: str) -> bytes:
    return seal(identity, Note(text=text), epoch=0, seq=next(_seq), hlc=HLCTimestamp(physical_ms=int(time.time() * 1000)))


class Node:
    """A transport plus what it delivered."""

    def __init__(self, n: int, *, key: str = KEY, port: int = 0, limits: TransportLimits = LIMITS) -> None:
        self.identity = ident(n)
        self.inbox: asyncio.Queue[tuple[str, Envelope]] = asyncio.Queue()
        self.blobs: dict[str, bytes] = {}
        self.transport = PeerTransport(self.identity, key, "127.0.0.1", port, self._deliver, self.blobs.get,
                                       limits=limits, rng=random.Random(n))

    async def _deliver(self, sender: str, envelope: Envelope) -> None:
        await self.inbox.put((sender, envelope))

    @property
    def id(self) -> str:
        return self.identity.node_id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.transport.port}"

    async def receive(self) -> tuple[str, str]:
        async with asyncio.timeout(WAIT_S):
            sender, envelope = await self.inbox.get()
        note = envelope.message()
        assert isinstance(note, Note)
        return sender, note.text

    def rejected(self, reason: str) -> float:
        return self.transport.metrics.value("moeswarm_messages_rejected_total", {"reason": reason})


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - the conditions are metric values, with no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., Any]]:
    started: list[Node] = []

    async def start(n: int, **kwargs: Any) -> Node:
        node = Node(n, **kwargs)
        await node.transport.start()
        started.append(node)
        return node

    yield start
    for node in started:
        await node.transport.stop()


async def admitted_client(session: aiohttp.ClientSession, node: Node, identity: Identity,
                          key: str = KEY) -> aiohttp.ClientWebSocketResponse:
    """A hand-driven dialer: runs the handshake itself, then lets a test send arbitrary frames."""
    cluster = ClusterKey(key)
    ws = await session.ws_connect(f"http://{node.address}/peer", max_msg_size=0)
    challenge = admission.new_challenge()
    await ws.send_bytes(encode(admission.hello(identity, challenge, b"r" * 16, 0)))
    reply = decode_as(await ws.receive_bytes(), admission.Reply)
    _, finish = admission.finish(cluster, identity, reply, challenge)
    await ws.send_bytes(encode(finish))
    decode_as(await ws.receive_bytes(), admission.Welcome)
    return ws


async def test_three_nodes_connect_by_node_id_and_exchange_messages(nodes: Callable[..., Any]) -> None:
    a, b, c = await nodes(1), await nodes(2), await nodes(3)
    b.transport.connect(a.address)
    c.transport.connect(a.address)
    c.transport.connect(b.address)
    await eventually(lambda: a.transport.connected_peers() == sorted([b.id, c.id]))
    await eventually(lambda: b.id in c.transport.connected_peers())
    assert await a.transport.broadcast(sealed(a.identity, "hello all"), kind="note") == 2
    assert await b.receive() == (a.id, "hello all")
    assert await c.receive() == (a.id, "hello all")
    assert await c.transport.send(b.id, sealed(c.identity, "c to b"))
    assert await b.receive() == (c.id, "c to b")
    assert await b.transport.send(a.id, sealed(b.identity, "b to a"))
    assert await a.receive() == (b.id, "b to a")
    assert a.transport.metrics.value("moeswarm_peers_connected") == 2
    assert a.transport.metrics.value("moeswarm_messages_sent_total", {"kind": "note"}) == 2
    assert a.transport.metrics.value("moeswarm_messages_received_total", {"kind": "test.transport_note"}) == 1
    assert {row["node_id"] for row in a.transport.peer_table()} == {b.id, c.id}


async def test_wrong_cluster_key_is_refused_both_ways(nodes: Callable[..., Any],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    a = await nodes(1)
    stranger = await nodes(9, key="not the swarm's key at all")
    with caplog.at_level(logging.INFO, logger="moeswarm.node.transport"):
        stranger.transport.connect(a.address)  # the stranger dials: it cannot verify a, and hangs up
        a.transport.connect(stranger.address)  # a dials the stranger: a refuses the stranger's proof
        await eventually(lambda: a.transport.metrics.value(
            "moeswarm_admissions_refused_total", {"reason": "bad_cluster_signature"}) >= 1)
        await eventually(lambda: a.transport.metrics.value(
            "moeswarm_admissions_refused_total", {"reason": "abandoned"}) >= 1)
    assert a.transport.connected_peers() == []
    assert stranger.transport.connected_peers() == []
    assert "127.0.0.1" in caplog.text


async def test_a_dialer_with_a_forged_proof_is_refused_and_logged(nodes: Callable[..., Any],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    a = await nodes(1)
    intruder = ident(8)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S):
        ws = await session.ws_connect(f"http://{a.address}/peer")
        await ws.send_bytes(encode(admission.hello(intruder, admission.new_challenge(), b"i" * 16, 0)))
        reply = decode_as(await ws.receive_bytes(), admission.Reply)
        forged = admission.make_proof(ClusterKey("guessed cluster key 000"), intruder, a.id, reply.challenge)
        with caplog.at_level(logging.WARNING, logger="moeswarm.node.transport"):
            await ws.send_bytes(encode(admission.Finish(proof=forged)))
            msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == CLOSE_POLICY
    assert "admission refused for 127.0.0.1: bad_cluster_signature" in caplog.text
    assert a.transport.connected_peers() == []


async def test_garbage_and_bad_signatures_are_rejected_while_serving(nodes: Callable[..., Any],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    a = await nodes(1)
    peer, other = ident(5), ident(6)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S):
        ws = await admitted_client(session, a, peer)
        await eventually(lambda: peer.node_id in a.transport.connected_peers())
        good = sealed(peer, "still here")
        tampered = bytearray(sealed(peer, "forged"))
        tampered[-1] ^= 0xFF
        with caplog.at_level(logging.WARNING, logger="moeswarm.node.transport"):
            await ws.send_bytes(b"\xc1 not msgpack at all")
            await ws.send_bytes(bytes(tampered))
            await ws.send_bytes(sealed(other, "signed by someone else"))
            await ws.send_bytes(good)
            assert await a.receive() == (peer.node_id, "still here")
            await ws.send_bytes(good)  # the same envelope again: a replay
            await eventually(lambda: a.rejected("replayed") == 1)
    assert a.rejected("malformed") == 1
    assert a.rejected("bad_signature") == 1
    assert a.rejected("sender_mismatch") == 1
    assert a.inbox.empty()
    assert f"peer {peer.node_id[:12]} at 127.0.0.1" in caplog.text
    assert "bad_signature" in caplog.text


async def test_too_many_strikes_disconnect_the_peer(nodes: Callable[..., Any]) -> None:
    a = await nodes(1)
    peer = ident(5)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S):
        ws = await admitted_client(session, a, peer)
        for _ in range(LIMITS.strikes_max):
            await ws.send_bytes(b"garbage")
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == CLOSE_POLICY
        await eventually(lambda: a.transport.connected_peers() == [])
        ws = await admitted_client(session, a, peer)  # it may come back and behave
        await ws.send_bytes(sealed(peer, "behaving"))
        assert await a.receive() == (peer.node_id, "behaving")


async def test_oversize_frame_closes_that_connection_only(nodes: Callable[..., Any]) -> None:
    a = await nodes(1)
    big, small = ident(5), ident(6)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S):
        ws_small = await admitted_client(session, a, small)
        ws_big = await admitted_client(session, a, big)
        await ws_big.send_bytes(b"x" * (LIMITS.frame_bytes_max + 1))
        msg = await ws_big.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws_big.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await eventually(lambda: a.rejected("oversize") == 1)
        await ws_small.send_bytes(sealed(small, "unaffected"))
        assert await a.receive() == (small.node_id, "unaffected")
    with pytest.raises(ValueError, match="frame_bytes_max"):
        await a.transport.send(small.node_id, b"x" * (LIMITS.frame_bytes_max + 1))


async def test_blob_fetch_verifies_the_hash(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(1), await nodes(2)
    blob = bytes(range(256)) * 4000  # ~1 MB, several chunks
    blob_id = blake3.blake3(blob).hexdigest()
    a.blobs[blob_id] = blob
    b.transport.connect(a.address)
    await eventually(lambda: a.id in b.transport.connected_peers())
    assert await b.transport.fetch_blob(a.id, blob_id, size_max=len(blob)) == blob
    assert await b.transport.fetch_blob(a.address, blob_id, size_max=len(blob)) == blob
    assert b.transport.metrics.value("moeswarm_bytes_received_total", {"kind": "blob"}) == 2 * len(blob)
    assert a.transport.metrics.value("moeswarm_blobs_served_total") == 2
    with pytest.raises(BlobTooLarge):
        await b.transport.fetch_blob(a.id, blob_id, size_max=len(blob) - 1)
    missing = blake3.blake3(b"absent").hexdigest()
    with pytest.raises(BlobNotFound):
        await b.transport.fetch_blob(a.id, missing, size_max=100)
    a.blobs[missing] = b"tampered bytes"
    with pytest.raises(BlobHashMismatch):
        await b.transport.fetch_blob(a.id, missing, size_max=100)
    assert b.transport.metrics.value("moeswarm_blob_fetch_failures_total", {"reason": "hash_mismatch"}) == 1


async def test_blob_http_needs_a_member_token_and_a_well_formed_id(nodes: Callable[..., Any]) -> None:
    a = await nodes(1)
    blob_id = blake3.blake3(b"x").hexdigest()
    a.blobs[blob_id] = b"x"
    token = {"Authorization": f"Bearer {ClusterKey(KEY).blob_token}"}
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S):
        resp = await session.get(f"http://{a.address}/blobs/{blob_id}")
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
        resp = await session.get(f"http://{a.address}/blobs/not-a-hash", headers=token)
        assert resp.status == 400
        assert (await resp.json())["error"] == "bad_blob_id"
        resp = await session.get(f"http://{a.address}/blobs/{'0' * 64}", headers=token)
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
        resp = await session.get(f"http://{a.address}/elsewhere")
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"


async def test_reconnects_after_the_peer_restarts(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(1), await nodes(2)
    b.transport.connect(a.address)
    await eventually(lambda: a.id in b.transport.connected_peers())
    port = a.transport.port
    await a.transport.stop()
    await eventually(lambda: b.transport.connected_peers() == [])
    a2 = await nodes(1, port=port)  # same key, same address, new process incarnation
    await eventually(lambda: a2.id in b.transport.connected_peers())
    assert await a2.transport.send(b.id, sealed(a2.identity, "back"))
    assert await b.receive() == (a2.id, "back")
    assert b.transport.metrics.value("moeswarm_reconnects_total") >= 1


async def test_a_peer_back_with_a_new_address_replaces_its_old_connection(nodes: Callable[..., Any]) -> None:
    a = await nodes(1)
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S):
        old = await admitted_client(session, a, ident(2))  # node 2's previous process, still half-open
        await eventually(lambda: a.transport.connected_peers() == [ident(2).node_id])
        b = await nodes(2)  # node 2 again: new process, new port, same key
        b.transport.connect(a.address)
        msg = await old.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert old.close_code == CLOSE_DUPLICATE
    assert [row["blob_address"] for row in a.transport.peer_table()] == [b.address]
    assert await a.transport.send(b.id, sealed(a.identity, "to the new one"))
    assert await b.receive() == (a.id, "to the new one")


async def test_simultaneous_dials_settle_on_one_connection(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(1), await nodes(2)
    a.transport.connect(b.address)
    b.transport.connect(a.address)
    await eventually(lambda: a.transport.connected_peers() == [b.id] and b.transport.connected_peers() == [a.id])
    for i in range(5):
        assert await a.transport.send(b.id, sealed(a.identity, f"a{i}"))
        assert await b.transport.send(a.id, sealed(b.identity, f"b{i}"))
    assert [await b.receive() for _ in range(5)] == [(a.id, f"a{i}") for i in range(5)]
    assert [await a.receive() for _ in range(5)] == [(b.id, f"b{i}") for i in range(5)]


async def test_own_address_is_ignored_and_absent_peers_drop(nodes: Callable[..., Any]) -> None:
    a = await nodes(1)
    a.transport.connect(a.address)
    await eventually(lambda: a.transport.dialing() == [])
    assert a.transport.connected_peers() == []
    assert not await a.transport.send(ident(7).node_id, sealed(a.identity, "nobody"))
    assert a.transport.metrics.value("moeswarm_messages_dropped_total", {"reason": "not_connected"}) == 1


class StuckSocket:
    """A WebSocket whose peer never reads: the first send blocks until released."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.release = asyncio.Event()
        self.closed = False
        self.close_code: int | None = None

    async def send_bytes(self, data: bytes) -> None:
        await self.release.wait()
        self.sent.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed, self.close_code = True, code
        return True


def stuck_link(queue_max: int, block_s: float) -> tuple[PeerLink, StuckSocket, NodeMetrics]:
    ws, metrics = StuckSocket(), NodeMetrics()
    link = PeerLink(peer_id="ab" * 32, ws=ws, remote="test", dialed=True, incarnation=b"i" * 16, blob_address=None,  # type: ignore[arg-type]
                    queue_messages_max=queue_max, send_block_timeout_s=block_s,
                    bucket=TokenBucket(10, 10, 0.0), metrics=metrics)
    link.start()
    return link, ws, metrics


async def test_gossip_drops_the_oldest_gossip_when_the_queue_is_full() -> None:
    link, _, metrics = stuck_link(queue_max=3, block_s=5.0)
    assert await link.enqueue(Outgoing(b"c0", "consensus", False))
    await asyncio.sleep(0)  # the writer takes c0 and blocks on the stuck socket
    for item in (Outgoing(b"c1", "consensus", False), Outgoing(b"g1", "gossip", True),
                 Outgoing(b"g2", "gossip", True), Outgoing(b"g3", "gossip", True)):
        assert await link.enqueue(item)
    assert [o.payload for o in link.take_queue()] == [b"c1", b"g2", b"g3"]  # g1, the oldest gossip, went
    assert metrics.value("moeswarm_messages_dropped_total", {"reason": "queue_full"}) == 1
    await link.close(None, "")


async def test_consensus_waits_for_room_then_disconnects_a_peer_too_slow() -> None:
    link, ws, metrics = stuck_link(queue_max=2, block_s=0.2)
    for payload in (b"c0", b"c1", b"c2"):
        assert await link.enqueue(Outgoing(payload, "consensus", False))
        await asyncio.sleep(0)
    waiting = asyncio.ensure_future(link.enqueue(Outgoing(b"c3", "consensus", False)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # back-pressure: the caller waits while the queue is full
    ws.release.set()  # the peer reads again: room appears and the waiting message goes out
    async with asyncio.timeout(WAIT_S):
        assert await waiting
        await eventually(lambda: len(ws.sent) == 4)
    assert ws.sent == [b"c0", b"c1", b"c2", b"c3"]
    ws.release.clear()
    for payload in (b"d0", b"d1", b"d2"):
        await link.enqueue(Outgoing(payload, "consensus", False))
        await asyncio.sleep(0)
    async with asyncio.timeout(WAIT_S):
        assert not await link.enqueue(Outgoing(b"d3", "consensus", False))
        await eventually(lambda: link.closed.is_set())
    assert ws.close_code == CLOSE_TOO_SLOW
    assert metrics.value("moeswarm_messages_dropped_total", {"reason": "peer_too_slow"}) == 1


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)  # one token back after 1/rate seconds
    assert not bucket.take(0.1)
    assert not bucket.take(0.05)  # a clock going backwards refills nothing
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never above the burst


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff, rng = Backoff(base_s=0.5, max_s=8.0), random.Random(7)
    delays = [backoff.delay_s(attempt, rng) for attempt in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    replay_rng = random.Random(7)
    assert delays == [backoff.delay_s(attempt, replay_rng) for attempt in range(10)]  # same seed, same delays
    assert len({round(d, 6) for d in delays[5:]}) > 1  # capped delays still differ: jitter
