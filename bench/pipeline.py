"""Pipeline benchmark: the node's batch pipeline vs the raw model forward + Grad-CAM.

Reference (same run, same model, same batch size): ``ModelRunner.predict_and_explain``
on already-prepared tensors — one forward pass and the Grad-CAM of every image,
nothing else — at its fastest batch of three passes; and, for context,
pytorch-grad-cam's stock ``GradCAM`` call. "model busy" is the wall time inside the
pipeline's model batches over the pipeline's wall time.
Pipeline: ``pipeline.process_jobs`` on claimed jobs whose files are on disk: read +
decode + window + resize, the same forward + Grad-CAM, overlay rendering, SC + SR
building and validation, atomic writes. Ratio = pipeline img/s / reference img/s
(target >= 0.8).

    .venv/bin/python bench/pipeline.py [--model default] [--images 48] [--batch-size 8] [--claim 32] [--workers auto]
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GpuUtilisation, write_dx_files  # noqa: E402


def _timed(fn: Callable[[np.ndarray], object], batch: np.ndarray) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def _model_seconds(histogram: object) -> float:
    """The ``_sum`` of the node's inference-seconds histogram (what /metrics exports)."""
    for metric in histogram.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                return float(sample.value)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model name or manifest path")
    parser.add_argument("--images", type=int, default=48, help="images (one study each)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (model.batch_size)")
    parser.add_argument("--claim", type=int, default=32, help="studies per pipeline run (scheduler.batch_size)")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--explain", default="all", choices=["all", "positive"])
    parser.add_argument("--workers", default="auto",
                        help='pipeline processes for decoding and building ("auto" = one per CPU, 0 = inline)')
    parser.add_argument("--profile", type=Path, help="write a cProfile of the pipeline part to this file")
    args = parser.parse_args()

    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from dicomnode.config import OutputSettings
    from dicomnode.explain.gradcam import find_cam_target
    from dicomnode.inference.preprocess import dicom_to_input
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner
    from dicomnode.metrics import INFERENCE_SECONDS
    from dicomnode.pipeline import PipelineOptions, process_jobs
    from dicomnode.store.files import FileStore
    from dicomnode.domain import ClaimedInstance, ClaimedJob
    from dicomnode.store.queue import utcnow
    from dicomnode.workpool import open_pool, pool_size
    from pydicom import dcmread

    workers = "auto" if args.workers == "auto" else int(args.workers)
    runner = ModelRunner.from_loaded(resolve_manifest(args.model), device=args.device)
    identity = runner.identity
    print(f"# pipeline: model {identity.name} ({identity.architecture}) on {runner.device}, "
          f"batch {args.batch_size}, {args.claim} studies per run, {args.images} images {args.rows}x{args.cols} 16-bit, "
          f"torch threads {torch.get_num_threads()}, pipeline processes {pool_size(workers)}")
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        work = Path(tmp)
        sources = write_dx_files(work / "src", args.images, args.rows, args.cols)
        files = FileStore(work / "data")
        claims = []
        for n, source in enumerate(sources):
            ds = dcmread(source, stop_before_pixels=True)
            target = files.incoming_path(str(ds.SOPInstanceUID))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            claims.append(ClaimedJob(n + 1, str(ds.StudyInstanceUID), utcnow(),
                                     (ClaimedInstance(str(ds.SOPInstanceUID), files.relative(target)),)))
        prepared = np.stack([dicom_to_input(dcmread(p), runner.manifest.preprocessing) for p in sources])
        batches = [prepared[i : i + args.batch_size] for i in range(0, len(prepared), args.batch_size)]

        # Warm-up (allocator, first-call costs, imports).
        runner.predict_and_explain(batches[0])
        pool = open_pool(workers)
        # spawns the pool's processes too; the timed run reuses them
        process_jobs(claims[: args.batch_size], runner, files, PipelineOptions(OutputSettings(), args.batch_size, args.explain), pool)

        # The stock Grad-CAM first: its full backward pass leaves the process's model
        # faster (allocator and kernel state) for the reference and the pipeline alike.
        target = find_cam_target(runner.model, runner.manifest.cam_target_layer)
        flags = [p.requires_grad for p in runner.model.parameters()]
        for parameter in runner.model.parameters():
            parameter.requires_grad_(True)  # stock Grad-CAM back-propagates through the whole model
        start = time.perf_counter()
        with GradCAM(runner.model, [target.layer], reshape_transform=target.reshape_transform) as cam:
            for batch in batches:
                tensor = torch.from_numpy(batch).to(runner.device)
                cam(tensor, targets=[ClassifierOutputTarget(0)] * len(batch))
        stock_s = time.perf_counter() - start
        for parameter, flag in zip(runner.model.parameters(), flags):
            parameter.requires_grad_(flag)

        # The model at its fastest: its quickest batch over three passes, as if every batch
        # went that fast. Back to back, batches run slower on this CPU than between other
        # work (as in the pipeline): a plain mean would flatter the ratio.
        fastest_s = min(_timed(runner.predict_and_explain, batch) for _ in range(3) for batch in batches)
        reference_s = fastest_s * len(sources) / args.batch_size  # n images at the fastest batch rate

        options = PipelineOptions(OutputSettings(), args.batch_size, args.explain)
        profiler = cProfile.Profile() if args.profile else None
        model_s_before = _model_seconds(INFERENCE_SECONDS)  # wall time inside the model, as /metrics reports it
        with GpuUtilisation(str(runner.device)) as gpu:
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            for i in range(0, len(claims), args.claim):
                outcomes = process_jobs(claims[i : i + args.claim], runner, files, options, pool)
                failed = [o.error for o in outcomes if o.error]
                if failed:
                    raise SystemExit(f"pipeline failed: {failed[0]}")
            pipeline_s = time.perf_counter() - start
        model_s = _model_seconds(INFERENCE_SECONDS) - model_s_before
        pool.shutdown(wait=True)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)

    n = len(sources)
    print(f"reference forward+Grad-CAM (runner)   {n / reference_s:8.1f} img/s")
    print(f"stock pytorch-grad-cam GradCAM        {n / stock_s:8.1f} img/s")
    print(f"node pipeline (decode..write)         {n / pipeline_s:8.1f} img/s")
    print(f"ratio pipeline/reference: {reference_s / pipeline_s:.2f}")
    print(f"# model busy {100 * model_s / pipeline_s:.0f} % of the pipeline's time; {gpu.summary()}")


if __name__ == "__main__":
    main()
