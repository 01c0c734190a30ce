from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moeswarm import cli

ROOT = Path(__file__).resolve().parents[2]


def test_simulate_prints_a_summary_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--nodes", "4", "--byzantine", "1", "--seeds", "3", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    assert {"seeds", "nodes", "byzantine", "commits", "view_changes", "violations", "wall_s"} <= set(figures)
    assert figures["seeds"] == 3
    assert figures["violations"] == 0
    assert any(line.startswith("commit latency p99") for line in out)


def test_a_failing_schedule_says_how_to_reproduce_it(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--nodes", "4", "--byzantine", "1", "--seeds", "20", "--unsafe-quorum", "2"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "reproduce with:" in line)
    command = line.split("reproduce with: ", 1)[1].split()
    assert command[:2] == ["moe-swarm", "simulate"]
    assert cli.main(command[1:]) == 1  # the replay fails the same way
    replay = capsys.readouterr().out
    assert "VIOLATION" in replay
    assert " -> " in replay  # event by event


def test_bad_arguments_are_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--nodes", "4", "--byzantine", "2"]) == 2
    assert "--byzantine must be between 0 and 1" in capsys.readouterr().err
    assert cli.main(["simulate", "--faults", "gremlins"]) == 2
    assert "unknown fault" in capsys.readouterr().err
    assert cli.main(["simulate", "--trace"]) == 2


def test_jobs_run_in_worker_processes() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moeswarm",
            "simulate",
            "--nodes",
            "4",
            "--seeds",
            "4",
            "--jobs",
            "2",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["seeds"] == 4
    assert figures["jobs"] == 2
