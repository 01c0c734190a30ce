"""The engine's contract: every honest node that applies the same commit reaches the same state hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moeswarm.model.config import MoEConfig
from moeswarm.model.data import load_corpus
from moeswarm.model.trainer import TrainConfig
from moeswarm.swarm.apply import Contribution
from moeswarm.swarm.engine import DeltaRejected, EngineConfig, SwarmEngine

TINY = MoEConfig(name="test", d_model=32, n_layers=1, n_heads=2, n_experts=4, top_k=2, d_ff=32, context=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 4000)
    return load_corpus([str(path)])


def _engine(corpus, poison: str | None = None, seed: int = 0) -> SwarmEngine:  # type: ignore[no-untyped-def]
    cfg = EngineConfig(model=TINY, train=TrainConfig(batch_size=4, total_steps=10, seed=seed, warmup_steps=1),
                       codec="topk:0.1+int8+zstd", poison=poison)
    return SwarmEngine(cfg, corpus)


def _round(engines: list[SwarmEngine], steps: int = 2) -> list[Contribution]:
    contributions = []
    for i, e in enumerate(engines):
        e.set_assignment([i % 4, (i + 1) % 4], i, len(engines))
        e.train(steps)
        payload = e.encode(e.delta())
        contributions.append((f"n{i}", payload, e.allowed_names(e.owned)))
    return contributions  # type: ignore[return-value]


def test_genesis_is_identical_everywhere(corpus) -> None:  # type: ignore[no-untyped-def]
    assert _engine(corpus, seed=1).state_hash == _engine(corpus, seed=2).state_hash


def test_applying_the_same_commit_gives_the_same_hash(corpus) -> None:  # type: ignore[no-untyped-def]
    trainers = [_engine(corpus, seed=s) for s in range(3)]
    encoded = _round(trainers)
    appliers = [_engine(corpus, seed=9), _engine(corpus, seed=10)]
    hashes = []
    for applier in appliers:
        contributions = [
            Contribution(node_id=node, delta=applier.decode(payload, sorted(_names(applier, payload)), allowed))
            for node, payload, allowed in encoded  # type: ignore[misc]
        ]
        report = applier.apply(contributions, new_round=1, epoch=0)
        hashes.append(report.state_hash)
        assert report.accepted == ("n0", "n1", "n2")
    assert hashes[0] == hashes[1]
    assert hashes[0] != trainers[0].state_hash


def _names(engine: SwarmEngine, payload: bytes) -> list[str]:
    from moeswarm.codec import decode_delta

    return list(decode_delta(payload, elements_max=engine.elements_max()))


def test_delta_outside_owned_experts_is_rejected(corpus) -> None:  # type: ignore[no-untyped-def]
    e = _engine(corpus)
    e.set_assignment([0, 1], 0, 1)
    e.train(1)
    payload = e.encode(e.delta())
    names = _names(e, payload)
    with pytest.raises(DeltaRejected, match="does not own"):
        e.decode(payload, sorted(names), e.allowed_names([2, 3]))


def test_nan_poisoner_is_rejected_at_decode(corpus) -> None:  # type: ignore[no-untyped-def]
    e = _engine(corpus, poison="nan")
    e.set_assignment([0], 0, 1)
    e.train(1)
    delta = e.delta()
    payload = e.encode(delta)
    with pytest.raises(DeltaRejected, match="decode"):
        e.decode(payload, sorted(delta), e.allowed_names([0]))


def test_install_checks_the_hash(corpus) -> None:  # type: ignore[no-untyped-def]
    src, dst = _engine(corpus), _engine(corpus)
    src.weights = {k: v + 1.0 for k, v in src.weights.items()}
    src.round = 5
    src.state_hash = src._hash()
    with pytest.raises(DeltaRejected):
        dst.install(src.full_state(), 5, 0, b"\x00" * 32)
    dst.install(src.full_state(), 5, 0, src.state_hash)
    assert dst.state_hash == src.state_hash
    assert all(torch.equal(dst.weights[k], src.weights[k]) for k in src.weights)
