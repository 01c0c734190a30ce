from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from moeswarm import cli
from moeswarm.store import NodeStore

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"d_model": 8, "n_layers": 1, "n_experts": 2}


def weights(round: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(round)
    return {
        "trunk.tok_emb.weight": torch.randn(256, 8, generator=gen),
        "experts.000.layers.0.w_in": torch.randn(8, 16, generator=gen),
        "experts.001.layers.0.w_in": torch.randn(8, 16, generator=gen),
    }


def momentum(round: int) -> dict[str, torch.Tensor]:
    return {"trunk.tok_emb.weight": torch.full((256, 8), 0.1 * round)}


def make_node(data_dir: Path, rounds: tuple[int, ...] = (5, 10)) -> None:
    with NodeStore(data_dir) as store:
        for round in rounds:
            store.checkpoints.save(
                round, weights(round), state_hash=bytes([round]) * 32, epoch=1,
                meta={"model_config": CONFIG}, optimizer=momentum(round),
            )


def export(*argv: str | Path) -> int:
    return cli.main(["export", *map(str, argv)])


def test_export_round_trips_through_plain_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_node(tmp_path / "node")
    out = tmp_path / "round5.safetensors"
    assert export("--round", "5", "--data-dir", tmp_path / "node", out) == 0
    assert "wrote round 5" in capsys.readouterr().out

    loaded = load_file(str(out))
    assert set(loaded) == set(weights(5))  # no optimizer momentum unless asked for
    for name, tensor in weights(5).items():
        assert torch.equal(loaded[name], tensor)
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["round"] == "5"
    assert metadata["state_hash"] == (bytes([5]) * 32).hex()
    assert json.loads(metadata["model_config"]) == CONFIG


def test_export_latest_with_optimizer_from_the_only_node_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_node(tmp_path / ".moeswarm" / "n1")
    monkeypatch.chdir(tmp_path)
    assert export("--round", "latest", "--with-optimizer", "out.safetensors") == 0
    loaded = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(loaded["trunk.tok_emb.weight"], weights(10)["trunk.tok_emb.weight"])
    assert torch.equal(loaded["optimizer.trunk.tok_emb.weight"], momentum(10)["trunk.tok_emb.weight"])


def test_latest_skips_a_damaged_newest_checkpoint(tmp_path: Path) -> None:
    make_node(tmp_path / "node")
    manifest = tmp_path / "node" / "checkpoints" / f"{10:012d}.manifest"
    manifest.write_bytes(manifest.read_bytes()[:-10])
    out = tmp_path / "out.safetensors"
    assert export("--round", "latest", "--data-dir", tmp_path / "node", out) == 0
    assert torch.equal(load_file(str(out))["experts.001.layers.0.w_in"], weights(5)["experts.001.layers.0.w_in"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--round", "7"], "round 7 is not checkpointed in {node}; available rounds: 5, 10"),
        (["--round", "seven"], "--round must be a round number or 'latest', got 'seven'"),
        (["--round", "5", "--data-dir", "{tmp}/nowhere"], "{tmp}/nowhere is not a node data dir"),
        (["--round", "5", "--data-dir", "{node}", "{tmp}/no/such/dir/out.safetensors"], "does not exist"),
    ],
)
def test_export_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    node = tmp_path / "node"
    make_node(node)
    argv = [a.format(tmp=tmp_path, node=node) for a in argv]
    if "--data-dir" not in argv:
        argv += ["--data-dir", str(node)]
    if not any(a.endswith(".safetensors") for a in argv):
        argv.append(str(tmp_path / "out.safetensors"))
    assert export(*argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("moe-swarm export: error: ")
    assert message.format(tmp=tmp_path, node=node) in err
    assert not (tmp_path / "out.safetensors").exists()


def test_default_data_dir_must_be_unambiguous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert export("--round", "5", "out.safetensors") == 2
    assert "no --data-dir given and .moeswarm/ does not exist" in capsys.readouterr().err
    make_node(tmp_path / ".moeswarm" / "a", rounds=(5,))
    make_node(tmp_path / ".moeswarm" / "b", rounds=(5,))
    assert export("--round", "5", "out.safetensors") == 2
    assert "several node data dirs under .moeswarm/ (a, b); pass --data-dir" in capsys.readouterr().err


def test_export_cli_process_exit_code_and_message(tmp_path: Path) -> None:
    make_node(tmp_path / "node", rounds=(3,))
    proc = subprocess.run(
        [sys.executable, "-m", "moeswarm", "export", "--round", "4", "--data-dir", str(tmp_path / "node"),
         str(tmp_path / "out.safetensors")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"moe-swarm export: error: round 4 is not checkpointed in {tmp_path / 'node'}; available rounds: 3"
    ]
