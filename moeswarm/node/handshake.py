"""The admission handshake carried over a fresh WebSocket (the pure steps are in `admission.py`).

dialer                                   acceptor
  Hello(id, challenge_d, incarnation) ->
                                      <- Reply(challenge_a, incarnation, proof over challenge_d)
  Finish(proof over challenge_a)      ->
                                      <- Welcome          (or close 1008 with the reason)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import web

from moeswarm.node import admission
from moeswarm.node.admission import ClusterKey, NodeSigner
from moeswarm.wire import WireError, decode_as, encode

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # admission refused, too many invalid frames
CLOSE_TRY_LATER = 1013  # the peer table is full
CLOSE_SELF = 4004  # the dialer reached its own node
CLOSE_DUPLICATE = 4009  # another connection to the same peer won
CLOSE_TOO_SLOW = 4013  # the peer's send queue stayed full, or a send failed

Link = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class HandshakeClosed(Exception):
    """The other side closed the socket during the handshake; `code` and its reason say why."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed (code {code}{': ' + reason if reason else ''})")
        self.code = code


class SelfAddress(Exception):
    """The address we dialed is served by this very node."""


async def receive_binary(ws: Link) -> bytes:
    msg = await ws.receive()
    if msg.type == aiohttp.WSMsgType.BINARY:
        return bytes(msg.data)
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise HandshakeClosed(ws.close_code, str(msg.extra or "")[:120])
    raise WireError(f"expected a binary handshake frame, got {msg.type.name}")


async def accept(ws: web.WebSocketResponse, cluster: ClusterKey, node: NodeSigner, incarnation: bytes,
                 listen_port: int, random_bytes: Callable[[int], bytes],
                 timeout_s: float) -> tuple[admission.Hello, str]:
    """Run the acceptor's side; returns the dialer's Hello and its proven node id.

    Raises AdmissionError, WireError, TimeoutError or HandshakeClosed; the caller refuses and logs.
    """
    async with asyncio.timeout(timeout_s):
        hello = decode_as(await receive_binary(ws), admission.Hello)
        challenge = admission.new_challenge(random_bytes)
        reply = admission.reply(cluster, node, hello, challenge, incarnation, listen_port)
        await ws.send_bytes(encode(reply))
        finish = decode_as(await receive_binary(ws), admission.Finish)
        return hello, admission.admit(cluster, node, hello, finish, challenge)


async def dial(ws: aiohttp.ClientWebSocketResponse, cluster: ClusterKey, node: NodeSigner, incarnation: bytes,
               listen_port: int, random_bytes: Callable[[int], bytes],
               timeout_s: float) -> tuple[admission.Reply, str]:
    """Run the dialer's side; returns the acceptor's Reply and its proven node id once welcomed."""
    async with asyncio.timeout(timeout_s):
        challenge = admission.new_challenge(random_bytes)
        await ws.send_bytes(encode(admission.hello(node, challenge, incarnation, listen_port)))
        try:
            reply = decode_as(await receive_binary(ws), admission.Reply)
        except HandshakeClosed as exc:
            if exc.code == CLOSE_SELF:
                raise SelfAddress() from None
            raise
        peer_id, finish = admission.finish(cluster, node, reply, challenge)
        await ws.send_bytes(encode(finish))
        decode_as(await receive_binary(ws), admission.Welcome)
        return reply, peer_id
