"""SQLAlchemy 2.0 typed models: the queue's single source of truth.

study 1--* instance *--1 job 1--* result
                          job 1--* finding

- ``Study``: one study; ``files_purged_at`` says its files were removed by
  ``dicomnode purge`` / ``store.retention`` (the rows stay; instances received
  before that time have no file any more).
- ``Instance``: one received SOP instance and where its Part-10 file lies.
- ``Job``: one inference run over the instances of a study that arrived together
  (a study is quiet for ``stable_after_s`` -> READY). Instances arriving after the
  job was claimed open a new job, which re-analyses every image of the study and
  produces a findings SR that supersedes the earlier one (``queue.claim_batch``).
- ``Result``: one produced object (SC or SR) and its delivery state (the outbox).
- ``Finding``: what a completed job concluded per source image and label (probability,
  threshold, decision or why not assessed, model, result UIDs): read by the web page
  and API without parsing SR files.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, Enum, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dicomnode.domain import FindingDecision, InstanceState, JobState, OutboxState, ResultKind

UID = String(64)


class Base(DeclarativeBase):
    """Declarative base; datetimes are stored as naive UTC."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=False)}


def _enum(enum_cls: type) -> Enum:
    return Enum(enum_cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Study(Base):
    __tablename__ = "study"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    files_purged_at: Mapped[datetime | None] = mapped_column(
        default=None, doc="when the received and produced files were removed (dicomnode purge); rows stay"
    )

    instances: Mapped[list[Instance]] = relationship(back_populates="study")


class Job(Base):
    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, ForeignKey("study.study_instance_uid"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.RECEIVED, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    last_instance_at: Mapped[datetime] = mapped_column(index=True)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    not_before: Mapped[datetime | None] = mapped_column(default=None, doc="retry not before (UTC)")
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    instances: Mapped[list[Instance]] = relationship(back_populates="job", order_by="Instance.received_at")
    results: Mapped[list[Result]] = relationship(back_populates="job", order_by="Result.id")
    findings: Mapped[list[Finding]] = relationship(back_populates="job", order_by="Finding.id")


class Instance(Base):
    __tablename__ = "instance"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, ForeignKey("study.study_instance_uid"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(255), doc="relative to the data folder")
    state: Mapped[InstanceState] = mapped_column(_enum(InstanceState))
    skip_reason: Mapped[str | None] = mapped_column(Text, default=None)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime]
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)

    study: Mapped[Study] = relationship(back_populates="instances")
    job: Mapped[Job] = relationship(back_populates="instances")


class Result(Base):
    __tablename__ = "result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    kind: Mapped[ResultKind] = mapped_column(_enum(ResultKind))
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(255), doc="relative to the data folder")
    state: Mapped[OutboxState] = mapped_column(_enum(OutboxState), default=OutboxState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="results")


class Finding(Base):
    """One label's conclusion on one source image of a completed job."""

    __tablename__ = "finding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, doc="the source image")
    label: Mapped[str | None] = mapped_column(String(64), default=None, doc="None: the image as a whole")
    probability: Mapped[float | None] = mapped_column(Float, default=None, doc="in [0, 1]")
    threshold: Mapped[float | None] = mapped_column(Float, default=None, doc="in [0, 1]")
    decision: Mapped[FindingDecision] = mapped_column(_enum(FindingDecision), index=True)
    not_assessed_reason: Mapped[str | None] = mapped_column(
        String(32), default=None, doc="a NotAssessedReason value when decision is not_assessed"
    )
    detail: Mapped[str | None] = mapped_column(Text, default=None, doc="one line, no PHI")
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(UID, default=None)
    sc_sop_instance_uid: Mapped[str | None] = mapped_column(UID, default=None)
    created_at: Mapped[datetime]

    job: Mapped[Job] = relationship(back_populates="findings")
