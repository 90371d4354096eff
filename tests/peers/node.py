"""A node's data folder and queue filled the way the receiver fills them, without a socket."""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import InstanceState
from dicomnode.store import queue
from dicomnode.store.files import FileStore


def store_received(
    files: FileStore,
    sessions: sessionmaker[Session],
    ds: Dataset,
    *,
    now: datetime,
    calling_ae_title: str = "MODALITY",
) -> str:
    """Write ``ds`` where the receiver would and record it as ACCEPTED; its SOP Instance UID."""
    uid = str(ds.SOPInstanceUID)
    path = files.incoming_path(uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    with sessions.begin() as session:
        queue.record_instance(
            session,
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=uid,
            sop_class_uid=str(ds.SOPClassUID),
            path=files.relative(path),
            state=InstanceState.ACCEPTED,
            skip_reason=None,
            calling_ae_title=calling_ae_title,
            now=now,
        )
    return uid
