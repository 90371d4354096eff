"""Latency benchmark: one study's SR at the destination within S + I + 2 s (p50), idle node.

    .venv/bin/python bench/latency.py [--model default] [--stable-after 2] [--interval 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_dx_files  # noqa: E402
from _node import send, start_destination, start_node  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--stable-after", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    budget = args.stable_after + args.interval + 2.0
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        destination, dest_port = start_destination(work / "pacs")
        node, port = start_node(work / "node", args.model,
                                ["--destination", f"PACS@127.0.0.1:{dest_port}",
                                 "--stable-after", str(args.stable_after), "--interval", str(args.interval)])
        latencies: list[float] = []
        try:
            for n in range(args.repeats):
                files = write_dx_files(work / f"s{n}", 1, 2048, 2048, seed=n)
                start = time.monotonic()
                send(port, files)
                while len(list((work / "pacs").glob("SR*"))) <= n:
                    if time.monotonic() - start > 120:
                        raise SystemExit("no SR within 120 s")
                    time.sleep(0.05)
                latencies.append(time.monotonic() - start)
                print(f"study {n}: SR after {latencies[-1]:.2f} s", flush=True)
                time.sleep(args.interval)  # let the node go idle again
        finally:
            node.terminate()
            node.wait(timeout=60)
            destination.terminate()
    p50 = statistics.median(latencies)
    print(f"p50 {p50:.2f} s, max {max(latencies):.2f} s; budget S + I + 2 = {budget:.1f} s; "
          f"ratio p50/budget {p50 / budget:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
