"""Throughput benchmark: one-image studies through a running node, send to SR at a PACS.

Starts a DCMTK ``storescp`` (the PACS) and a real ``dicomnode serve`` forwarding to it,
sends N one-image studies with DCMTK ``storescu`` (``--associations`` in parallel) and
reports studies/s from the first byte sent to the last findings SR written by the PACS.
Reference, measured in the same run before the node starts: the raw model rate, i.e.
``ModelRunner.predict_and_explain`` (forward + Grad-CAM) on already-prepared tensors at
the node's batch size. Ratio = node studies/s / reference img/s.

    .venv/bin/python bench/throughput.py [--model default] [--studies 48] [--rows 1024]
        [--associations 2] [--batch-size 8] [--claim N] [--workers auto] [--device auto]

Needs the shared Kermany images for pixels the input gate accepts (see bench/_common.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GpuUtilisation, dcmtk, write_dx_files  # noqa: E402
from _node import children, start_destination, start_node  # noqa: E402


def reference_rate(model: str, files: list[Path], batch_size: int, device: str) -> tuple[float, str]:
    """Raw forward + Grad-CAM img/s on the prepared tensors of ``files``, at the fastest
    batch of three passes; (rate, device)."""
    from pydicom import dcmread

    from dicomnode.inference.preprocess import dicom_to_input
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner

    runner = ModelRunner.from_loaded(resolve_manifest(model), device=device)
    prepared = np.stack([dicom_to_input(dcmread(p), runner.manifest.preprocessing) for p in files])
    batches = [prepared[i : i + batch_size] for i in range(0, len(prepared), batch_size)]
    runner.predict_and_explain(batches[0])  # warm-up
    fastest = float("inf")
    for _ in range(3):  # the model at its fastest batch (see bench/pipeline.py)
        for batch in batches:
            start = time.perf_counter()
            runner.predict_and_explain(batch)
            fastest = min(fastest, time.perf_counter() - start)
    return batch_size / fastest, str(runner.device)


def send_all(port: int, files: list[Path], associations: int) -> None:
    """``associations`` storescu processes in parallel, the files dealt round-robin."""
    chunks = [files[i::associations] for i in range(associations)]
    senders = [
        subprocess.Popen([dcmtk("storescu"), "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, chunk)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for chunk in chunks if chunk
    ]
    for sender in senders:
        if sender.wait(timeout=600) != 0:
            raise SystemExit(f"storescu exited with {sender.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model name or manifest path")
    parser.add_argument("--studies", type=int, default=48, help="one-image studies to send")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--associations", type=int, default=2, help="parallel storescu processes")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (model.batch_size)")
    parser.add_argument("--claim", type=int, default=None,
                        help="studies per claim (scheduler.batch_size; default: the node's)")
    parser.add_argument("--workers", default="auto", help="scheduler.pipeline_processes of the node (auto, 0, N)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--py-spy", type=Path, metavar="SVG",
                        help="run the node under py-spy (pip install py-spy) and write its flame graph here "
                        "(collapsed stacks when the name ends in .txt)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the last SR")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        files = write_dx_files(work / "src", args.studies, args.rows, args.cols)
        reference, device = reference_rate(args.model, files, args.batch_size, args.device)
        print(f"# throughput: model {args.model} on {device}, {args.studies} one-image studies "
              f"{args.rows}x{args.cols} 16-bit, {args.associations} association(s), batch {args.batch_size}, "
              f"claim {args.claim or 'default'}, "
              f"workers {args.workers}")
        pacs_dir = work / "pacs"
        destination, dest_port = start_destination(pacs_dir)
        node, port = start_node(work / "node", args.model, [
            "--destination", f"PACS@127.0.0.1:{dest_port}", "--stable-after", "0.5", "--interval", "0.5",
            "--device", args.device,
        ], env={**({"DICOMNODE_SCHEDULER__BATCH_SIZE": str(args.claim)} if args.claim else {}),
                "DICOMNODE_MODEL__BATCH_SIZE": str(args.batch_size),
                "DICOMNODE_SCHEDULER__PIPELINE_PROCESSES": args.workers},
           wrap=[shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses",
                 "--format", "raw" if args.py_spy.suffix == ".txt" else "flamegraph",
                 "-o", str(args.py_spy.resolve()), "--"] if args.py_spy else None)
        gpu = GpuUtilisation(device)
        try:
            gpu.__enter__()
            start = time.monotonic()
            send_all(port, files, args.associations)
            sent_s = time.monotonic() - start
            deadline = start + args.timeout
            done = 0
            while time.monotonic() < deadline:
                done = len(list(pacs_dir.glob("SR*")))
                if done >= args.studies:
                    break
                if node.poll() is not None:
                    raise SystemExit(f"the node exited with {node.returncode}")
                time.sleep(0.05)
            elapsed = time.monotonic() - start
        finally:
            gpu.__exit__()
            for pid in children(node.pid) if args.py_spy else [node.pid]:  # py-spy writes when the node exits
                os.kill(pid, signal.SIGTERM)
            destination.terminate()
            node.wait(timeout=120)
            destination.wait(timeout=60)
        if done < args.studies:
            raise SystemExit(f"only {done} of {args.studies} SRs arrived within {args.timeout:.0f} s")

    rate = args.studies / elapsed
    print(f"all studies sent in {sent_s:.1f} s")
    print(f"reference forward+Grad-CAM (runner)   {reference:8.1f} img/s")
    print(f"node send-to-SR throughput            {rate:8.1f} studies/s")
    print(f"ratio node/reference: {rate / reference:.2f}")
    print(f"# {gpu.summary()}")


if __name__ == "__main__":
    main()
