"""The inner loop as the round protocol uses it: repeatable, resumable, restricted to chosen experts."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from moeswarm.model.config import MoEConfig
from moeswarm.model.data import Corpus, load_stdlib
from moeswarm.model.model import MoETransformer
from moeswarm.model.state import expert_id_of_name, flat_state, load_flat_state, model_hash
from moeswarm.model.trainer import TrainConfig, Trainer

TINY = MoEConfig(name="test", d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=48, context=32)
FAST = TrainConfig(batch_size=4, lr=1e-2, warmup_steps=2, total_steps=20, eval_batches=2)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_stdlib()


def _cfg(**changes: object) -> TrainConfig:
    return dataclasses.replace(FAST, **changes)  # type: ignore[arg-type]


def test_same_seed_gives_the_same_state_hash(corpus: Corpus) -> None:
    a, b, c = (Trainer(MoETransformer(TINY, seed=s), corpus, _cfg(seed=s)) for s in (1, 1, 2))
    for t in (a, b, c):
        t.train(4)
    assert model_hash(a.model) == model_hash(b.model)
    assert model_hash(a.model) != model_hash(c.model)


def test_train_in_pieces_equals_train_at_once(corpus: Corpus) -> None:
    """The swarm calls train(H) once per round: optimizer, schedule and batches must carry over."""
    once = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg())
    pieces = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg())
    once.train(5)
    pieces.train(3)
    pieces.train(2)
    assert pieces.step == once.step == 5
    assert model_hash(pieces.model) == model_hash(once.model)


def test_a_stop_request_ends_training_at_the_next_step(corpus: Corpus) -> None:
    """A draining node asks its round of training to stop; the stats count only the steps taken."""
    trainer = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg())
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 3

    stats = trainer.train(10, stop)
    assert (stats.steps, trainer.step) == (3, 3)
    assert stats.tokens == 3 * FAST.batch_size * TINY.context
    assert math.isfinite(stats.train_bpb)
    assert trainer.train(5, lambda: True).steps == 0
    assert trainer.step == 3


def test_training_lowers_held_out_bits_per_byte(corpus: Corpus) -> None:
    trainer = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg(total_steps=40))
    before = trainer.evaluate()
    assert abs(before - 8.0) < 0.2
    stats = trainer.train(40)
    after = trainer.evaluate()
    assert after < before - 1.5
    assert stats.steps == 40
    assert stats.tokens == 40 * 4 * TINY.context
    assert math.isfinite(stats.train_bpb)


def test_evaluation_is_the_same_for_every_node_with_the_same_weights(corpus: Corpus) -> None:
    a = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg(seed=1), shard=(0, 3))
    b = Trainer(MoETransformer(TINY, seed=5), corpus, _cfg(seed=2), shard=(2, 3))
    a.train(2)
    load_flat_state(b.model, flat_state(a.model))
    assert a.evaluate() == b.evaluate()


def test_only_the_trainable_experts_change_and_the_set_can_move(corpus: Corpus) -> None:
    trainer = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg(), experts=[0, 2])
    before = flat_state(trainer.model)
    trainer.train(3)
    after = flat_state(trainer.model)
    assert {expert_id_of_name(n) for n in after if not torch.equal(before[n], after[n])} == {None, 0, 2}
    trainer.set_trainable([3])
    trainer.train(2)
    last = flat_state(trainer.model)
    assert {expert_id_of_name(n) for n in last if not torch.equal(after[n], last[n])} == {None, 3}


def test_set_shard_draws_from_the_new_shard_only(corpus: Corpus) -> None:
    trainer = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg(), shard=(0, 2))
    trainer.set_shard(1, 2)
    assert (trainer.shard.index, trainer.shard.count) == (1, 2)
    assert trainer.shard.windows == corpus.shard(1, 2, TINY.context).windows
    trainer.train(1)


def test_lr_schedules() -> None:
    cosine = TrainConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert cosine.lr_at(0) == pytest.approx(0.1)
    assert cosine.lr_at(9) == pytest.approx(1.0)
    assert cosine.lr_at(60) == pytest.approx(0.55)
    assert cosine.lr_at(110) == pytest.approx(0.1)
    assert cosine.lr_at(10_000) == pytest.approx(0.1)
    constant = TrainConfig(lr=0.5, warmup_steps=0, schedule="constant")
    assert constant.lr_at(0) == constant.lr_at(1000) == 0.5
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_loss_curve_files(corpus: Corpus, tmp_path: Path) -> None:
    trainer = Trainer(MoETransformer(TINY, seed=0), corpus, _cfg(eval_every=2))
    trainer.train(4)
    trainer.record_eval(trainer.evaluate())
    csv_path, png_path = trainer.write_curve(tmp_path)
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [math.isnan(float(r["heldout_bpb"])) for r in rows] == [True, False, True, False]
    assert png_path.read_bytes().startswith(b"\x89PNG")
