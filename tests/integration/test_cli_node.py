"""`dicomnode status` sees a real `dicomnode serve` process on its data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from tests.integration.peers import start_node, wait_until

pytestmark = [pytest.mark.integration]

runner = CliRunner()


def _node_status(data_dir: Path) -> dict[str, object]:
    result = runner.invoke(app, ["status", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    node = json.loads(result.output)["node"]
    assert isinstance(node, dict)
    return node


def _wait_until_up(data_dir: Path) -> None:
    """The port opens before the database is made: wait until status can read it."""
    wait_until(
        lambda: runner.invoke(app, ["status", "--data-dir", str(data_dir)]).exit_code == 0, 60, "the node's database"
    )


def test_status_reports_a_running_node_and_its_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = start_node(data_dir, ["--role", "receiver", "--receivers", "1"])
    _wait_until_up(data_dir)
    try:
        running = _node_status(data_dir)
        assert running["running"] is True
        assert [(p["pid"], p["role"]) for p in running["processes"]] == [(node.process.pid, "receiver")]  # type: ignore[attr-defined]
    finally:
        assert node.stop() == 0
    assert _node_status(data_dir) == {"running": False, "processes": []}


def test_status_reports_a_killed_node_as_not_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = start_node(data_dir, ["--role", "receiver", "--receivers", "1"])
    _wait_until_up(data_dir)
    node.process.kill()
    node.process.wait(timeout=30)
    assert list((data_dir / "run").glob("serve-*.json")), "SIGKILL leaves the pid file behind"
    assert _node_status(data_dir) == {"running": False, "processes": []}
