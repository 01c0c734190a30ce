"""One admitted WebSocket to one peer: its bounded send queue, writer task, read loop and strike count.

The queue policy is described in `transport.py`; this module carries it out for a single connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from moeswarm.node.handshake import CLOSE_TOO_SLOW, Link
from moeswarm.node.metrics import NodeMetrics
from moeswarm.node.pacing import TokenBucket

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    payload: bytes
    kind: str
    droppable: bool


class PeerLink:
    """State of one live connection; `closed` is set once it is gone, for whoever waits on it."""

    def __init__(self, *, peer_id: str, ws: Link, remote: str, dialed: bool, incarnation: bytes,
                 blob_address: tuple[str, int] | None, queue_messages_max: int, send_block_timeout_s: float,
                 bucket: TokenBucket, metrics: NodeMetrics) -> None:
        self.peer_id = peer_id
        self.ws = ws
        self.remote = remote  # where the socket leads, for logs
        self.dialed = dialed
        self.incarnation = incarnation
        self.blob_address = blob_address
        self.bucket = bucket
        self.strikes = 0
        self.closed = asyncio.Event()
        self._queue: deque[Outgoing] = deque()
        self._queue_messages_max = queue_messages_max
        self._send_block_timeout_s = send_block_timeout_s
        self._changed = asyncio.Condition()
        self._metrics = metrics
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None  # held so the task is not garbage-collected

    def start(self, inherited: list[Outgoing] | None = None) -> None:
        """Start the writer; `inherited` are messages still queued on the connection this one replaces."""
        for item in (inherited or [])[-self._queue_messages_max:]:
            self._queue.append(item)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=f"peer-writer-{self.peer_id[:8]}")

    def take_queue(self) -> list[Outgoing]:
        items = list(self._queue)
        self._queue.clear()
        return items

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def enqueue(self, item: Outgoing) -> bool:
        """Queue one message under the drop-oldest / block policy; False when it was not queued."""
        if self.closed.is_set():
            self._metrics.messages_dropped.labels(reason="disconnected").inc()
            return False
        async with self._changed:
            if len(self._queue) >= self._queue_messages_max:
                if item.droppable:
                    self._evict_droppable(item)
                    return True
                try:
                    async with asyncio.timeout(self._send_block_timeout_s):
                        await self._changed.wait_for(
                            lambda: len(self._queue) < self._queue_messages_max or self.closed.is_set())
                except TimeoutError:
                    log.warning("peer %s: send queue full for %.1fs, disconnecting a peer too slow to keep up",
                                self.peer_id[:12], self._send_block_timeout_s)
                    self._metrics.messages_dropped.labels(reason="peer_too_slow").inc()
                    self._closer = asyncio.get_running_loop().create_task(self.close(CLOSE_TOO_SLOW, "send queue full"))
                    return False
                if self.closed.is_set():
                    self._metrics.messages_dropped.labels(reason="disconnected").inc()
                    return False
            self._queue.append(item)
            self._changed.notify_all()
        return True

    def _evict_droppable(self, item: Outgoing) -> None:
        for i, queued in enumerate(self._queue):
            if queued.droppable:
                del self._queue[i]
                self._queue.append(item)
                self._metrics.messages_dropped.labels(reason="queue_full").inc()
                self._changed.notify_all()
                return
        # the queue holds only consensus messages: the new gossip message is the one to lose
        self._metrics.messages_dropped.labels(reason="queue_full").inc()

    async def _write_loop(self) -> None:
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(self._queue))
                    item = self._queue.popleft()
                    self._changed.notify_all()
                await self.ws.send_bytes(item.payload)
                self._metrics.count_sent(item.kind, len(item.payload))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # RuntimeError: aiohttp refuses to write on a closing socket
            log.info("peer %s: send failed (%s); closing", self.peer_id[:12], exc)
            await self.close(CLOSE_TOO_SLOW, "send failed")

    async def read_loop(self, on_frame: Callable[[PeerLink, bytes], Awaitable[None]],
                        on_error: Callable[[PeerLink, str, str], None]) -> None:
        """Hand every binary frame to `on_frame` until the connection ends.

        Anything else goes to `on_error(link, reason, detail)`: a text frame ("text_frame", the
        connection stays), or a protocol error that ends it ("oversize" when a frame exceeded
        the size limit, which aiohttp enforces while reading, else "protocol_error").
        """
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    await on_frame(self, bytes(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    on_error(self, "text_frame", "peers send binary frames only")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    exc = msg.data if isinstance(msg.data, BaseException) else self.ws.exception()
                    too_big = getattr(exc, "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                    on_error(self, "oversize" if too_big else "protocol_error", repr(exc))
                    break
        finally:
            await self.close(None, "")

    async def close(self, code: int | None, message: str) -> None:
        """Close the socket (when `code` is given), stop the writer and wake every waiting sender."""
        if code is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await self.ws.close(code=code, message=message.encode()[:120])
        if self.closed.is_set():
            return
        self.closed.set()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        async with self._changed:
            self._changed.notify_all()
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await self.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
