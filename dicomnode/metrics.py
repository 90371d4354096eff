"""Prometheus metrics the node's processes record as they work (prometheus-client).

Counts that the database already holds (instances, jobs, results, findings, the
oldest pending send) are not recorded here: :mod:`dicomnode.web.collector` reads
them at scrape time, so they are right across processes and restarts. What is
recorded here is only what no row keeps: the C-STORE statuses answered (in every
receiving process) and the durations of batches and inference (in the worker).

``dicomnode serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a folder of the data folder,
see :mod:`dicomnode.web.multiproc`) before this module is first imported, so the
values of all its processes are summed at scrape time (prometheus-client's
multiprocess mode). Without it (tests, ``predict``) they stay in the process.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: Bucket bounds (s) of the batch and inference histograms: a tiny CPU model to a large batch.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

CSTORE_RESPONSES = Counter(
    "dicomnode_cstore_responses",
    "C-STORE requests answered, by DIMSE status (0x0000 success, 0xA700 out of resources, ...)",
    ["status"],
)
BATCH_SECONDS = Histogram(
    "dicomnode_batch_duration_seconds",
    "Wall time of one batch run: decode, inference, Grad-CAM, building and writing SC + SR",
    buckets=DURATION_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "dicomnode_inference_duration_seconds",
    "Wall time of the model passes (predictions and Grad-CAM) of one batch run",
    buckets=DURATION_BUCKETS,
)
IMAGES_ANALYSED = Counter("dicomnode_images_analysed", "Images the model analysed")
IMAGES_PER_SECOND = Gauge(
    "dicomnode_images_per_second",
    "Images analysed per second of inference time in the most recent batch run",
    multiprocess_mode="mostrecent",
)


def count_cstore_status(status: int) -> None:
    """Count one answered C-STORE with its DIMSE status (``0x0000`` ...)."""
    CSTORE_RESPONSES.labels(status=f"0x{status:04X}").inc()


def observe_inference(images: int, seconds: float) -> None:
    """Record one batch run's model passes: ``images`` analysed in ``seconds`` (wall time)."""
    INFERENCE_SECONDS.observe(seconds)
    IMAGES_ANALYSED.inc(images)
    if images and seconds > 0:
        IMAGES_PER_SECOND.set(images / seconds)
