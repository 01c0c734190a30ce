"""`moe-swarm up`: a real local swarm — N node processes on 127.0.0.1 — with a live table.

Each node is the same `moe-swarm node` daemon that runs on a Fly Machine, started with its own data
dir under `./.moeswarm/`, distinct ports, a shared cluster key and admin token (both generated once,
0600, and reused on the next `up` so nodes restarted on their data dirs rejoin). The launcher only
watches: it polls each node's admin endpoint, draws the table, writes the swarm's loss curve beside the
single-node baseline's, and on Ctrl-C sends SIGTERM so every node drains.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeswarm.cli import CliError
from moeswarm.swarm import POISON_MODES

log = logging.getLogger(__name__)


POLL_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 45.0  # the nodes' default drain timeout (30 s) plus time to exit
STATUS_TIMEOUT_S = 2.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=4, help="number of node processes (default 4)")
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (default: until Ctrl-C)")
    parser.add_argument("--dir", default=".moeswarm", help="root of the nodes' data dirs (default ./.moeswarm)")
    parser.add_argument("--base-port", type=int, default=7100, help="first port; node i uses base+2i and base+2i+1")
    parser.add_argument("--preset", default="cpu-tiny", help="model preset (default cpu-tiny)")
    parser.add_argument("--inner-steps", type=int, default=None, help="inner steps H per round")
    parser.add_argument("--batch-size", type=int, default=None, help="inner batch size")
    parser.add_argument("--data", default=None, help="training text: files, directories or globs")
    parser.add_argument("--chaos", action="store_true", help="kill -9 and restart a random node every few rounds")
    parser.add_argument("--chaos-every", type=int, default=3, help="rounds between chaos kills (default 3)")
    parser.add_argument("--byzantine", type=int, default=0, help="make K nodes poison their deltas")
    parser.add_argument("--poison", choices=POISON_MODES, default="scale", help="how byzantine nodes poison")
    parser.add_argument("--fresh", action="store_true", help="delete the data dirs first (start from round 0)")
    parser.add_argument("--baseline", default="runs/train/loss.csv", help="single-node loss CSV to plot beside")
    parser.add_argument("--seed", type=int, default=0, help="seed for chaos choices and node seeds")
    parser.add_argument("--json", action="store_true", help="print the final figures as one JSON line")
    parser.add_argument("--node-arg", action="append", default=[], help="extra flag passed to every node")


@dataclass
class NodeProcess:
    index: int
    name: str
    data_dir: Path
    peer_port: int
    admin_port: int
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    status: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        logfile = (self.data_dir / "node.log").open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        logfile.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _secret(path: Path) -> str:
    """The swarm's shared secret in `path`, created 0600 on first use."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    return value


def build_nodes(args: argparse.Namespace, root: Path) -> list[NodeProcess]:
    cluster_key = _secret(root / "cluster_key")
    admin_token = _secret(root / "admin_token")
    ports = [(args.base_port + 2 * i, args.base_port + 2 * i + 1) for i in range(args.nodes)]
    seeds = ",".join(f"127.0.0.1:{peer}" for peer, _ in ports)
    env = dict(os.environ)
    env.update(MOESWARM_CLUSTER_KEY=cluster_key, MOESWARM_ADMIN_TOKEN=admin_token, PYTHONUNBUFFERED="1")
    # The nodes must import this same package, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    nodes = []
    for i, (peer, admin) in enumerate(ports):
        name = f"node-{i}"
        argv = [
            sys.executable, "-m", "moeswarm", "node",
            "--name", name, "--data-dir", str(root / name),
            "--listen-host", "127.0.0.1", "--peer-port", str(peer),
            "--admin-host", "127.0.0.1", "--admin-port", str(admin),
            "--peers", seeds, "--bootstrap-nodes", str(args.nodes),
            "--preset", args.preset, "--seed", str(args.seed * 1000 + i), "--region", "local",
        ]
        if args.rounds:
            argv += ["--rounds", str(args.rounds)]
        if args.inner_steps:
            argv += ["--inner-steps", str(args.inner_steps)]
        if args.batch_size:
            argv += ["--batch-size", str(args.batch_size)]
        if args.data:
            argv += ["--data", args.data]
        if i >= args.nodes - args.byzantine:
            argv += ["--poison", args.poison]
        for extra in args.node_arg:
            argv += extra.split("=", 1) if extra.startswith("--") and "=" in extra else [extra]
        nodes.append(NodeProcess(i, name, root / name, peer, admin, argv, env))
    return nodes


