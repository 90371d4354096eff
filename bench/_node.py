"""Run a real ``dicomnode serve`` and a DCMTK ``storescp`` destination for the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _common import REPO_ROOT, dcmtk, free_port, wait_for_port


def start_destination(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """DCMTK storescp (AE PACS) writing into ``folder``; returns (process, port)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "--aetitle", "PACS", "--output-directory", str(folder), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process, port


def start_node(
    data_dir: Path, model: str, extra: list[str], env: dict[str, str] | None = None, wrap: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """``dicomnode serve`` on 127.0.0.1; returns (process, port) once it listens.

    ``env``: extra environment variables (``DICOMNODE_...`` settings) for the node.
    ``wrap``: a command line the node runs under (e.g. ``py-spy record -o out.svg --``).
    """
    port = free_port()
    process = subprocess.Popen(
        [*(wrap or []), sys.executable, "-m", "dicomnode", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--model", model, "--log-level", "WARNING", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env={**os.environ, **(env or {})},
    )
    wait_for_port(port, timeout_s=180)
    # The port is bound before the model loads (receiving processes share it): TCP
    # connects early, DICOM is served once the node is ready. A C-ECHO waits for that.
    subprocess.run([dcmtk("echoscu"), "-aec", "DICOMNODE", "-to", "180", "127.0.0.1", str(port)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=200)
    return process, port


def send(port: int, files: list[Path]) -> None:
    """DCMTK storescu, one association."""
    subprocess.run([dcmtk("storescu"), "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, files)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _children_by_parent() -> dict[int, list[int]]:
    """Live pids per parent pid, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    return parents


def children(pid: int) -> list[int]:
    """Pids of the live child processes of ``pid``."""
    return _children_by_parent().get(pid, [])


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid`` (children, their children, ...)."""
    parents = _children_by_parent()
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def role(pid: int) -> str:
    """What a node process does, from its command line: node, receiver, pipeline or other."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "dicomnode.receiving.processes" in command:
        return "receiver"
    if "multiprocessing.spawn" in command:
        return "pipeline"
    if "dicomnode serve" in command or "-m dicomnode" in command:
        return "node"
    return "other"


def rss_by_role(pid: int) -> dict[str, float]:
    """RSS in MiB of a node process and its descendants, summed per :func:`role` (+ "total")."""
    sizes: dict[str, float] = {}
    for member in [pid, *descendants(pid)]:
        try:
            size = rss_mib(member)
        except (OSError, RuntimeError):
            continue
        kind = "node" if member == pid else role(member)
        sizes[kind] = sizes.get(kind, 0.0) + size
    sizes["total"] = sum(sizes.values())
    return sizes
