"""The admin HTTP endpoint: health, metrics, and the operator's bearer-token API.

Bound to the private address (Fly's 6PN address, loopback locally), never a public one. `/healthz` and
`/metrics` need no token: Fly's health check and a Prometheus scraper on the private network must reach
them without a secret, and neither reveals more than the metrics already do. Everything under `/v1/`
needs `Authorization: Bearer <token>`, compared in constant time.

Every answer, errors included, is JSON `{"error": code, "message": ...}` on failure, so scripts can rely
on one shape. A failure inside the node's control object becomes a 500 and a log line; it never takes
the admin server, let alone the node, down.

    TOKEN=$(cat .moeswarm/node-7000/admin_token)        # or the MOESWARM_ADMIN_TOKEN secret
    curl http://127.0.0.1:7001/healthz
    curl http://127.0.0.1:7001/metrics
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:7001/v1/status
    curl -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:7001/v1/rounds?from=10&limit=5"
    curl -H "Authorization: Bearer $TOKEN" -X POST http://127.0.0.1:7001/v1/training/pause
    curl -H "Authorization: Bearer $TOKEN" -X POST http://127.0.0.1:7001/v1/drain
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from moeswarm.node.metrics import NodeMetrics

log = logging.getLogger(__name__)

ROUNDS_LIMIT_MAX = 1000
ROUNDS_LIMIT_DEFAULT = 100
REQUEST_BYTES_MAX = 64 * 1024
REALM = 'Bearer realm="moe-swarm admin"'
SHUTDOWN_GRACE_S = 3.0  # in-flight admin requests get this long when the node stops (aiohttp waits 60 s)


class ControlError(Exception):
    """An expected refusal from the node (e.g. a checkpoint while not a member): becomes a JSON error."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class NodeControl(Protocol):
    """What the admin endpoint asks of the running node.

    Every method may be a plain function or a coroutine function; the admin server awaits whatever is
    awaitable. Results must be JSON-serialisable. A method may raise `ControlError` for an expected
    refusal (mapped to its status) — anything else is reported as a 500 and logged.

    - `health()`: `{"ok": bool, ...}`; `ok` false (unhealthy, draining) answers `/healthz` with 503.
    - `rounds(from_round, limit)`: committed rounds from `from_round` on, at most `limit`;
      `from_round` None means the most recent `limit` rounds.
    - `round(r)`: one committed round, or None when the node does not know it (404).
    - `checkpoint()`, `drain()`, `pause()`, `resume()`: start the action and describe what was done.
    """

    def health(self) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]]: ...
    def status(self) -> Any: ...
    def peers(self) -> Any: ...
    def experts(self) -> Any: ...
    def rounds(self, from_round: int | None, limit: int) -> Any: ...
    def round(self, r: int) -> Any: ...
    def checkpoint(self) -> Any: ...
    def drain(self) -> Any: ...
    def pause(self) -> Any: ...
    def resume(self) -> Any: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CONTROL_KEY = web.AppKey("control", object)
_METRICS_KEY = web.AppKey("metrics", NodeMetrics)
_TOKEN_KEY = web.AppKey("token", bytes)


def json_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


async def _call(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON answer and count every request by route and status."""
    try:
        response = await handler(request)
    except ControlError as exc:
        response = json_error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        response = json_error(exc.status, code, exc.reason)
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        response = json_error(500, "internal", "the node failed to answer; see its log")
    request.app[_METRICS_KEY].admin_requests.labels(route=_route_label(request), status=str(response.status)).inc()
    return response


@web.middleware
async def _bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return json_error(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": REALM})
    if not hmac.compare_digest(presented.strip().encode(), request.app[_TOKEN_KEY]):
        log.warning("admin: wrong bearer token from %s for %s %s", request.remote, request.method, request.path)
        return json_error(403, "forbidden", "wrong bearer token")
    return await handler(request)


def _control(request: web.Request) -> NodeControl:
    control: NodeControl = request.app[_CONTROL_KEY]  # type: ignore[assignment]
    return control


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _healthz(request: web.Request) -> web.Response:
    health = dict(await _call(_control(request).health()))
    ok = bool(health.get("ok", False))
    health["ok"] = ok
    return web.json_response(health, status=200 if ok else 503, dumps=_dumps)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[_METRICS_KEY].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ControlError("bad_request", f"{name} must be an integer, got {raw[:40]!r}", 400) from None
    if not lo <= value <= hi:
        raise ControlError("bad_request", f"{name} must be in {lo}..{hi}, got {value}", 400)
    return value


async def _rounds(request: web.Request) -> web.Response:
    from_round = _int_param(request, "from", None, 0, 2**62)
    limit = _int_param(request, "limit", ROUNDS_LIMIT_DEFAULT, 1, ROUNDS_LIMIT_MAX)
    assert limit is not None
    result = await _call(_control(request).rounds(from_round, limit))
    return web.json_response(result, dumps=_dumps)


async def _round(request: web.Request) -> web.Response:
    raw = request.match_info["r"]
    if not raw.isdigit() or len(raw) > 18:
        raise ControlError("bad_request", f"round must be a non-negative integer, got {raw[:40]!r}", 400)
    result = await _call(_control(request).round(int(raw)))
    if result is None:
        raise ControlError("not_found", f"round {int(raw)} is not known to this node", 404)
    return web.json_response(result, dumps=_dumps)


def _simple(method: str, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        result = await _call(getattr(_control(request), method)())
        return web.json_response(result, status=status, dumps=_dumps)

    return handler


def create_admin_app(control: NodeControl, token: str, metrics: NodeMetrics) -> web.Application:
    """The admin application; the caller binds it to the private address (see `start_admin`)."""
    if not token:
        raise ValueError("the admin token must not be empty")
    app = web.Application(middlewares=[_errors_and_metrics, _bearer_auth], client_max_size=REQUEST_BYTES_MAX)
    app[_CONTROL_KEY] = control
    app[_METRICS_KEY] = metrics
    app[_TOKEN_KEY] = token.encode()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/status", _simple("status"))
    app.router.add_get("/v1/peers", _simple("peers"))
    app.router.add_get("/v1/experts", _simple("experts"))
    app.router.add_get("/v1/rounds", _rounds)
    app.router.add_get("/v1/rounds/{r}", _round)
    app.router.add_post("/v1/checkpoint", _simple("checkpoint"))
    app.router.add_post("/v1/drain", _simple("drain", status=202))
    app.router.add_post("/v1/training/pause", _simple("pause"))
    app.router.add_post("/v1/training/resume", _simple("resume"))
    return app


class AdminServer:
    """The admin app bound to one host and port; `port` is the real one when 0 was asked for."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        for address in self._runner.addresses:
            self.port = int(address[1])
            break
        log.info("admin endpoint on http://%s:%d", self._host if ":" not in self._host else f"[{self._host}]",
                 self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_admin(control: NodeControl, token: str, metrics: NodeMetrics, host: str, port: int) -> AdminServer:
    server = AdminServer(create_admin_app(control, token, metrics), host, port)
    await server.start()
    return server
