"""Installing a transferred state and executing decided entries both replace the model's state.

A node catching up once applied the commit of round 6 (waiting for a blob) while the state of
round 7 arrived by transfer; the commit finished on top of round 7 and left the node at a round
6 no other node had, so it no-op'ed every later commit. These tests drive the consensus driver's
execution loop and state install with stand-ins for the model and the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from moeswarm.consensus import Kind, Proposal
from moeswarm.consensus.effects import Deliver, FetchState
from moeswarm.node.consensus_driver import ConsensusDriver
from moeswarm.node.daemon import NodeDaemon
from moeswarm.swarm.messages import StateOffer

STATE = b"\x07" * 32


class Model:
    """Stands in for the round driver: `apply` can be held open like one waiting for a blob."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.release = asyncio.Event()
        self.hold_round: int | None = None
        self.engine = SimpleNamespace(round=5, state_hash=b"\x05" * 32, epoch=0)
        self.heldout_bpb = None
        self.members: tuple[str, ...] = ()
        self.tracker = SimpleNamespace(advance=lambda *a: None)

    async def record_installed(self, seq: int, view: int, sender: str) -> None:
        self.events.append(f"record {self.engine.round}")

    async def apply(self, value: bytes, seq: int, view: int, started: float | None) -> None:
        round_ = int(value.decode())
        self.events.append(f"apply {round_} begins")
        if round_ == self.hold_round:
            await self.release.wait()
        self.engine.round = round_
        self.events.append(f"apply {round_} ends")


class Replica:
    def __init__(self) -> None:
        self.last_executed = 8
        self.executed_seqs: list[int] = []
        self.installed: list[int] = []
        self.view = 0

    def executed(self, seq: int, digest: bytes, now: float) -> list[Any]:
        self.executed_seqs.append(seq)
        self.last_executed = max(self.last_executed, seq)
        return []

    def install_state(self, seq: int, digest: bytes, now: float) -> list[Any]:
        self.installed.append(seq)
        self.last_executed = max(self.last_executed, seq)
        return []


def _driver(model: Model, replica: Replica, checkpoint_fails: bool = False) -> ConsensusDriver:
    daemon = object.__new__(NodeDaemon)
    daemon.identity = SimpleNamespace(short_id="0123abcd", node_id="0123abcd" * 8)  # type: ignore[assignment]
    daemon._tasks = set()
    daemon.stopping = asyncio.Event()
    daemon.exit_status = 0
    daemon.driver = model  # type: ignore[assignment]
    daemon.metrics = SimpleNamespace(  # type: ignore[assignment]
        rounds_committed=SimpleNamespace(inc=lambda: None), round=SimpleNamespace(set=lambda v: None))

    async def install_offer(sender: str, offer: StateOffer) -> int:
        model.events.append(f"install {offer.round}")
        model.engine.round = offer.round
        return 11

    async def save_checkpoint(seq: int) -> None:
        if checkpoint_fails:
            raise OSError(28, "No space left on device")
        model.events.append(f"checkpoint {model.engine.round} at seq {seq}")

    daemon.install_offer = install_offer  # type: ignore[method-assign]
    daemon.save_checkpoint = save_checkpoint  # type: ignore[method-assign]
    driver = object.__new__(ConsensusDriver)
    driver.daemon = daemon
    driver.replica = replica  # type: ignore[assignment]
    driver.config = SimpleNamespace(checkpoint_interval=1000)  # type: ignore[assignment]
    driver.applied = asyncio.Event()
    driver._queue = asyncio.Queue()
    driver._lock = asyncio.Lock()
    driver._dirty = False
    driver._proposed_at = {}
    driver._first_seen = {}
    driver._proposed_round = -1
    driver._executing = False
    driver._state_fetch = None
    driver._pending_state = None
    driver._state_lock = asyncio.Lock()
    driver._installed_seq = 0
    driver.poke = lambda: None  # type: ignore[method-assign]
    return driver


def _deliver(seq: int, round_: int) -> Deliver:
    return Deliver(seq=seq, epoch=0, view=0, proposal=Proposal(kind=Kind.VALUE, value=str(round_).encode()))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def _executing(driver: ConsensusDriver) -> AsyncIterator[None]:
    loop_task = asyncio.create_task(driver._execute_loop())
    try:
        yield
    finally:
        loop_task.cancel()


async def _apply_round_6_held_open(driver: ConsensusDriver, model: Model) -> None:
    """Seq 9 decides round 6, whose apply then waits (like one fetching a missing blob)."""
    model.hold_round = 6
    driver._queue.put_nowait(_deliver(9, 6))
    await _settle()


async def _offer_round_7_at_seq_11(driver: ConsensusDriver) -> None:
    driver._pending_state = FetchState(seq=11, epoch=0, state_digest=STATE, peers=("p",))
    await driver.on_state_offer("p" * 64, StateOffer(round=7, epoch=0, state_hash=STATE, manifest=b""))


@pytest.mark.asyncio
async def test_a_state_offer_waits_for_the_entry_being_executed_and_supersedes_older_ones() -> None:
    model, replica = Model(), Replica()
    driver = _driver(model, replica)
    async with _executing(driver):
        await _apply_round_6_held_open(driver, model)
        assert model.events == ["apply 6 begins"]

        await _offer_round_7_at_seq_11(driver)
        driver._queue.put_nowait(_deliver(10, 7))  # covered by the state installed at seq 11
        await _settle()
        assert model.events == ["apply 6 begins"], "the install must not run while a commit is applied"

        model.release.set()
        await _settle()
        assert model.events == ["apply 6 begins", "apply 6 ends", "install 7", "record 7", "checkpoint 7 at seq 11"]
        assert model.engine.round == 7

        driver._queue.put_nowait(_deliver(12, 8))
        await _settle()
        assert model.events[-2:] == ["apply 8 begins", "apply 8 ends"]
        assert "apply 7 begins" not in model.events
        assert replica.executed_seqs == [9, 12]


@pytest.mark.asyncio
async def test_a_state_offer_for_a_seq_already_executed_is_not_installed() -> None:
    model, replica = Model(), Replica()
    driver = _driver(model, replica)
    replica.last_executed = 11
    await _offer_round_7_at_seq_11(driver)
    await _settle()
    assert model.events == []
    assert model.engine.round == 5


@pytest.mark.asyncio
async def test_an_installed_state_holds_even_when_its_checkpoint_cannot_be_written() -> None:
    model, replica = Model(), Replica()
    driver = _driver(model, replica, checkpoint_fails=True)
    async with _executing(driver):
        await _offer_round_7_at_seq_11(driver)
        await _settle()
        assert replica.installed == [11], "the replica must learn of the install before the checkpoint"
        driver._queue.put_nowait(_deliver(10, 6))  # older than the installed state
        await _settle()
        assert model.engine.round == 7
        assert "apply 6 begins" not in model.events


@pytest.mark.asyncio
async def test_a_checkpoint_asked_for_meanwhile_waits_for_the_entry_being_executed() -> None:
    model, replica = Model(), Replica()
    driver = _driver(model, replica)
    async with _executing(driver):
        await _apply_round_6_held_open(driver, model)
        checkpoint = asyncio.create_task(driver.checkpoint_now())
        await _settle()
        assert not checkpoint.done()
        model.release.set()
        await asyncio.wait_for(checkpoint, timeout=5)
        assert model.events[-1] == "checkpoint 6 at seq 9"
