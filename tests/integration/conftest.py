"""Integration tests: real sockets, real peers, real processes.

Every test under ``tests/integration`` carries the ``integration`` marker (added here,
so a new file cannot forget it); ``-m "not integration"`` runs the unit tests alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from tests.peers.scp import RunningScp, run_scp

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def scp(receive_context: ReceiveContext) -> Iterator[RunningScp]:
    """A running SCP with default settings (any calling AE)."""
    running = run_scp(receive_context)
    yield running
    stop_scp(running.server, grace_s=2)
