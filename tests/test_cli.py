from __future__ import annotations

import subprocess
import sys

from moeswarm import cli


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert cli.main([]) == 2
    assert "usage: moe-swarm" in capsys.readouterr().out


def test_module_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "moeswarm", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "moe-swarm" in proc.stdout
