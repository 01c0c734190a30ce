"""Real `moe-swarm node` processes on 127.0.0.1 for the join tests: start, poll, drain, kill, show logs."""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
HTTP_TIMEOUT_S = 3.0
POLL_S = 0.5
LOG_TAIL_LINES = 60
ABOUT_TAIL_LINES = 40
EXIT_WAIT_S = 10.0

T = TypeVar("T")


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_corpus(path: Path, nbytes: int, seed: int = 0) -> Path:
    """Plain text for `--data`: enough bytes that five data shards of 64 KiB blocks each get windows."""
    rng = random.Random(seed)
    words = ["the", "swarm", "trains", "experts", "while", "every", "node", "commits", "each", "round"]
    lines: list[str] = []
    size = 0
    while size < nbytes:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + ".\n"
        lines.append(line)
        size += len(line)
    path.write_text("".join(lines))
    return path


@dataclass
class Node:
    name: str
    peer_port: int
    admin_port: int
    data_dir: Path
    argv: list[str]
    env: dict[str, str]
    token: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.name}.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO_ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> Any:
        """GET an admin path with the bearer token; None while the node cannot answer."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        body = self.get("/v1/status")
        return body if isinstance(body, dict) else {}

    def round_hash(self, r: int) -> str | None:
        body = self.get(f"/v1/rounds/{r}")
        return body.get("state_hash") if isinstance(body, dict) else None

    def post(self, path: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=b"", method="POST",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return int(response.status)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def node_argv(name: str, data_dir: Path, peer_port: int, admin_port: int, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable, "-m", "moeswarm", "node", "--name", name, "--data-dir", str(data_dir),
        "--listen-host", "127.0.0.1", "--peer-port", str(peer_port),
        "--admin-host", "127.0.0.1", "--admin-port", str(admin_port), *extra,
    ]


def node_env(cluster_key: str, admin_token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESWARM_", "FLY_"))}
    env.update(MOESWARM_CLUSTER_KEY=cluster_key, MOESWARM_ADMIN_TOKEN=admin_token, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def static_peer_nodes(tmp_path: Path, count: int, *, seeds: int, extra: Sequence[str] = ()) -> list[Node]:
    """`count` small nodes (not started) that find each other only through `--peers` naming the first
    `seeds` of them, as hosts outside any DNS do, and form one swarm of `count` together."""
    key, token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    data = write_corpus(tmp_path / "corpus.txt", 400_000)
    ports = [(free_tcp_port(), free_tcp_port()) for _ in range(count)]
    peers = ",".join(f"127.0.0.1:{peer}" for peer, _ in ports[:seeds])
    nodes = []
    for i, (peer, admin) in enumerate(ports):
        args = ["--peers", peers, "--bootstrap-nodes", str(count), "--data", str(data), "--inner-steps", "2",
                "--batch-size", "4", "--device", "cpu", "--seed", str(i), "--region", "local", *extra]
        data_dir = tmp_path / "nodes" / f"n{i}"
        nodes.append(Node(f"n{i}", peer, admin, data_dir, node_argv(f"n{i}", data_dir, peer, admin, args),
                          node_env(key, token), token))
    return nodes


def wait_until(what: str, timeout_s: float, probe: Callable[[], T | None], about: Node | None = None) -> T:
    """Poll `probe` until it returns something other than None/False; fail after `timeout_s`.

    With `about`, the failure message itself carries that node's log tail: CI shows the head of a
    failure first, and the node the wait was about is the one whose log explains it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            detail = ""
            if about is not None:
                tail = about.log_text().splitlines()[-ABOUT_TAIL_LINES:]
                detail = f"\n--- {about.name} (alive={about.alive()}), last lines ---\n" + "\n".join(tail)
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting until {what}{detail}")
        time.sleep(POLL_S)


@contextmanager
def show_logs_on_failure(nodes: Sequence[Node], extra_logs: Sequence[Path] = ()) -> Iterator[None]:
    """Print the tail of every node's log when the block fails, then stop every node either way."""
    try:
        yield
    except BaseException:
        for node in nodes:
            tail = node.log_text().splitlines()[-LOG_TAIL_LINES:]
            print(f"----- {node.name} (alive={node.alive()}) -----\n" + "\n".join(tail))
        for path in extra_logs:
            if path.exists():
                print(f"----- {path.name} -----\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
        raise
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
        for node in nodes:
            if node.proc is not None:
                node.proc.wait(timeout=EXIT_WAIT_S)
