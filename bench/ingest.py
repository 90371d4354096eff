"""Ingest benchmark: dicomnode's receiver vs DCMTK ``storescp --fork``, same sender, same run.

DCMTK ``storescu`` sends synthetic DX images over loopback, over 1 association and
over 4 parallel associations, large (2500x2048 16-bit, ~10 MB) and small (512x512).
A/B runs are interleaved; the ratio node/storescp is printed per case (>= 1.0 is
the target). CPU seconds are the receiving server's (and its children's).

The node runs with its defaults (``dicom.receiver_processes`` = CPU count, at most
4; every file flushed to disk with fdatasync before it is acknowledged, which
storescp does not do): that is the honest comparison. ``--no-fsync`` adds a third
contender, the node with ``store.fsync = false``, for reference only.

    .venv/bin/python bench/ingest.py [--large 40] [--small 200] [--repeats 2] [--receivers N] [--no-fsync]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_ROOT,
    Measurement,
    clean,
    dcmtk,
    free_port,
    process_tree_cpu,
    stop_and_cpu,
    wait_for_port,
    write_dx_files,
)

#: Both ends disable Nagle (DCMTK reads this variable), as the issue's reference figures did.
ENV = {**os.environ, "TCP_NODELAY": "1"}


def start_storescp(port: int, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [dcmtk("storescp"), "--fork", "--aetitle", "DICOMNODE", "--output-directory", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )
    wait_for_port(port)
    return process


def start_node(port: int, out: Path, *, receivers: int | None, fsync: bool) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "dicomnode", "serve", "--role", "receiver", "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(out), "--log-level", "WARNING"]
    if receivers is not None:
        command += ["--receivers", str(receivers)]
    env = {**os.environ, "DICOMNODE_STORE__FSYNC": "true" if fsync else "false"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
    wait_for_port(port)
    wait_settled(process.pid)
    return process


def wait_settled(pid: int, timeout_s: float = 30.0) -> None:
    """Wait until the node's extra receiving processes have started (their CPU time
    stops growing), so that their start-up is neither timed nor counted."""
    deadline = time.monotonic() + timeout_s
    last = -1.0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = process_tree_cpu(pid)
        if now - last < 0.02:
            return
        last = now


def send(port: int, files: list[Path], associations: int) -> None:
    chunks = [files[i::associations] for i in range(associations)]
    senders = [
        subprocess.Popen([dcmtk("storescu"), "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, chunk)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        for chunk in chunks
    ]
    for sender in senders:
        _out, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")


def run_case(kind: str, files: list[Path], associations: int, work: Path, receivers: int | None) -> Measurement:
    port = free_port()
    out = work / f"{kind}-{port}"
    if kind == "storescp":
        server = start_storescp(port, out)
    else:
        server = start_node(port, out, receivers=receivers, fsync=kind == "dicomnode")
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    try:
        cpu_before = process_tree_cpu(server.pid)
        start = time.perf_counter()
        send(port, files, associations)
        seconds = time.perf_counter() - start
        time.sleep(0.3)  # let forked storescp children exit and be reaped
        cpu = process_tree_cpu(server.pid) - cpu_before
    finally:
        stop_and_cpu(server)
    clean(out)
    return Measurement(f"{kind} x{associations}", len(files), seconds, megabytes, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=40, help="number of 2500x2048 images")
    parser.add_argument("--small", type=int, default=200, help="number of 512x512 images")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved A/B repeats per case")
    parser.add_argument("--receivers", type=int, default=None, help="node receiving processes (default: the node's)")
    parser.add_argument("--no-fsync", action="store_true", help="also run the node with store.fsync = false")
    args = parser.parse_args()
    kinds = ["storescp", "dicomnode"] + (["dicomnode-nofsync"] if args.no_fsync else [])
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        data = {
            "large": write_dx_files(work / "large", args.large, 2500, 2048),
            "small": write_dx_files(work / "small", args.small, 512, 512),
        }
        print(f"# ingest: DCMTK storescu -> receiver over 127.0.0.1, repeats={args.repeats} (best of), "
              f"{os.cpu_count()} CPUs, load average before: {load_average()}")
        for size, files in data.items():
            for associations in (1, 4):
                best: dict[str, Measurement] = {}
                for _ in range(args.repeats):
                    for kind in kinds:
                        m = run_case(kind, files, associations, work, args.receivers)
                        if kind not in best or m.images_per_s > best[kind].images_per_s:
                            best[kind] = m
                for kind in kinds:
                    print(f"{size:5s} " + best[kind].line())
                for kind in kinds[1:]:
                    ratio = best[kind].images_per_s / best["storescp"].images_per_s
                    print(f"{size:5s} ratio {kind}/storescp x{associations}: {ratio:.2f}", flush=True)
        print(f"# load average after: {load_average()}")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
