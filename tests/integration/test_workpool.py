"""The pipeline's worker processes: same results as inline, logs through the parent, errors kept."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.config import OutputSettings
from dicomnode.domain import ClaimedInstance, ClaimedJob
from dicomnode.errors import OutputBuildError
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.pipeline import PipelineOptions, process_jobs
from dicomnode.store.files import FileStore
from dicomnode.store.queue import utcnow
from dicomnode.workpool import InlineExecutor, is_broken, open_pool, pool_size, reopen
from tests.helpers import make_cxr_dataset, make_tiny_model


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    manifest = make_tiny_model(tmp_path_factory.mktemp("model"))
    return ModelRunner.from_loaded(resolve_manifest(str(manifest)), device="cpu")


@pytest.fixture(scope="module")
def pool() -> Iterator[Executor]:
    executor = open_pool(2)
    yield executor
    executor.shutdown(wait=True)


def _store(files: FileStore, ds: Dataset) -> ClaimedInstance:
    path = files.incoming_path(str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ClaimedInstance(str(ds.SOPInstanceUID), files.relative(path))


def _claims(files: FileStore) -> list[ClaimedJob]:
    """Three studies: two images, one MONOCHROME1 image, one good + one undecodable image."""
    studies = [str(generate_uid()) for _ in range(3)]
    rgb = make_cxr_dataset(study_uid=studies[2], seed=5)
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit = 8, 8, 7
    rgb.PixelData = np.zeros((64, 64, 3), np.uint8).tobytes()
    datasets = [
        [make_cxr_dataset(study_uid=studies[0], seed=s) for s in (1, 2)],
        [make_cxr_dataset(photometric="MONOCHROME1", study_uid=studies[1], seed=3)],
        [make_cxr_dataset(study_uid=studies[2], seed=4), rgb],
    ]
    return [
        ClaimedJob(n + 1, study, utcnow(), tuple(_store(files, ds) for ds in group))
        for n, (study, group) in enumerate(zip(studies, datasets))
    ]


@pytest.mark.parametrize("model_batch_size", [1, 8])
def test_process_pool_gives_the_inline_results(
    tmp_path: Path, runner: ModelRunner, pool: Executor, model_batch_size: int
) -> None:
    """Same outcomes, same result UIDs and bytes, whether the stages run inline or in processes
    (model batch 1: the model runs study groups while workers build the earlier ones)."""
    files = FileStore(tmp_path / "data")
    claims = _claims(files)
    options = PipelineOptions(OutputSettings(), model_batch_size=model_batch_size)
    inline = process_jobs(claims, runner, files, options)
    inline_objects = {r.sop_instance_uid: dcmread(files.absolute(r.path)) for o in inline for r in o.results}
    for result in (r for o in inline for r in o.results):
        files.absolute(result.path).unlink()
    pooled = process_jobs(claims, runner, files, options, pool)

    assert [o.error for o in pooled] == [None, None, None]
    assert [o.skipped for o in pooled] == [o.skipped for o in inline]
    assert list(pooled[2].skipped) == [claims[2].instances[1].sop_instance_uid]
    assert [o.results for o in pooled] == [o.results for o in inline]
    assert [o.findings for o in pooled] == [o.findings for o in inline]
    for result in (r for o in pooled for r in o.results):  # the same objects (times of creation aside)
        made, expected = dcmread(files.absolute(result.path)), inline_objects[result.sop_instance_uid]
        for keyword in ("PixelData", "ContentSequence", "CurrentRequestedProcedureEvidenceSequence"):
            assert made.get(keyword) == expected.get(keyword)


def _log_and_warn(message: str) -> str:
    import warnings

    logging.getLogger("dicomnode.test_worker").warning("record from a worker: %s", message)
    warnings.warn(f"warning from a worker: {message}", UserWarning, stacklevel=1)
    return message


def _fail(message: str) -> None:
    raise OutputBuildError(message)


def test_worker_logs_and_warnings_reach_the_parent_handlers(pool: Executor, caplog: pytest.LogCaptureFixture) -> None:
    """A worker prints nothing itself: its records (and captured warnings) are handled here,
    by the node's handlers and so its PHI guard."""
    caplog.set_level(logging.INFO)
    assert pool.submit(_log_and_warn, "hello").result(timeout=60) == "hello"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not {"dicomnode.test_worker", "py.warnings"} <= {r.name for r in caplog.records}:
        time.sleep(0.05)
    messages = [r.getMessage() for r in caplog.records]
    assert any("record from a worker: hello" in m for m in messages)
    # The warning, as text, or as the node's PHI guard shows a library warning once the
    # node's logging is configured (category and place, text withheld).
    warnings_seen = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert any(
        "warning from a worker: hello" in m or ("UserWarning" in m and "test_workpool.py" in m and "withheld" in m)
        for m in warnings_seen
    )


def test_errors_come_back_with_their_type(pool: Executor) -> None:
    with pytest.raises(OutputBuildError, match="bad object"):
        pool.submit(_fail, "bad object").result(timeout=60)
    with pytest.raises(OutputBuildError, match="bad object"):
        InlineExecutor().submit(_fail, "bad object").result()


def test_pool_size() -> None:
    assert pool_size(0) == 0 and pool_size(3) == 3 and pool_size("auto") >= 1
    with pytest.raises(ValueError, match=">= 0"):
        pool_size(-1)


def test_a_dead_worker_fails_the_batch_studies_and_the_pool_is_replaced(tmp_path: Path, runner: ModelRunner) -> None:
    """A worker process killed mid-run: the studies fail (and are retried later), no
    exception escapes, and :func:`reopen` gives a pool that works again."""
    files = FileStore(tmp_path / "data")
    claims = _claims(files)
    options = PipelineOptions(OutputSettings())
    broken = open_pool(1)
    try:
        assert broken.submit(pool_size, 1).result(timeout=60) == 1
        for process in list(broken._processes.values()):  # type: ignore[attr-defined]
            os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not is_broken(broken) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_broken(broken)
        outcomes = process_jobs(claims, runner, files, options, broken)
        assert all(o.error is not None and "BrokenProcessPool" in o.error for o in outcomes)
        assert all(o.results == [] for o in outcomes)
        fresh = reopen(broken)
    finally:
        broken.shutdown(wait=False)
    try:
        assert not is_broken(fresh)
        assert [o.error for o in process_jobs(claims, runner, files, options, fresh)] == [None, None, None]
    finally:
        fresh.shutdown(wait=True)


def test_a_file_store_travels_to_a_worker(tmp_path: Path, pool: Executor) -> None:
    """The store (which holds per-process locks) is sent as its folder and fsync flag."""
    files = FileStore(tmp_path / "data", fsync=False)
    copy = pool.submit(_identity, files).result(timeout=60)
    assert copy.data_dir == files.data_dir and copy.fsync is False


def _identity(value: FileStore) -> FileStore:
    return value


_OWNER = """
import sys, time
from dicomnode.workpool import open_pool
pool = open_pool(1)
pool.submit(int, 1).result(timeout=120)
print(*[p.pid for p in pool._processes.values()], flush=True)
time.sleep(600)
"""


def test_workers_end_when_their_node_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the node leaves no idle pipeline worker behind (it exits within seconds)."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert owner.stdout is not None
        workers = [int(pid) for pid in owner.stdout.readline().split()]
        assert workers and all(_alive(pid) for pid in workers)
    finally:
        owner.kill()
        owner.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
