"""A hand-driven peer for end-to-end tests: it speaks to a real node's peer port byte by byte.

`send_unadmitted` talks without the handshake (what any stranger on the network can do);
`send_admitted` first passes admission with the swarm's cluster key (what an insider with a broken or
malicious implementation can do) and then sends raw frames as that peer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

import aiohttp

from moeswarm import wire
from moeswarm.clocks import HLCTimestamp
from moeswarm.identity import Identity, seal
from moeswarm.node import handshake
from moeswarm.node.admission import INCARNATION_BYTES, ClusterKey

HANDSHAKE_TIMEOUT_S = 10.0
LINGER_S = 1.0  # keep the socket open a moment so the node reads every frame before we hang up


def sealed(identity: Identity, msg: object) -> bytes:
    """A correctly signed envelope from `identity`."""
    return seal(identity, msg, epoch=0, seq=time.time_ns() // 1000,
                hlc=HLCTimestamp(physical_ms=int(time.time() * 1000)))


def with_bad_signature(envelope: bytes) -> bytes:
    """The same envelope with one bit of its Ed25519 signature flipped."""
    header, sig = wire.unpack_plain(envelope, max_bytes=len(envelope))
    broken = bytes([sig[0] ^ 0x01]) + sig[1:]
    return wire.pack_plain([header, broken])


async def _send_unadmitted(port: int, frames: Sequence[bytes]) -> int | None:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/peer") as ws:
        for frame in frames:
            await ws.send_bytes(frame)
        msg = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        return ws.close_code if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) else None


def send_unadmitted(port: int, frames: Sequence[bytes]) -> int | None:
    """Send frames before any handshake; returns the close code the node answered with."""
    return asyncio.run(_send_unadmitted(port, frames))


async def _send_admitted(port: int, cluster_key: str, identity: Identity, frames: Sequence[bytes]) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/peer") as ws:
        _, node_id = await handshake.dial(ws, ClusterKey(cluster_key), identity, os.urandom(INCARNATION_BYTES),
                                          0, os.urandom, HANDSHAKE_TIMEOUT_S)
        for frame in frames:
            await ws.send_bytes(frame)
        await asyncio.sleep(LINGER_S)
        return node_id


def send_admitted(port: int, cluster_key: str, identity: Identity, frames: Sequence[bytes]) -> str:
    """Pass admission as `identity`, then send raw frames; returns the node id the node proved."""
    return asyncio.run(_send_admitted(port, cluster_key, identity, frames))
