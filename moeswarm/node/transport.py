"""The peer transport: one aiohttp server on the peer port, one WebSocket per admitted peer, and blobs.

- `GET /peer` upgrades to a WebSocket. Before anything else both sides run the mutual admission
  handshake (`admission.py`); a peer that fails it is refused with close code 1008 and logged with its
  address. Peers are keyed by the node id proven there, not by IP: addresses change when machines restart.
- After admission each binary frame is one sealed envelope (`identity.seal`). The transport checks the
  frame size and the peer's rate (token bucket), then opens the envelope (signature, replay window) and
  checks that its sender is the admitted peer, so nothing unverified goes further than this module:
  `on_message(sender_node_id, envelope)` only ever sees verified envelopes.
- A frame that fails those checks is dropped, counted in `messages_rejected{reason}` and logged; the
  connection keeps serving. After `strikes_max` such frames the peer is disconnected (close code 1008);
  it may reconnect and be admitted again. Rate-limited frames are dropped without a strike, because an
  honest but bursty peer can hit the limit.
- `on_message` is awaited in order, one frame at a time per peer: a slow handler slows that peer's
  reads (TCP pushes back on it) and nobody else's, so the handler should hand work off, not do it.
  The transport owns the replay window: the daemon must not feed the same envelopes to another one.
- `GET /blobs/{blake3}` serves blobs to members (see `blobs.py`).
- There is no TLS: on Fly the 6PN network, and for outside hosts the WireGuard peer, encrypt the
  traffic; the handshake authenticates both ends and every envelope is signed.

Send policy (`send`): each peer has a queue bounded by `send_queue_messages_max`. A *droppable* message
(gossip, which is re-sent anyway) evicts the oldest droppable message when the queue is full. Any other
message (consensus) waits for room — back-pressure on the caller — for up to `send_block_timeout_s`;
a peer whose queue stays full that long is too slow to keep up, so it is disconnected rather than let
its queue hold up the node. A message for a peer that is not connected is dropped and counted: the
consensus and gossip cores already retransmit, and a reconnecting peer catches up by state transfer.

One connection per peer pair: when a second admitted connection to the same node appears, the newer one
wins if the peer restarted (new incarnation) or the same side dialed both; otherwise (both sides dialed
at once) both nodes keep the one dialed by the smaller node id, so they agree without talking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from moeswarm.identity import (
    BadSignature,
    ClockAhead,
    Envelope,
    EnvelopeError,
    Identity,
    Replayed,
    ReplayWindow,
    Stale,
    VerifiedSignatureCache,
    open_envelope,
)
from moeswarm.node import admission, handshake
from moeswarm.node.admission import AdmissionError, ClusterKey
from moeswarm.node.blobs import BlobFetchError, BlobSource, blob_handler, fetch_blob_from
from moeswarm.node.config import format_address, parse_address
from moeswarm.node.handshake import (
    CLOSE_DUPLICATE,
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_SELF,
    CLOSE_TRY_LATER,
    HandshakeClosed,
    Link,
    SelfAddress,
)
from moeswarm.node.metrics import NodeMetrics
from moeswarm.node.pacing import Backoff, TokenBucket
from moeswarm.node.peer_link import Outgoing, PeerLink
from moeswarm.wire import WireError, encode

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 3.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportLimits:
    """Every bound of the transport, units last."""

    frame_bytes_max: int = 4 * 1024 * 1024
    send_queue_messages_max: int = 1024
    send_block_timeout_s: float = 5.0
    rate_messages_per_s: float = 1000.0
    rate_burst_messages: int = 4000
    strikes_max: int = 16
    peers_max: int = 256
    handshakes_max: int = 64
    handshake_timeout_s: float = 10.0
    heartbeat_s: float = 15.0
    backoff_base_s: float = 0.25
    backoff_max_s: float = 30.0
    blob_fetch_timeout_s: float = 120.0
    blob_bytes_max: int = 1024 * 1024 * 1024
    message_age_ms_max: int = 120_000


OnMessage = Callable[[str, Envelope], Awaitable[None] | None]


class PeerTransport:
    """The node's network edge to its peers. `start()` binds; `connect(address)` keeps a peer dialed."""

    def __init__(self, identity: Identity, cluster_key: ClusterKey | str, host: str, port: int,
                 on_message: OnMessage, blob_source: BlobSource, *, metrics: NodeMetrics | None = None,
                 limits: TransportLimits | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, random_bytes: Callable[[int], bytes] = os.urandom,
                 replay: ReplayWindow | None = None, verifier: VerifiedSignatureCache | None = None) -> None:
        self.identity = identity
        self.node_id: str = identity.node_id
        self.cluster = cluster_key if isinstance(cluster_key, ClusterKey) else ClusterKey(cluster_key)
        self.host = host
        self.port = port
        self.metrics = metrics if metrics is not None else NodeMetrics(node=identity.node_id[:12])
        self.limits = limits if limits is not None else TransportLimits()
        self._on_message = on_message
        self._blob_source = blob_source
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._random_bytes = random_bytes
        self._backoff = Backoff(base_s=self.limits.backoff_base_s, max_s=self.limits.backoff_max_s)
        self._replay = replay if replay is not None else ReplayWindow()
        self._verifier = verifier
        self.incarnation = random_bytes(admission.INCARNATION_BYTES)
        self._links: dict[str, PeerLink] = {}
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._address_ids: dict[str, str] = {}
        self._self_addresses: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshaking: set[web.WebSocketResponse] = set()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[_json_errors], client_max_size=4096)
        app.router.add_get("/peer", self._accept)
        app.router.add_get("/blobs/{blob_id}", blob_handler(self.cluster, self._blob_source, self._blob_served))
        # Links are closed before the runner: what is still in flight then (a blob download, a
        # handshake) gets a short grace, not aiohttp's default minute, so a stop stays bounded.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession()
        log.info("node %s listening for peers on %s", self.node_id[:12], format_address(self.host, self.port))

    def _blob_served(self, nbytes: int) -> None:
        self.metrics.blobs_served.inc()
        self.metrics.bytes_sent.labels(kind="blob").inc(nbytes)

    async def stop(self) -> None:
        """Close every connection with 'going away' and release the port; safe to call twice."""
        self._stopping = True
        if self._runner is not None:
            for site in self._runner.sites:
                await site.stop()  # no new connections while the old ones close
        tasks = list(self._dialers.values()) + list(self._tasks)
        for task in tasks:
            task.cancel()
        for link in list(self._links.values()):
            await link.close(CLOSE_GOING_AWAY, "node stopping")
        for ws in list(self._handshaking):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=CLOSE_GOING_AWAY, message=b"node stopping")
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dialers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- peers -------------------------------------------------------------------------------------

    def connect(self, address: str) -> None:
        """Keep a connection to the node at `address` ('host:port'), redialing with back-off."""
        key = format_address(*parse_address(address))
        if key in self._dialers or key in self._self_addresses or self._stopping:
            return
        self._dialers[key] = asyncio.get_running_loop().create_task(self._dial_loop(key), name=f"dial-{key}")

    def forget(self, address: str) -> None:
        """Stop redialing `address` (discovery no longer lists it); a live connection stays up."""
        task = self._dialers.pop(format_address(*parse_address(address)), None)
        if task is not None:
            task.cancel()

    def dialing(self) -> list[str]:
        """Addresses this node keeps dialed (its own address, once recognised, is dropped)."""
        return sorted(self._dialers)

    def connected_peers(self) -> list[str]:
        return sorted(self._links)

    def peer_addresses(self) -> dict[str, str]:
        """Where each connected peer can be dialled, as this node sees it: the address the link
        came from (or went to) with the listen port the peer's handshake declared."""
        return {link.peer_id: format_address(*link.blob_address) for link in self._links.values()
                if link.blob_address is not None and link.blob_address[1] != 0}

    def peer_table(self) -> list[dict[str, object]]:
        """A JSON-ready row per connected peer, for the admin endpoint."""
        return [{"node_id": link.peer_id, "remote": link.remote, "dialed": link.dialed, "queued": link.queued,
                 "strikes": link.strikes,
                 "blob_address": format_address(*link.blob_address) if link.blob_address else None}
                for link in sorted(self._links.values(), key=lambda lk: lk.peer_id)]

    async def send(self, node_id: str, payload: bytes, *, kind: str = "message", droppable: bool = False) -> bool:
        """Queue one sealed envelope for `node_id`; False when it was dropped (see the module policy)."""
        if len(payload) > self.limits.frame_bytes_max:
            raise ValueError(f"a {len(payload)}-byte frame exceeds frame_bytes_max={self.limits.frame_bytes_max}")
        link = self._links.get(node_id)
        if link is None:
            self.metrics.messages_dropped.labels(reason="not_connected").inc()
            return False
        return await link.enqueue(Outgoing(payload, kind, droppable))

    async def broadcast(self, payload: bytes, *, kind: str = "message", droppable: bool = False) -> int:
        """Queue `payload` for every connected peer; returns how many queued it."""
        results = await asyncio.gather(*(self.send(p, payload, kind=kind, droppable=droppable)
                                         for p in self.connected_peers()))
        return sum(results)

    async def fetch_blob(self, node_id_or_address: str, blob_id: str, size_max: int) -> bytes:
        """Fetch a blob from a connected peer (by node id) or an address; the result matches `blob_id`."""
        if self._session is None:
            raise BlobFetchError("the transport is not started")
        link = self._links.get(node_id_or_address)
        if link is not None:
            if link.blob_address is None or link.blob_address[1] == 0:
                raise BlobFetchError(f"peer {node_id_or_address[:12]} serves no blobs")
            host, port = link.blob_address
        else:
            try:
                host, port = parse_address(node_id_or_address)
            except ValueError:
                raise BlobFetchError(f"{node_id_or_address[:80]!r} is neither a connected peer nor an address") from None
        try:
            blob = await fetch_blob_from(self._session, f"http://{format_address(host, port)}", self.cluster,
                                         blob_id, min(size_max, self.limits.blob_bytes_max),
                                         self.limits.blob_fetch_timeout_s)
        except BlobFetchError as exc:
            self.metrics.blob_fetch_failures.labels(reason=exc.reason).inc()
            log.warning("blob fetch failed: %s", exc)
            raise
        self.metrics.bytes_received.labels(kind="blob").inc(len(blob))
        return blob

    # --- admission: accepting side -----------------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if self._stopping or len(self._handshaking) >= self.limits.handshakes_max:
            return web.json_response({"error": "busy", "message": "too many handshakes in progress"}, status=503)
        ws = web.WebSocketResponse(max_msg_size=self.limits.frame_bytes_max, heartbeat=self.limits.heartbeat_s)
        await ws.prepare(request)
        remote = request.remote or "?"
        self._handshaking.add(ws)
        try:
            admitted = await self._accept_handshake(ws, remote)
        finally:
            self._handshaking.discard(ws)
        if admitted is None:
            return ws
        hello, peer_id = admitted
        blob_address = (remote, hello.listen_port) if hello.listen_port else None
        link = self._register(peer_id, ws, remote=remote, dialed=False, incarnation=hello.incarnation, blob_address=blob_address)
        if link is None:
            await ws.close(code=CLOSE_DUPLICATE, message=b"duplicate connection")
            return ws
        try:
            await ws.send_bytes(encode(admission.Welcome(protocol=admission.PROTOCOL_VERSION)))
        except (ConnectionError, RuntimeError):
            await link.close(None, "")
            return ws
        log.info("admitted peer %s from %s", peer_id[:12], remote)
        await link.read_loop(self._on_frame, self._on_bad_frame)
        self._unregister(link)
        return ws

    async def _accept_handshake(self, ws: web.WebSocketResponse, remote: str) -> tuple[admission.Hello, str] | None:
        if len(self._links) >= self.limits.peers_max:
            await self._refuse(ws, remote, "peers_full", CLOSE_TRY_LATER)
            return None
        try:
            return await handshake.accept(ws, self.cluster, self.identity, self.incarnation, self.port,
                                          self._random_bytes, self.limits.handshake_timeout_s)
        except AdmissionError as exc:
            await self._refuse(ws, remote, exc.reason, CLOSE_SELF if exc.reason == "self" else CLOSE_POLICY, exc)
            return None
        except WireError as exc:
            await self._refuse(ws, remote, "malformed", CLOSE_POLICY, exc)
            return None
        except TimeoutError:
            await self._refuse(ws, remote, "timeout", CLOSE_POLICY)
            return None
        except HandshakeClosed as exc:
            # a dialer that cannot verify our proof (wrong cluster key) hangs up with its reason
            self.metrics.admissions_refused.labels(reason="abandoned").inc()
            log.warning("handshake with %s abandoned by the peer: %s", remote, exc)
            return None
        except (ConnectionError, RuntimeError):
            return None

    async def _refuse(self, ws: Link, remote: str, reason: str, code: int, exc: Exception | None = None) -> None:
        self.metrics.admissions_refused.labels(reason=reason).inc()
        if reason == "self":
            log.info("a connection from %s reached this node itself; closing it", remote)
        else:
            log.warning("admission refused for %s: %s%s", remote, reason, f" ({exc})" if exc else "")
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.close(code=code, message=f"admission refused: {reason}".encode())

    # --- admission: dialing side -------------------------------------------------------------------

    async def _dial_loop(self, address: str) -> None:
        attempt = 0
        first = True
        while not self._stopping:
            known = self._address_ids.get(address)
            if known is not None and known in self._links:
                await self._links[known].closed.wait()
                await asyncio.sleep(self._backoff.delay_s(0, self._rng))
                continue
            if not first:
                self.metrics.reconnects.inc()
            first = False
            try:
                link = await self._dial(address)
            except SelfAddress:
                log.info("%s is this node's own address; not dialing it", address)
                self._self_addresses.add(address)
                self._dialers.pop(address, None)
                return
            except (AdmissionError, WireError, HandshakeClosed, TimeoutError, aiohttp.ClientError, OSError) as exc:
                delay = self._backoff.delay_s(attempt, self._rng)
                log.log(logging.WARNING if isinstance(exc, AdmissionError) else logging.INFO,
                        "dialing %s failed (%s); retrying in %.2fs", address, exc or type(exc).__name__, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if link is not None:
                await link.read_loop(self._on_frame, self._on_bad_frame)
                self._unregister(link)
            # a short pause before redialing, so a peer that keeps hanging up cannot make us spin
            await asyncio.sleep(self._backoff.delay_s(0, self._rng))

    async def _dial(self, address: str) -> PeerLink | None:
        assert self._session is not None
        host, _ = parse_address(address)
        ws = await self._session.ws_connect(
            f"http://{address}/peer", max_msg_size=self.limits.frame_bytes_max, heartbeat=self.limits.heartbeat_s,
            timeout=aiohttp.ClientWSTimeout(ws_close=self.limits.handshake_timeout_s),
        )
        try:
            reply, peer_id = await handshake.dial(ws, self.cluster, self.identity, self.incarnation, self.port,
                                                  self._random_bytes, self.limits.handshake_timeout_s)
        except AdmissionError as exc:
            await ws.close(code=CLOSE_POLICY, message=f"admission refused: {exc.reason}".encode())
            self.metrics.admissions_refused.labels(reason=exc.reason).inc()
            raise
        except BaseException:
            await ws.close()
            raise
        self._address_ids[address] = peer_id
        blob_address = (host, reply.listen_port) if reply.listen_port else None
        link = self._register(peer_id, ws, remote=address, dialed=True, incarnation=reply.incarnation, blob_address=blob_address)
        if link is None:
            await ws.close(code=CLOSE_DUPLICATE, message=b"duplicate connection")
            return None
        log.info("connected to peer %s at %s", peer_id[:12], address)
        return link

    # --- the peer table ----------------------------------------------------------------------------

    def _register(self, peer_id: str, ws: Link, *, remote: str, dialed: bool, incarnation: bytes,
                  blob_address: tuple[str, int] | None) -> PeerLink | None:
        """Make this connection the peer's link, unless the one already there wins; None if it lost."""
        old = self._links.get(peer_id)
        if old is not None and not self._newer_wins(old, peer_id, dialed, incarnation):
            return None
        limits = self.limits
        link = PeerLink(peer_id=peer_id, ws=ws, remote=remote, dialed=dialed, incarnation=incarnation, blob_address=blob_address,
                        queue_messages_max=limits.send_queue_messages_max,
                        send_block_timeout_s=limits.send_block_timeout_s,
                        bucket=TokenBucket(limits.rate_messages_per_s, limits.rate_burst_messages,
                                           asyncio.get_running_loop().time()),
                        metrics=self.metrics)
        self._links[peer_id] = link
        link.start(old.take_queue() if old is not None else None)
        if old is not None:
            self._spawn(old.close(CLOSE_DUPLICATE, "replaced by a newer connection"))
        self.metrics.admissions.inc()
        self.metrics.peers_connected.set(len(self._links))
        return link

    def _newer_wins(self, old: PeerLink, peer_id: str, dialed: bool, incarnation: bytes) -> bool:
        if old.closed.is_set() or old.incarnation != incarnation or old.dialed == dialed:
            return True
        old_dialer = self.node_id if old.dialed else peer_id
        new_dialer = self.node_id if dialed else peer_id
        return new_dialer < old_dialer

    def _unregister(self, link: PeerLink) -> None:
        if self._links.get(link.peer_id) is link:
            del self._links[link.peer_id]
            log.info("peer %s disconnected", link.peer_id[:12])
        self.metrics.peers_connected.set(len(self._links))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- frames from admitted peers ----------------------------------------------------------------

    async def _on_frame(self, link: PeerLink, data: bytes) -> None:
        if len(data) > self.limits.frame_bytes_max:
            self._strike(link, "oversize", f"{len(data)} bytes")
            return
        if not link.bucket.take(asyncio.get_running_loop().time()):
            self.metrics.count_rejected("rate_limited")
            return
        try:
            envelope = open_envelope(data, now_ms=int(self._clock() * 1000), replay=self._replay,
                                     max_age_ms=self.limits.message_age_ms_max, verifier=self._verifier,
                                     max_bytes=self.limits.frame_bytes_max)
        except WireError as exc:  # EnvelopeError and its kinds are WireErrors
            self._strike(link, _reject_reason(exc), str(exc))
            return
        if envelope.sender != link.peer_id:
            self._strike(link, "sender_mismatch", f"envelope signed by {envelope.sender[:12]}")
            return
        self.metrics.count_received(envelope.type, len(data))
        try:
            result = self._on_message(link.peer_id, envelope)
            if result is not None:
                await result
        except Exception:
            self.metrics.count_rejected("handler_error")
            log.exception("handling a %s message from %s failed", envelope.type, link.peer_id[:12])

    def _on_bad_frame(self, link: PeerLink, reason: str, detail: str) -> None:
        if reason == "text_frame":
            self._strike(link, reason, detail)
            return
        self.metrics.count_rejected(reason)
        log.warning("peer %s at %s: connection closed on %s (%s)", link.peer_id[:12], link.remote, reason,
                    detail[:200])

    def _strike(self, link: PeerLink, reason: str, detail: str) -> None:
        self.metrics.count_rejected(reason)
        link.strikes += 1
        log.warning("rejected a frame from peer %s at %s: %s (%s); strike %d of %d", link.peer_id[:12],
                    link.remote, reason, detail[:200], link.strikes, self.limits.strikes_max)
        if link.strikes >= self.limits.strikes_max:
            log.warning("disconnecting peer %s: too many invalid frames", link.peer_id[:12])
            self._spawn(link.close(CLOSE_POLICY, "too many invalid frames"))


def _reject_reason(exc: WireError) -> str:
    for kind, reason in ((BadSignature, "bad_signature"), (Replayed, "replayed"), (ClockAhead, "clock_ahead"),
                         (Stale, "stale"), (EnvelopeError, "bad_envelope")):
        if isinstance(exc, kind):
            return reason
    return "malformed"


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": "not_found" if exc.status == 404 else "http_error",
                                  "message": exc.reason}, status=exc.status)
