"""Re-analyse studies on an operator's request (``dicomnode reprocess``).

The database is the source of truth: a study is marked for re-analysis by giving it
a new READY job, exactly like the job an image arriving after the results opens
(:func:`dicomnode.store.queue.record_instance`), only without a new instance. The
running node's worker claims it on its next tick; the claim covers every accepted
instance of the study and names the study's latest findings SR as the predecessor,
so the new SR supersedes it (Predecessor Documents Sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from dicomnode.domain import InstanceState, JobState
from dicomnode.errors import DicomNodeError
from dicomnode.store import queue
from dicomnode.store.models import Instance, Job, Study

__all__ = ["ReprocessError", "Requeued", "reprocess_studies"]

class ReprocessError(DicomNodeError):
    """A study cannot be re-analysed (unknown, files purged, no usable image)."""


@dataclass(frozen=True)
class Requeued:
    """One study marked for re-analysis.

    Attributes:
        study_instance_uid: the study.
        job_id: the job that will re-analyse it.
        created: False when the study already had a waiting job (nothing was added).
    """

    study_instance_uid: str
    job_id: int
    created: bool


def _check(session: Session, uid: str) -> None:
    study = session.get(Study, uid)
    if study is None:
        raise ReprocessError(f"no study {uid} in the node's database")
    received_after = Instance.received_at > study.files_purged_at if study.files_purged_at is not None else true()
    usable = session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.study_instance_uid == uid, Instance.state == InstanceState.ACCEPTED, received_after)
    )
    if not usable:
        if study.files_purged_at is not None:
            raise ReprocessError(f"study {uid}: its files were purged at "
                                 f"{study.files_purged_at.isoformat(timespec='seconds')}Z; send it again to re-analyse it")
        raise ReprocessError(f"study {uid} has no image the model can use (every instance was skipped)")


def reprocess_studies(session: Session, study_uids: Sequence[str], *, now: datetime) -> list[Requeued]:
    """Give each study a READY job, unless one is already waiting. All or nothing.

    Args:
        session: open transaction.
        study_uids: Study Instance UIDs (repeats are ignored).
        now: naive UTC.

    Returns:
        one entry per study, in the order given.

    Raises:
        ReprocessError: a study is unknown, its files were purged, or it has no usable
            image; nothing is changed then.
    """
    unique = list(dict.fromkeys(study_uids))
    for uid in unique:
        _check(session, uid)
    done: list[Requeued] = []
    for uid in unique:
        waiting = queue.open_job(session, uid)
        if waiting is not None:
            done.append(Requeued(uid, waiting.id, created=False))
            continue
        job = Job(study_instance_uid=uid, state=JobState.READY, created_at=now, last_instance_at=now, ready_at=now)
        session.add(job)
        session.flush()
        done.append(Requeued(uid, job.id, created=True))
    return done
