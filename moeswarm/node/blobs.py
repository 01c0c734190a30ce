"""Blob HTTP on the peer port: serve content-addressed blobs, and fetch them with a hash check.

A blob's id is the blake3 hex digest of its bytes, so a receiver needs to trust no one: whatever a peer
sends is hashed while it streams in and thrown away unless it matches. Serving asks for the bearer token
derived from the cluster key (`ClusterKey.blob_token`), so only members can read model deltas and
checkpoints even on a shared private network.
"""

from __future__ import annotations

import inspect
import logging
import string
from collections.abc import Awaitable, Callable

import aiohttp
import blake3
from aiohttp import web

from moeswarm.node.admission import ClusterKey

log = logging.getLogger(__name__)

BLOB_ID_HEX_CHARS = 64
SEND_CHUNK_BYTES = 256 * 1024
BlobSource = Callable[[str], "bytes | Awaitable[bytes | None] | None"]


class BlobFetchError(Exception):
    """A blob could not be fetched; `reason` is a short code for logs and metrics."""

    reason = "fetch_failed"


class BlobNotFound(BlobFetchError):
    reason = "not_found"


class BlobTooLarge(BlobFetchError):
    reason = "too_large"


class BlobHashMismatch(BlobFetchError):
    reason = "hash_mismatch"


def is_blob_id(text: str) -> bool:
    return len(text) == BLOB_ID_HEX_CHARS and all(c in string.hexdigits.lower()[:16] for c in text)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def blob_handler(cluster: ClusterKey, source: BlobSource,
                 on_served: Callable[[int], None]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The `GET /blobs/{blake3}` handler; `on_served(nbytes)` counts what left the node."""

    async def handle(request: web.Request) -> web.StreamResponse:
        blob_id = request.match_info["blob_id"]
        if not is_blob_id(blob_id):
            return _error(400, "bad_blob_id", "a blob id is 64 lowercase hex characters (blake3)")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not cluster.check_blob_token(token.strip()):
            log.warning("blob %s refused to %s: no valid cluster blob token", blob_id[:12], request.remote)
            return _error(401, "unauthorized", "blobs are served to swarm members only")
        try:
            found = source(blob_id)
            data = await found if inspect.isawaitable(found) else found
        except Exception:
            log.exception("blob source failed for %s", blob_id)
            return _error(500, "internal", "the blob store failed")
        if data is None:
            return _error(404, "not_found", f"blob {blob_id} is not held here")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        for start in range(0, len(data), SEND_CHUNK_BYTES):
            await response.write(view[start:start + SEND_CHUNK_BYTES])
        await response.write_eof()
        on_served(len(data))
        return response

    return handle


async def fetch_blob_from(session: aiohttp.ClientSession, base_url: str, cluster: ClusterKey, blob_id: str,
                          size_max: int, timeout_s: float) -> bytes:
    """GET a blob from one peer, refusing more than `size_max` bytes and anything whose hash differs."""
    if not is_blob_id(blob_id):
        raise ValueError(f"not a blob id: {blob_id[:80]!r}")
    hasher = blake3.blake3()
    parts: list[bytes] = []
    received = 0
    headers = {"Authorization": f"Bearer {cluster.blob_token}"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(f"{base_url}/blobs/{blob_id}", headers=headers, timeout=timeout) as resp:
            if resp.status == 404:
                raise BlobNotFound(f"{base_url} does not hold blob {blob_id}")
            if resp.status != 200:
                raise BlobFetchError(f"{base_url} answered {resp.status} for blob {blob_id}")
            if resp.content_length is not None and resp.content_length > size_max:
                raise BlobTooLarge(f"blob {blob_id} is {resp.content_length} bytes, limit {size_max}")
            async for chunk in resp.content.iter_chunked(SEND_CHUNK_BYTES):
                received += len(chunk)
                if received > size_max:
                    raise BlobTooLarge(f"blob {blob_id} exceeds the limit of {size_max} bytes")
                hasher.update(chunk)
                parts.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BlobFetchError(f"fetching blob {blob_id} from {base_url} failed: {exc!r}") from exc
    digest = hasher.hexdigest()
    if digest != blob_id:
        raise BlobHashMismatch(f"blob from {base_url} hashes to {digest}, expected {blob_id}")
    return b"".join(parts)