def fetch_status(port: int, token: str, path: str = "/v1/status") -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=STATUS_TIMEOUT_S) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def render_table(nodes: Sequence[NodeProcess], started: float) -> str:
    header = f"{'node':<8}{'state':<10}{'round':>6}{'bpb':>8}{'commits':>9}{'view':>6}{'members':>8}" \
             f"{'sent MB':>9}{'experts':>9}  hash"
    lines = [f"moe-swarm up — {len(nodes)} nodes, {time.monotonic() - started:.0f}s", header]
    for n in nodes:
        s = n.status
        state = s.get("phase", "starting") if n.alive() else "down"
        experts = s.get("experts")
        lines.append(
            f"{n.name:<8}{state:<10}{_fmt(s.get('round')):>6}{_fmt(s.get('heldout_bpb'), '.3f'):>8}"
            f"{_fmt(s.get('commits')):>9}{_fmt(s.get('view')):>6}{_fmt(s.get('members')):>8}"
            f"{_fmt((s.get('bytes_sent') or 0) / 1e6, '.2f'):>9}"
            f"{(len(experts) if isinstance(experts, list) else '-'):>9}  {str(s.get('state_hash', '-'))[:12]}"
        )
    return "\n".join(lines)


def write_curves(root: Path, history: list[dict[str, Any]], baseline: Path) -> Path | None:
    """The swarm's held-out bpb per round as CSV and PNG, with the single-node baseline if present."""
    if not history:
        return None
    csv_path = root / "swarm_loss.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["round", "tokens", "heldout_bpb"])
        for row in history:
            writer.writerow([row.get("round"), row.get("tokens"), row.get("heldout_bpb")])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    points = [(float(r["tokens"]), float(r["heldout_bpb"])) for r in history
              if r.get("heldout_bpb") is not None and r.get("tokens") is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="swarm (held-out)")
    if baseline.is_file():
        xs, ys = [], []
        with baseline.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("heldout_bpb") and row.get("tokens"):
                    xs.append(float(row["tokens"]))
                    ys.append(float(row["heldout_bpb"]))
        if xs:
            ax.plot(xs, ys, label="single node (held-out)")
    ax.set_xlabel("training tokens (all nodes)")
    ax.set_ylabel("bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    png = root / "swarm_loss.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return png


def stop_all(nodes: Sequence[NodeProcess]) -> None:
    for n in nodes:
        if n.alive() and n.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                n.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for n in nodes:
        if n.proc is None:
            continue
        try:
            n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not drain in %.0fs: killing it", n.name, STOP_TIMEOUT_S)
            n.proc.kill()
            n.proc.wait()


def _validate(args: argparse.Namespace) -> None:
    if not 1 <= args.nodes <= 64:
        raise CliError("--nodes must be between 1 and 64")
    if not 0 <= args.byzantine < args.nodes:
        raise CliError("--byzantine must be at least 0 and less than --nodes")
    if args.rounds < 0:
        raise CliError("--rounds cannot be negative")
    if not 1024 <= args.base_port <= 65535 - 2 * args.nodes:
        raise CliError("--base-port leaves no room for the nodes' ports")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    root = Path(args.dir)
    if args.fresh and root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    nodes = build_nodes(args, root)
    _check_ports(nodes)
    token = (root / "admin_token").read_text(encoding="utf-8").strip()
    rng = random.Random(args.seed)
    tty = sys.stdout.isatty() and not args.json
    started = time.monotonic()
    last_round_printed = -1
    last_chaos_round = 0
    for n in nodes:
        n.start()
    print(f"started {len(nodes)} nodes; logs in {root}/node-*/node.log; admin token in {root}/admin_token")
    try:
        while True:
            time.sleep(POLL_INTERVAL_S)
            for n in nodes:
                status = fetch_status(n.admin_port, token) if n.alive() else None
                if status is not None:
                    n.status = status
            rounds = [int(n.status.get("round", 0)) for n in nodes if n.alive() and n.status]
            current = min(rounds) if rounds else 0
            if tty:
                print("\x1b[2J\x1b[H" + render_table(nodes, started), flush=True)
            elif current > last_round_printed:
                print(render_table(nodes, started), flush=True)
                last_round_printed = current
            if args.chaos and current - last_chaos_round >= args.chaos_every and current > 0:
                last_chaos_round = current
                victim = rng.choice(nodes)
                if victim.proc is not None and victim.alive():
                    print(f"chaos: kill -9 {victim.name} at round {current}", flush=True)
                    victim.proc.kill()
                    victim.proc.wait()
                    victim.restarts += 1
                    victim.start()
            finished = [n for n in nodes if n.proc is not None and n.proc.poll() is not None]
            failed = [n for n in finished if n.proc is not None and n.proc.returncode not in (0, None)]
            if failed and not args.chaos:
                for n in failed:
                    print(f"{n.name} exited with status {n.proc.returncode if n.proc else '?'}; "
                          f"last lines of {n.data_dir / 'node.log'}:\n{_tail(n.data_dir / 'node.log')}",
                          file=sys.stderr)
                stop_all(nodes)
                return 1
            if args.rounds and all(int(n.status.get("round", 0)) >= args.rounds for n in nodes if n.status) \
                    and len(rounds) + len(finished) >= len(nodes) and rounds:
                break
            if not args.chaos and len(finished) == len(nodes):
                break
    except KeyboardInterrupt:
        print("\nstopping: every node drains and leaves", flush=True)
    history = _history(nodes, token)
    stop_all(nodes)
    png = write_curves(root, history, Path(args.baseline))
    summary = _summary(nodes, history, time.monotonic() - started)
    print(render_table(nodes, started))
    if png is not None:
        print(f"loss curve: {png}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _check_ports(nodes: Sequence[NodeProcess]) -> None:
    """Refuse to start when a port is taken (an earlier swarm still running), with a clear message."""
    import socket

    for n in nodes:
        for port in (n.peer_port, n.admin_port):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    raise CliError(f"port {port} on 127.0.0.1 is in use (another swarm still running?); "
                                   f"stop it or pick --base-port") from None


def _history(nodes: Sequence[NodeProcess], token: str) -> list[dict[str, Any]]:
    for n in nodes:
        if n.alive():
            body = fetch_status(n.admin_port, token, "/v1/rounds?limit=1000")
            if body and isinstance(body.get("rounds"), list):
                # rounds this node applied itself: one it took by state transfer lists no contributors
                return [r for r in body["rounds"] if isinstance(r, dict) and r.get("source", "commit") == "commit"]
    return []


def _summary(nodes: Sequence[NodeProcess], history: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    hashes = {n.status.get("state_hash") for n in nodes if n.status}
    last = history[-1] if history else {}
    return {
        "nodes": len(nodes),
        "rounds": max((int(n.status.get("round", 0)) for n in nodes if n.status), default=0),
        "heldout_bpb": last.get("heldout_bpb"),
        "same_state_hash": len(hashes) == 1,
        "bytes_sent": sum(int(n.status.get("bytes_sent", 0)) for n in nodes if n.status),
        "restarts": sum(n.restarts for n in nodes),
        "commit_latencies_ms": [r.get("commit_latency_ms") for r in history if r.get("commit_latency_ms")],
        # how many deltas each round's commit carried: fewer than the nodes means some came late
        "contributors_per_round": [len(r.get("contributors") or []) for r in history],
        "state_hashes": sorted(h for h in hashes if h),
        "wall_s": round(wall_s, 1),
    }
