"""The admin endpoint: token checks, JSON errors, input validation, and a node that fails to answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from moeswarm.node.admin import ROUNDS_LIMIT_MAX, ControlError, create_admin_app, start_admin
from moeswarm.node.metrics import NodeMetrics

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeControl:
    """A node stand-in: some methods sync, some async, as the NodeControl protocol allows."""

    def __init__(self) -> None:
        self.ok = True
        self.calls: list[tuple[str, Any]] = []
        self.committed = {r: {"round": r, "state_hash": f"{r:064x}"} for r in range(5)}
        self.fail_status = False

    def health(self) -> dict[str, Any]:
        return {"ok": self.ok, "round": 4, "draining": not self.ok}

    async def status(self) -> dict[str, Any]:
        if self.fail_status:
            raise RuntimeError("state store unavailable")
        return {"node": "n1", "round": 4, "view": 0}

    def peers(self) -> list[dict[str, Any]]:
        return [{"node_id": "ab" * 32, "address": "127.0.0.1:7002"}]

    def experts(self) -> dict[str, list[int]]:
        return {"owned": [0, 3]}

    def rounds(self, from_round: int | None, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("rounds", (from_round, limit)))
        start = 0 if from_round is None else from_round
        return [self.committed[r] for r in sorted(self.committed) if r >= start][:limit]

    async def round(self, r: int) -> dict[str, Any] | None:
        return self.committed.get(r)

    def checkpoint(self) -> dict[str, Any]:
        self.calls.append(("checkpoint", None))
        raise ControlError("not_member", "this node is not a replica yet", 409)

    async def drain(self) -> dict[str, Any]:
        self.calls.append(("drain", None))
        self.ok = False
        return {"draining": True}

    def pause(self) -> dict[str, Any]:
        self.calls.append(("pause", None))
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        self.calls.append(("resume", None))
        return {"paused": False}


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics(node="n1", region="local")


@pytest.fixture
async def client(control: FakeControl, metrics: NodeMetrics) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_admin_app(control, TOKEN, metrics)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_healthz_needs_no_token_and_turns_503_when_draining(
    client: TestClient[Any, Any], control: FakeControl
) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["ok"] is True
    resp = await client.post("/v1/drain", headers=AUTH)
    assert resp.status == 202
    assert await resp.json() == {"draining": True}
    resp = await client.get("/healthz")
    assert resp.status == 503
    body = await resp.json()
    assert body["ok"] is False
    assert body["draining"] is True


async def test_metrics_is_prometheus_text_without_token(client: TestClient[Any, Any], metrics: NodeMetrics) -> None:
    metrics.rounds_committed.inc(3)
    metrics.count_sent("commit", 120)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "moeswarm_rounds_committed_total 3.0" in text
    assert 'moeswarm_bytes_sent_total{kind="commit"} 120.0' in text


async def test_each_node_has_its_own_registry() -> None:
    a, b = NodeMetrics(node="a"), NodeMetrics(node="b")
    a.rounds_committed.inc()
    assert a.value("moeswarm_rounds_committed_total") == 1
    assert b.value("moeswarm_rounds_committed_total") == 0
    assert b"moeswarm_rounds_committed_total 0.0" in b.render()[0]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/status"), ("GET", "/v1/peers"), ("GET", "/v1/experts"), ("GET", "/v1/rounds"),
     ("GET", "/v1/rounds/1"), ("POST", "/v1/checkpoint"), ("POST", "/v1/drain"),
     ("POST", "/v1/training/pause"), ("POST", "/v1/training/resume")],
)
async def test_every_v1_route_requires_the_token(
    client: TestClient[Any, Any], control: FakeControl, method: str, path: str
) -> None:
    resp = await client.request(method, path)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"] == "unauthorized"
    resp = await client.request(method, path, headers={"Authorization": "Bearer wrong-token"})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"
    resp = await client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
    assert resp.status == 401
    assert control.calls == []  # nothing reached the node
    assert control.ok


async def test_wrong_token_is_logged_without_the_token(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="moeswarm.node.admin"):
        await client.get("/v1/status", headers={"Authorization": "Bearer guess-123"})
    assert "wrong bearer token" in caplog.text
    assert "guess-123" not in caplog.text


async def test_authorized_reads(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/status", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"node": "n1", "round": 4, "view": 0}
    assert (await (await client.get("/v1/peers", headers=AUTH)).json())[0]["address"] == "127.0.0.1:7002"
    assert await (await client.get("/v1/experts", headers=AUTH)).json() == {"owned": [0, 3]}
    resp = await client.get("/v1/rounds/2", headers=AUTH)
    assert (await resp.json())["round"] == 2


async def test_rounds_query_is_validated_and_passed_on(client: TestClient[Any, Any], control: FakeControl) -> None:
    resp = await client.get("/v1/rounds?from=1&limit=2", headers=AUTH)
    assert resp.status == 200
    assert [r["round"] for r in await resp.json()] == [1, 2]
    await client.get("/v1/rounds", headers=AUTH)
    assert control.calls == [("rounds", (1, 2)), ("rounds", (None, 100))]
    for query in ("from=x", "from=-1", "limit=0", f"limit={ROUNDS_LIMIT_MAX + 1}", "limit=1.5"):
        resp = await client.get(f"/v1/rounds?{query}", headers=AUTH)
        assert resp.status == 400, query
        body = await resp.json()
        assert body["error"] == "bad_request"
        assert body["message"]
    assert len(control.calls) == 2


async def test_unknown_round_is_404_and_bad_round_400(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/rounds/99", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    resp = await client.get("/v1/rounds/abc", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_request"


async def test_unknown_route_and_wrong_method_are_json(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    resp = await client.get("/v1/drain", headers=AUTH)
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_actions_reach_the_node(client: TestClient[Any, Any], control: FakeControl) -> None:
    assert await (await client.post("/v1/training/pause", headers=AUTH)).json() == {"paused": True}
    assert await (await client.post("/v1/training/resume", headers=AUTH)).json() == {"paused": False}
    resp = await client.post("/v1/checkpoint", headers=AUTH)
    assert resp.status == 409
    assert await resp.json() == {"error": "not_member", "message": "this node is not a replica yet"}
    assert [c[0] for c in control.calls] == ["pause", "resume", "checkpoint"]


async def test_a_failing_node_gives_500_and_the_server_keeps_serving(
    client: TestClient[Any, Any], control: FakeControl, metrics: NodeMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    control.fail_status = True
    with caplog.at_level(logging.ERROR, logger="moeswarm.node.admin"):
        resp = await client.get("/v1/status", headers=AUTH)
    assert resp.status == 500
    assert (await resp.json())["error"] == "internal"
    assert "state store unavailable" in caplog.text
    assert (await client.get("/healthz")).status == 200
    assert metrics.value("moeswarm_admin_requests_total", {"route": "/v1/status", "status": "500"}) == 1


async def test_start_admin_binds_loopback_on_an_ephemeral_port(control: FakeControl, metrics: NodeMetrics) -> None:
    server = await start_admin(control, TOKEN, metrics, "127.0.0.1", 0)
    try:
        assert server.port != 0
        async with aiohttp.ClientSession() as session, asyncio.timeout(10):
            resp = await session.get(f"http://127.0.0.1:{server.port}/v1/status", headers=AUTH)
            assert resp.status == 200
            resp = await session.get(f"http://127.0.0.1:{server.port}/v1/status")
            assert resp.status == 401
    finally:
        await server.stop()


def test_empty_token_is_refused(control: FakeControl, metrics: NodeMetrics) -> None:
    with pytest.raises(ValueError, match="empty"):
        create_admin_app(control, "", metrics)
