"""Pid files: held while a serve process runs, ignored and removed when stale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dicomnode.store import pidfile


def _record(pid: int, role: str = "all") -> pidfile.NodeProcess:
    return pidfile.NodeProcess(pid=pid, role=role, destination="PACS@127.0.0.1:104", started_at="2026-01-01T00:00:00Z")


def test_a_held_pid_file_is_running_and_removed_after(tmp_path: Path) -> None:
    assert pidfile.running(tmp_path / "missing") == []
    with pidfile.hold(tmp_path, _record(os.getpid())) as path:
        assert path.parent == tmp_path / "run"
        assert pidfile.running(tmp_path) == [_record(os.getpid())]
    assert not path.exists()
    assert pidfile.running(tmp_path) == []


def test_two_processes_of_one_node_are_both_listed(tmp_path: Path) -> None:
    with pidfile.hold(tmp_path, _record(os.getpid(), "receiver")), pidfile.hold(tmp_path, _record(1, "worker")):
        assert [p.role for p in pidfile.running(tmp_path)] == ["worker", "receiver"]  # by pid


def test_the_file_of_a_killed_process_is_stale(tmp_path: Path) -> None:
    """A process that dies without cleaning up (SIGKILL) leaves its file, but not its lock."""
    code = (
        "import os, sys; from pathlib import Path; from dicomnode.store import pidfile\n"
        "ctx = pidfile.hold(Path(sys.argv[1]), pidfile.NodeProcess(os.getpid(), 'all', None, ''))\n"
        "ctx.__enter__(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    leftovers = list((tmp_path / "run").glob("serve-*.json"))
    assert len(leftovers) == 1
    assert pidfile.running(tmp_path) == []
    with pidfile.hold(tmp_path, _record(os.getpid())):
        assert not leftovers[0].exists()  # the next serve removes it
        assert len(pidfile.running(tmp_path)) == 1
