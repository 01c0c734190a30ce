"""A real local swarm for end-to-end tests: node processes on 127.0.0.1, driven over the admin endpoint.

The node commands come from the launcher's `build_nodes`, so the tests start exactly what `moe-swarm up`
starts. Every wait is bounded and, when it gives up, its assertion message carries the tail of every
node's log, so a failure says what the nodes were doing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from moeswarm.simulator import launcher
from moeswarm.simulator.launcher import NodeProcess

T = TypeVar("T")

HTTP_TIMEOUT_S = 5.0
POLL_S = 0.5
LOG_TAIL_LINES = 40
PORT_TRIES_MAX = 50
PORT_LO, PORT_HI = 20_000, 60_000


def free_port_block(count: int, rng: random.Random | None = None) -> int:
    """A base port such that base .. base+count-1 are all free on 127.0.0.1 right now."""
    rng = rng or random.Random()
    for _ in range(PORT_TRIES_MAX):
        base = rng.randrange(PORT_LO, PORT_HI - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports found in {PORT_TRIES_MAX} tries")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class HttpAnswer:
    """Status code and parsed JSON body of one admin call."""

    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def http(port: int, path: str, *, token: str | None = None, method: str = "GET") -> HttpAnswer:
    """One call to a node's admin endpoint; HTTP errors are answers too (their JSON body parsed)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers, method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            raw, status, hdrs = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    return HttpAnswer(status, body, hdrs)


class LocalSwarm:
    """N node processes built by the launcher, under `root`; `stop()` always kills what is left."""

    def __init__(self, root: Path, *, nodes: int = 4, seed: int = 0, inner_steps: int = 3, batch_size: int = 8,
                 byzantine: int = 0, poison: str = "scale", node_args: Sequence[str] = ()) -> None:
        parser = argparse.ArgumentParser()
        launcher.configure(parser)
        argv = ["--nodes", str(nodes), "--dir", str(root), "--base-port", str(free_port_block(2 * nodes)),
                "--seed", str(seed), "--inner-steps", str(inner_steps), "--batch-size", str(batch_size),
                "--byzantine", str(byzantine), "--poison", poison]
        for extra in node_args:
            argv.append(f"--node-arg={extra}")
        args = parser.parse_args(argv)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root
        self.nodes: list[NodeProcess] = launcher.build_nodes(args, root)
        self.token = (root / "admin_token").read_text(encoding="utf-8").strip()
        self.cluster_key = (root / "cluster_key").read_text(encoding="utf-8").strip()
        for n in self.nodes:
            # One torch thread per node: four nodes on a small machine otherwise fight over its cores.
            n.env = {**n.env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    # --- processes ---------------------------------------------------------------------------------

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def kill(self, index: int) -> None:
        """kill -9: no drain, no final checkpoint; what is on disk is what survives."""
        n = self.nodes[index]
        if n.proc is not None and n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait()

    def restart(self, index: int) -> None:
        self.kill(index)
        self.nodes[index].restarts += 1
        self.nodes[index].start()

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    n.proc.kill()
        for n in self.nodes:
            if n.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(timeout=10)

    # --- admin calls -------------------------------------------------------------------------------

    def get(self, index: int, path: str) -> Any:
        """The JSON body of an authorised GET, or None when the node does not answer (yet)."""
        try:
            answer = http(self.nodes[index].admin_port, path, token=self.token)
        except (urllib.error.URLError, OSError):
            return None
        return answer.body if answer.status == 200 else None

    def metric(self, index: int, name: str) -> float | None:
        """One unlabelled sample of the node's /metrics (no token needed), or None."""
        try:
            answer = http(self.nodes[index].admin_port, "/metrics")
        except (urllib.error.URLError, OSError):
            return None
        if answer.status != 200 or not isinstance(answer.body, str):
            return None
        for line in answer.body.splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return float(value)
        return None

    def rounds(self, index: int) -> dict[int, dict[str, Any]]:
        """Every committed round the node reports, by round number."""
        body = self.get(index, "/v1/rounds?from=0&limit=1000")
        if not isinstance(body, dict):
            return {}
        return {int(r["round"]): r for r in body.get("rounds", [])}

    def last_round(self, index: int) -> int:
        return max(self.rounds(index), default=0)

    # --- waiting -----------------------------------------------------------------------------------

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
        """Poll `probe` until it returns something other than None/False, or fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = probe()
            if value is not None and value is not False:
                return value
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() not in (None, -9):
                    raise AssertionError(f"{n.name} exited with {n.proc.returncode} while waiting for "
                                         f"{what}\n{self.describe()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"gave up after {timeout_s:.0f}s waiting for {what}\n{self.describe()}")
            time.sleep(POLL_S)

    def wait_rounds(self, target: int, timeout_s: float, indices: Sequence[int] | None = None) -> None:
        """Wait until every listed node (default all) has committed round `target`."""
        chosen = list(range(len(self.nodes))) if indices is None else list(indices)
        self.wait_for(f"round {target} on nodes {chosen}",
                      lambda: all(self.last_round(i) >= target for i in chosen), timeout_s)

    # --- diagnostics -------------------------------------------------------------------------------

    def log_text(self, index: int) -> str:
        try:
            return (self.nodes[index].data_dir / "node.log").read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        parts = []
        for i, n in enumerate(self.nodes):
            state = "running" if n.alive() else f"exited {n.proc.returncode if n.proc else '-'}"
            # redials of a dead peer repeat every few seconds and would crowd out everything else
            lines = [line for line in self.log_text(i).splitlines() if " failed (" not in line or "dialing" not in line]
            tail = "\n".join(lines[-LOG_TAIL_LINES:])
            parts.append(f"--- {n.name} ({state}, restarts {n.restarts}) {n.data_dir / 'node.log'}\n{tail}")
        return "\n".join(parts)
