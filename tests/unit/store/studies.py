"""A study taken through the queue up to a chosen state, with real files in a data folder.

No model runs: the results and findings a worker would record are made up here, so
the store and CLI tests of purge, reprocess and results stay fast.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import FindingDecision, InstanceState, NewFinding, NewResult, ResultKind
from dicomnode.store import queue
from dicomnode.store.files import FileStore

Stage = Literal["received", "ready", "running", "done", "sent", "failed", "send_failed"]
#: Bytes of each made-up file.
FILE_BYTES = 1000


def make_study(
    sessions: sessionmaker[Session],
    files: FileStore,
    *,
    stage: Stage = "sent",
    now: datetime,
    images: int = 1,
    probability: float = 0.9,
    model: str = "default",
) -> str:
    """Receive ``images`` instances of a new study at ``now`` and take it to ``stage``.

    Each step happens one second after the previous one; ``done`` records a heatmap
    SC per image and one findings SR (files written), ``sent`` marks them delivered.

    Returns:
        the Study Instance UID.
    """
    study = generate_uid()
    with sessions.begin() as session:
        for _ in range(images):
            sop = generate_uid()
            path = files.incoming_path(sop)
            files.write_atomic(path, [b"\0" * FILE_BYTES])
            queue.record_instance(
                session, study_instance_uid=study, series_instance_uid=study + ".1", sop_instance_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=files.relative(path), state=InstanceState.ACCEPTED,
                skip_reason=None, calling_ae_title="MODALITY", now=now,
            )  # fmt: skip
    if stage == "received":
        return study
    t = now + timedelta(seconds=1)
    with sessions.begin() as session:
        queue.mark_stable(session, stable_after_s=1, now=t)
    if stage == "ready":
        return study
    with sessions.begin() as session:
        claims = [c for c in queue.claim_batch(session, limit=100, now=t, worker="test:1") if c.study_instance_uid == study]
    (claim,) = claims
    if stage == "running":
        return study
    t += timedelta(seconds=1)
    with sessions.begin() as session:
        if stage == "failed":
            queue.fail_job(session, claim, "boom", max_attempts=1, backoff_s=0, now=t)
            return study
        results, findings = [], []
        sr_uid = generate_uid()
        for instance in claim.instances:
            sc_uid = generate_uid()
            results.append(_result(files, ResultKind.HEATMAP_SC, sc_uid))
            findings.append(NewFinding(
                sop_instance_uid=instance.sop_instance_uid, label="pneumonia",
                decision=FindingDecision.PRESENT if probability >= 0.5 else FindingDecision.ABSENT,
                model_name=model, model_version="1.0", probability=probability, threshold=0.5,
                sr_sop_instance_uid=sr_uid, sc_sop_instance_uid=sc_uid,
            ))  # fmt: skip
        results.append(_result(files, ResultKind.FINDINGS_SR, sr_uid))
        assert queue.complete_job(session, claim, results, now=t, findings=findings)
    if stage == "done":
        return study
    t += timedelta(seconds=1)
    with sessions.begin() as session:
        for item in queue.due_results(session, now=t, limit=100):
            if item.job_id != claim.job_id:
                continue
            if stage == "send_failed":
                queue.mark_result_failed(session, item.result_id, "refused", max_attempts=1, backoff_s=0,
                                         backoff_max_s=0, now=t)  # fmt: skip
            else:
                queue.mark_result_sent(session, item.result_id, now=t)
    return study


def _result(files: FileStore, kind: ResultKind, uid: str) -> NewResult:
    path = files.result_path(uid)
    files.write_atomic(path, [b"\0" * FILE_BYTES])
    return NewResult(kind=kind, sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.7", path=files.relative(path))
