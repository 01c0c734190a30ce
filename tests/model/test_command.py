"""`moe-swarm train` end to end: outputs a user and the store rely on, and clear errors for bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from moeswarm.model.config import MoEConfig, preset
from moeswarm.model.model import MoETransformer
from moeswarm.model.state import load_flat_state, model_hash, state_hash

REPO = Path(__file__).resolve().parents[2]


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moeswarm", "train", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "no such file or directory"), ("empty", "input is empty")],
)
def test_bad_data_gives_one_clear_line_and_a_failing_exit(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "corpus.txt"
    if kind == "empty":
        path.write_text("")
    proc = _train("--data", str(path), "--steps", "1", "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("moe-swarm train: error: ")
    assert message in lines[0]
    assert str(path) in lines[0]
    assert not (tmp_path / "out").exists()


def test_train_writes_loadable_weights_and_a_json_summary(tmp_path: Path) -> None:
    rng = random.Random(0)
    text = tmp_path / "text.py"
    text.write_text("".join(f"def f_{i}(x):\n    return x * {rng.randrange(1000)}\n" for i in range(800)))
    out = tmp_path / "run"
    proc = _train(
        "--data", str(text), "--steps", "4", "--batch-size", "4", "--eval-every", "2", "--eval-batches", "1",
        "--device", "cpu", "--out", str(out), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4
    assert summary["tokens_per_s"] > 0
    assert summary["seconds"] > 0
    assert 0 < summary["final_bpb"] < summary["initial_bpb"]
    assert "held-out" in proc.stdout

    state = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert state_hash(state).hex() == summary["state_hash"]
    config = MoEConfig.from_json((out / "config.json").read_text())
    assert config == preset("cpu-tiny")
    model = MoETransformer(config, seed=123)
    load_flat_state(model, state)
    assert model_hash(model).hex() == summary["state_hash"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "loss.csv").read_text().count("\n") == 1 + 4 + 1  # header, 4 steps, the step-0 evaluation
    assert (out / "loss.png").stat().st_size > 0


def test_bad_numbers_are_rejected(tmp_path: Path) -> None:
    proc = _train("--steps", "0", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "--steps must be positive" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error(tmp_path: Path) -> None:
    proc = _train("--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr
