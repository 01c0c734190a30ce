"""A real dnsmasq on a loopback port serving the records a test writes (discovery tests, join end-to-end tests).

A and AAAA records live in an addn-hosts file, which dnsmasq re-reads on SIGHUP while it keeps running.
TXT and SRV records and per-domain upstreams live in the configuration file, which dnsmasq reads only at
start: changing those restarts it on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_WAIT_S_MAX = 10.0
START_TRIES_MAX = 5


def dnsmasq_binary() -> str | None:
    """dnsmasq lives in /usr/sbin, which a non-root PATH may not include."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for dnsmasq")


@dataclass
class Zone:
    """The records dnsmasq serves. `forward` sends a domain to another server (`127.0.0.1#port`)."""

    hosts: list[tuple[str, str]] = field(default_factory=list)  # (address, name)
    txt: list[tuple[str, str]] = field(default_factory=list)  # (name, text: commas allowed)
    srv: list[tuple[str, str, int]] = field(default_factory=list)  # (name, target, port)
    forward: list[tuple[str, str]] = field(default_factory=list)  # (domain, server)
    local_domains: Sequence[str] = ("internal", "cluster.local")


class Dnsmasq:
    """One dnsmasq process; `stop()` it (the fixture does) so that no process outlives the test."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.port = 0
        self.hosts_path = workdir / "hosts"
        self.conf_path = workdir / "dnsmasq.conf"
        self.log_path = workdir / "dnsmasq.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._zone = Zone()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, zone: Zone) -> None:
        """Starts on a fresh port (retrying if another process grabs it first)."""
        for _ in range(START_TRIES_MAX):
            self.port = free_port()
            if self._launch(zone):
                return
        raise RuntimeError(f"dnsmasq did not start; log:\n{self._log_text()}")

    def restart(self, zone: Zone) -> None:
        """Stops and starts again on the same port, for TXT, SRV and upstream changes."""
        self.stop()
        if not self._launch(zone):
            raise RuntimeError(f"dnsmasq did not restart on port {self.port}; log:\n{self._log_text()}")

    def set_hosts(self, hosts: Iterable[tuple[str, str]]) -> None:
        """Rewrites the A/AAAA records and waits until the running dnsmasq has re-read them."""
        assert self._proc is not None, "dnsmasq is not running"
        reads = self._log_text().count(f"read {self.hosts_path}")
        self._zone.hosts = list(hosts)
        self._write_hosts()
        self._proc.send_signal(signal.SIGHUP)
        self._wait_for_log(f"read {self.hosts_path}", reads + 1)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None

    def _launch(self, zone: Zone) -> bool:
        self._zone = zone
        self._write_hosts()
        self._write_conf()
        reads = self._log_text().count(f"read {self.hosts_path}")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "--keep-in-foreground", f"--conf-file={self.conf_path}"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        try:
            self._wait_for_log(f"read {self.hosts_path}", reads + 1)
        except RuntimeError:
            self.stop()
            return False
        return True

    def _write_hosts(self) -> None:
        self.hosts_path.write_text("".join(f"{addr} {name}\n" for addr, name in self._zone.hosts))

    def _write_conf(self) -> None:
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "cache-size=0",
            "pid-file=",
            f"addn-hosts={self.hosts_path}",
            f"log-facility={self.log_path}",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")  # else dnsmasq becomes nobody and cannot re-read the test's files
        forwarded = {domain for domain, _ in self._zone.forward}
        lines += [f"local=/{d}/" for d in self._zone.local_domains if d not in forwarded]
        lines += [f"server=/{domain}/{server}" for domain, server in self._zone.forward]
        lines += [f'txt-record={name},"{text}"' for name, text in self._zone.txt]
        lines += [f"srv-host={name},{target},{port}" for name, target, port in self._zone.srv]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _wait_for_log(self, marker: str, count: int) -> None:
        deadline = time.monotonic() + START_WAIT_S_MAX
        while time.monotonic() < deadline:
            if self._log_text().count(marker) >= count:
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self._proc.returncode}")
            time.sleep(0.01)
        raise RuntimeError(f"dnsmasq did not log {marker!r} within {START_WAIT_S_MAX}s")

    def _log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def dnsmasq_for_test(workdir: Path) -> Iterator[Dnsmasq]:
    """The body of a pytest fixture: a server in `workdir`, stopped afterwards; skips the test when
    dnsmasq is not installed."""
    binary = dnsmasq_binary()
    if binary is None:
        pytest.skip("dnsmasq is not installed (`apt-get install dnsmasq-base`; .ci/run installs it)")
    server = Dnsmasq(workdir, binary)
    yield server
    server.stop()
