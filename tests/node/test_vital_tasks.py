"""A node whose execute or tick loop dies must not stay up as a zombie that never
commits again: it stops with exit status 1 so its orchestrator restarts it from its checkpoint."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from moeswarm.node.daemon import NodeDaemon


def _bare_daemon() -> NodeDaemon:
    daemon = object.__new__(NodeDaemon)
    daemon.identity = SimpleNamespace(short_id="0123abcd")  # type: ignore[assignment]
    daemon._tasks = set()
    daemon.stopping = asyncio.Event()
    daemon.exit_status = 0
    return daemon


async def _fails() -> None:
    raise RuntimeError("decided commit lists a blob this node lacks")


async def _finishes() -> None:
    return None


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["execute", "tick"])
async def test_a_failed_vital_loop_stops_the_node_with_status_1(name: str) -> None:
    daemon = _bare_daemon()
    daemon.spawn(_fails(), name)
    await asyncio.wait_for(daemon.stopping.wait(), timeout=5)
    assert daemon.exit_status == 1


@pytest.mark.asyncio
async def test_a_failed_helper_task_or_a_finished_loop_does_not() -> None:
    daemon = _bare_daemon()
    daemon.spawn(_fails(), "fetch-blob")
    daemon.spawn(_finishes(), "execute")
    await asyncio.sleep(0.05)
    assert not daemon.stopping.is_set()
    assert daemon.exit_status == 0
