"""deploy/entrypoint.sh: hands Fly's root-owned volume to the node's user, drops root, passes arguments on."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
FAKE_NODE = """#!/bin/sh
echo "uid=$(id -u) gid=$(id -g) args=$*"
"""


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder any user can enter, with a stand-in `moe-swarm` that reports who runs it and with what."""
    top = Path(tempfile.mkdtemp(prefix="moeswarm-entrypoint-"))
    try:
        top.chmod(0o755)
        (top / "bin").mkdir(mode=0o755)
        fake = top / "bin" / "moe-swarm"
        fake.write_text(FAKE_NODE)
        fake.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


def run(world: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{world / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
        "MOESWARM_RUN_AS": "nobody",
        "MOESWARM_DATA_DIR": str(world / "data"),
    }
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_as_root_it_chowns_the_data_dir_and_runs_the_node_unprivileged(world: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    (world / "data").mkdir()  # as Fly mounts it: owned by root
    result = run(world, "--peers", "[fdaa::5]:7000")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"uid={nobody.pw_uid} gid={nobody.pw_gid} args=node --peers [fdaa::5]:7000"
    )
    assert (world / "data").stat().st_uid == nobody.pw_uid


def test_unprivileged_it_only_runs_the_node(world: Path) -> None:
    (world / "data").mkdir()
    owner = (world / "data").stat().st_uid
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run the script unprivileged")
        nobody = pwd.getpwnam("nobody")
        result = subprocess.run(
            [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                "sh",
                str(ENTRYPOINT),
                "--rounds",
                "3",
            ],
            env={"PATH": f"{world / 'bin'}:/usr/bin:/bin", "MOESWARM_DATA_DIR": str(world / "data")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        expected_uid = nobody.pw_uid
    else:
        result = run(world, "--rounds", "3")
        expected_uid = os.geteuid()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"uid={expected_uid} ")
    assert result.stdout.strip().endswith("args=node --rounds 3")
    assert (world / "data").stat().st_uid == owner
