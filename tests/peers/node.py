"""A node's data folder and queue filled the way the receiver fills them, without a socket."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import InstanceState
from dicomnode.store import queue
from dicomnode.store.files import FileStore
from dicomnode.store.models import Instance


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


def instances(engine: Engine) -> list[Instance]:
    """Every recorded instance row."""
    with Session(engine) as session:
        return list(session.scalars(select(Instance)))


def incoming_files(data_dir: Path) -> list[Path]:
    """Every file under the data folder's ``incoming`` area (partial files included), sorted."""
    return sorted(p for p in (data_dir / "incoming").rglob("*") if p.is_file())


def assert_schema_at_head(engine: Engine) -> None:
    """The database is at the newest migration and its schema equals the models'."""
    from dicomnode.store.migrate import current_revision, head_revision, schema_diff

    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        assert schema_diff(connection) == []
