"""Memory benchmark: resident memory of one ``dicomnode serve`` across many studies.

Sends ``--studies`` one-image studies in rounds with DCMTK storescu, waits for each
round's SRs at a DCMTK storescp destination, and samples the node's RSS after every
round: the node process and everything it started (receiving processes, pipeline
worker processes), per role and in total. Prints the total after the first round
(warm) and at the end, and the growth (target: within 10%).

    .venv/bin/python bench/memory.py [--model default] [--studies 1000] [--round 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_dx_files  # noqa: E402
from _node import rss_by_role, send, start_destination, start_node  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--round", type=int, default=50, help="studies sent per round")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        destination, dest_port = start_destination(work / "pacs")
        node, port = start_node(work / "node", args.model,
                                ["--destination", f"PACS@127.0.0.1:{dest_port}", "--stable-after", "0.5",
                                 "--interval", "0.5", "--batch-size", "16"])
        samples: list[float] = []
        sent = 0
        try:
            while sent < args.studies:
                count = min(args.round, args.studies - sent)
                files = write_dx_files(work / f"round{sent}", count, args.rows, args.cols, seed=sent)
                send(port, files)
                sent += count
                deadline = time.monotonic() + 600
                while len(list((work / "pacs").glob("SR*"))) < sent:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"only {len(list((work / 'pacs').glob('SR*')))} of {sent} SRs arrived")
                    time.sleep(0.2)
                for file in files:
                    file.unlink()
                sizes = rss_by_role(node.pid)
                samples.append(sizes["total"])
                parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(sizes.items()) if k != "total")
                print(f"{sent:5d} studies  RSS {samples[-1]:7.1f} MiB ({parts})", flush=True)
        finally:
            node.terminate()
            node.wait(timeout=60)
            destination.terminate()
    warm, last = samples[0], samples[-1]
    peak = max(samples)
    print(f"total RSS after first round {warm:.1f} MiB, at the end {last:.1f} MiB, peak {peak:.1f} MiB; "
          f"growth {100 * (last - warm) / warm:+.1f}% (target within 10%)")


if __name__ == "__main__":
    main()
