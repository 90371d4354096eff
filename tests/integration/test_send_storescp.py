"""The C-STORE SCU (sending/scu.py) and the worker's send step against DCMTK storescp on 127.0.0.1."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import SecondaryCaptureImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.config import DestinationSettings, OutputSettings, SchedulerSettings, StoreSettings
from dicomnode.domain import OutboxState
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.pipeline import PipelineOptions
from dicomnode.scheduling import NodeWorker
from dicomnode.sending.scu import send_files
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
from dicomnode.store.models import Result
from tests.helpers import free_port, make_cxr_dataset, make_tiny_model
from tests.integration.peers import run_storescp
from tests.peers.node import store_received

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]


def _sc_file(folder: Path, seed: int) -> tuple[Path, str]:
    ds: Dataset = make_cxr_dataset(sop_class_uid=SecondaryCaptureImageStorage, seed=seed)
    path = folder / f"sc{seed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def _received_uids(folder: Path) -> set[str]:
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.iterdir()
        if p.is_file()
    }


def test_results_are_sent_over_one_association_and_a_bad_file_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    first, first_uid = _sc_file(tmp_path / "out", 1)
    second, second_uid = _sc_file(tmp_path / "out", 2)
    broken = tmp_path / "out" / "broken.dcm"
    broken.write_bytes(b"not DICOM")
    with run_storescp(tmp_path / "pacs") as pacs:
        destination = DestinationSettings(
            ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port, timeout_s=10
        )
        outcomes = send_files(destination, "DICOMNODE", [first, broken, second])
    assert [(o.path, o.ok, o.status) for o in outcomes] == [
        (first, True, 0x0000),
        (broken, False, None),
        (second, True, 0x0000),
    ]
    assert _received_uids(tmp_path / "pacs") == {first_uid, second_uid}


def test_an_absent_destination_fails_every_result_with_the_reason(tmp_path: Path) -> None:
    path, _ = _sc_file(tmp_path, 1)
    destination = DestinationSettings(
        host="127.0.0.1", port=free_port(), timeout_s=5
    )  # nobody listens
    [outcome] = send_files(destination, "DICOMNODE", [path])
    assert (outcome.ok, outcome.status) == (False, None)
    assert outcome.error is not None and "association" in outcome.error


@pytest.mark.parametrize("processes", [0, 1], ids=["inline", "from-a-pipeline-process"])
def test_the_worker_sends_what_it_produced(tmp_path: Path, processes: int) -> None:
    from dicomnode.workpool import open_pool

    runner = ModelRunner.from_loaded(
        resolve_manifest(str(make_tiny_model(tmp_path / "model"))), device="cpu"
    )
    data_dir = tmp_path / "node"
    engine = make_engine(StoreSettings(data_dir=data_dir))
    sessions = make_sessionmaker(engine)
    files = FileStore(data_dir)
    t0 = datetime(2026, 1, 1, 12, 0)
    now = [t0]
    store_received(files, sessions, make_cxr_dataset(study_uid=generate_uid()), now=t0)
    try:
        with run_storescp(tmp_path / "pacs") as pacs:
            worker = NodeWorker(
                sessions,
                files,
                runner,
                SchedulerSettings(stable_after_s=10),
                DestinationSettings(
                    ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.port, timeout_s=10
                ),
                "DICOMNODE",
                PipelineOptions(OutputSettings()),
                pool=open_pool(processes) if processes else None,
                clock=lambda: now[0],
            )
            now[0] = t0 + timedelta(seconds=11)
            try:
                report = worker.tick()
            finally:
                if worker.pool is not None:
                    worker.pool.shutdown(wait=True)
        assert (report.done, report.sent, report.send_failed) == (1, 2, 0)  # heatmap SC + SR
        with Session(engine) as session:
            states = [r.state for r in session.scalars(select(Result))]
        assert states == [OutboxState.SENT, OutboxState.SENT]
        received = [
            pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "pacs").iterdir()
        ]
        assert (
            sorted(ds.file_meta.TransferSyntaxUID for ds in received)
            == [ExplicitVRLittleEndian] * 2
        )
    finally:
        engine.dispose()
