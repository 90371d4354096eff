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
