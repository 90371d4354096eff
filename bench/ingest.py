"""Ingest benchmark: dicomnode's receiver vs DCMTK ``storescp --fork``, same sender, same run.

DCMTK ``storescu`` sends synthetic DX images over loopback, over 1 association and
over 4 parallel associations, large (2500x2048 16-bit, ~10 MB) and small (512x512).
A/B runs are interleaved; the ratio node/storescp is printed per case (>= 1.0 is
the target). CPU seconds are the receiving server's (and its children's).

    .venv/bin/python bench/ingest.py [--large 40] [--small 200] [--repeats 2]
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
from _common import (  # noqa: E402
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


def start_node(port: int, out: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "serve", "--role", "receiver", "--host", "127.0.0.1",
         "--port", str(port), "--data-dir", str(out), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
    )
    wait_for_port(port)
    return process


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


def run_case(kind: str, files: list[Path], associations: int, work: Path) -> Measurement:
    port = free_port()
    out = work / f"{kind}-{port}"
    server = start_storescp(port, out) if kind == "storescp" else start_node(port, out)
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        data = {
            "large": write_dx_files(work / "large", args.large, 2500, 2048),
            "small": write_dx_files(work / "small", args.small, 512, 512),
        }
        print(f"# ingest: DCMTK storescu -> receiver over 127.0.0.1, repeats={args.repeats}")
        for size, files in data.items():
            for associations in (1, 4):
                best: dict[str, Measurement] = {}
                for _ in range(args.repeats):
                    for kind in ("storescp", "dicomnode"):
                        m = run_case(kind, files, associations, work)
                        if kind not in best or m.images_per_s > best[kind].images_per_s:
                            best[kind] = m
                for kind in ("storescp", "dicomnode"):
                    print(f"{size:5s} " + best[kind].line())
                ratio = best["dicomnode"].images_per_s / best["storescp"].images_per_s
                print(f"{size:5s} ratio dicomnode/storescp x{associations}: {ratio:.2f}")


if __name__ == "__main__":
    main()
