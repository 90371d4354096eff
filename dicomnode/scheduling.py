"""Periodic work of a serving node, run by an APScheduler 3.x BackgroundScheduler.

Two jobs, each ``max_instances=1, coalesce=True``:

- ``batch`` every ``interval_s``: re-queue expired leases, mark quiet studies READY,
  claim up to ``batch_size`` jobs, run the pipeline, record outcomes, and wake the send
  job (so a result leaves as soon as it exists). While a claim comes back full, more
  studies wait: the job claims again at once, up to :data:`DRAIN_BATCHES` batches a
  run, so a backlog drains at the model's pace rather than one batch per interval.
- ``send`` every ``interval_s`` and when a batch produced results: send due outbox
  entries, :data:`SEND_BATCH` per association, again at once while rounds are full,
  in a pipeline process when there is a pool (off the model process's GIL).
- ``retention`` every ``store.retention_interval_s`` (only with ``store.retention``):
  remove the files of finished studies older than the retention, at most
  :data:`RETENTION_BATCH` studies per run (:mod:`dicomnode.store.purge`).

All state lives in the database; :class:`NodeWorker` holds only handles, so the
receiver and this worker can run in separate processes on one database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from dicomnode import metrics
from dicomnode.config import DestinationSettings, SchedulerSettings
from dicomnode.pids import pid_alive
from dicomnode.pipeline import PipelineOptions, process_jobs
from dicomnode.store import queue
from dicomnode.store.files import FileStore
from dicomnode.workpool import is_broken, reopen

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from dicomnode.domain import NewResult
    from dicomnode.inference.runner import ModelRunner
    from dicomnode.sending.scu import SendOutcome

logger = logging.getLogger(__name__)

#: Most studies whose files one retention run removes (the next run takes the rest).
RETENTION_BATCH = 100

#: Most batches one run of the batch job processes back to back while claims come back full
#: (and most rounds of :data:`SEND_BATCH` results one run of the send job sends).
DRAIN_BATCHES = 100

#: Results sent per round of the send job (one association).
SEND_BATCH = 64


def in_windows(windows: list[str], moment: time) -> bool:
    """True when ``moment`` lies in one of the "HH:MM-HH:MM" windows (or none are set).

    A window whose end is before its start wraps past midnight ("22:00-06:00").
    """
    if not windows:
        return True
    for window in windows:
        start_text, end_text = window.split("-")
        start = time.fromisoformat(start_text)
        end = time.fromisoformat(end_text)
        if start <= end:
            if start <= moment < end:
                return True
        elif moment >= start or moment < end:
            return True
    return False


@dataclass
class TickReport:
    """What one batch tick did (for logs and tests)."""

    requeued: int = 0
    ready: int = 0
    claimed: int = 0
    done: int = 0
    failed: int = 0
    sent: int = 0
    send_failed: int = 0
    purged: int = 0


class NodeWorker:
    """Runs batches and sends results; every step is a short database transaction.

    Args:
        sessions: session factory of the queue database.
        files: the data folder.
        runner: the loaded model.
        scheduler: batch and retry settings.
        destination: where results go (``host=None``: results stay in the outbox).
        calling_ae_title: our AE title when sending.
        options: pipeline options.
        pool: executor for the pipeline's decoding and building stages
            (:func:`dicomnode.workpool.open_pool`); None = inline. The caller shuts it down.
        clock: returns naive UTC now (tests pass a fake one).
        local_clock: returns local wall time, for batch windows.
        retention: remove the files of finished studies quiet for this long
            (``store.retention``); None = keep them.
        retention_interval_s: seconds between two retention runs.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        files: FileStore,
        runner: ModelRunner,
        scheduler: SchedulerSettings,
        destination: DestinationSettings,
        calling_ae_title: str,
        options: PipelineOptions,
        pool: Executor | None = None,
        clock: Callable[[], datetime] = queue.utcnow,
        local_clock: Callable[[], datetime] = datetime.now,
        retention: timedelta | None = None,
        retention_interval_s: float = 3600.0,
    ) -> None:
        self.sessions = sessions
        self.files = files
        self.runner = runner
        self.scheduler = scheduler
        self.destination = destination
        self.calling_ae_title = calling_ae_title
        self.options = options
        self.pool = pool
        self.clock = clock
        self.local_clock = local_clock
        self.retention = retention
        self.retention_interval_s = retention_interval_s
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}"
        # A batch and a send run at the same time (the model is not idle while results
        # travel); two batches, or two sends of the same outbox rows, never do.
        self._batch_lock = threading.Lock()
        self._send_lock = threading.Lock()

    def recover_orphans(self) -> int:
        """Re-queue jobs that dead worker processes of this host left RUNNING (at start-up)."""
        own_pid = os.getpid()  # before our first claim, a claim with our pid is a past life's (containers reuse pids)
        with self.sessions.begin() as session:
            count = queue.requeue_orphaned(
                session, host=self.host, is_alive=lambda pid: pid != own_pid and pid_alive(pid)
            )
        if count:
            logger.info("re-queued %d job(s) left running by a dead worker", count)
        return count

    def tick(self) -> TickReport:
        """Sweep, claim and process one batch, then send what is due."""
        report = self.process_ready()
        with self._send_lock:
            self._send_due(report)
        return report

    def process_ready(self) -> TickReport:
        """Sweep, claim and process one batch (the batch job; sending is the send job's)."""
        report = TickReport()
        with self._batch_lock:
            now = self.clock()
            with self.sessions.begin() as session:
                report.requeued = queue.requeue_expired(session, lease_s=self.scheduler.lease_s, now=now)
                report.ready = len(queue.mark_stable(session, stable_after_s=self.scheduler.stable_after_s, now=now))
            if in_windows(self.scheduler.batch_windows, self.local_clock().time()):
                self._run_batch(report)
        return report

    def send_due(self) -> TickReport:
        """Send due outbox entries only (the send job)."""
        report = TickReport()
        with self._send_lock:
            self._send_due(report)
        return report

    def purge_expired(self) -> TickReport:
        """Remove the files of up to :data:`RETENTION_BATCH` finished studies older than ``retention``."""
        from dicomnode.store.purge import purge

        report = TickReport()
        if self.retention is None:
            return report
        with self._batch_lock, self._send_lock:  # not while a batch reads or a send reads files
            purged = purge(
                self.sessions, self.files, older_than=self.retention, now=self.clock(),
                delivered_only=self.destination.enabled, limit=RETENTION_BATCH,
            )
        report.purged = len(purged)
        return report

    def _run_batch(self, report: TickReport) -> None:
        with self.sessions.begin() as session:
            claims = queue.claim_batch(
                session, limit=self.scheduler.batch_size, now=self.clock(), worker=self.worker_id
            )
        report.claimed = len(claims)
        if not claims:
            return
        with metrics.BATCH_SECONDS.time():
            try:
                outcomes = process_jobs(claims, self.runner, self.files, self.options, self.pool)
            finally:
                if self.pool is not None and is_broken(self.pool):
                    self.pool = reopen(self.pool)
        # One transaction (one durable commit) for the whole claim: the results' files are
        # on disk already, and a crash before the commit re-runs the jobs after their lease.
        with self.sessions.begin() as session:
            for outcome in outcomes:
                for sop_uid, reason in outcome.skipped.items():
                    queue.skip_instance(session, sop_uid, reason)
                now = self.clock()
                if outcome.error is None:
                    if queue.complete_job(
                        session,
                        outcome.claim,
                        outcome.results,
                        now=now,
                        skip_reason=outcome.skip_reason,
                        findings=outcome.findings,
                    ):
                        report.done += 1
                    else:
                        logger.warning("job %d: claim lost before completion; results discarded", outcome.claim.job_id)
                        # Files of results an earlier job recorded (same UID) stay.
                        kept = queue.recorded_result_uids(session, [r.sop_instance_uid for r in outcome.results])
                        self._discard([r for r in outcome.results if r.sop_instance_uid not in kept])
                else:
                    state = queue.fail_job(
                        session,
                        outcome.claim,
                        outcome.error,
                        max_attempts=self.scheduler.max_attempts,
                        backoff_s=self.scheduler.retry_backoff_s,
                        now=now,
                    )
                    report.failed += 1
                    logger.warning("job %d: attempt failed (%s): %s", outcome.claim.job_id, state, outcome.error)

    def _discard(self, results: list[NewResult]) -> None:
        for result in results:
            self.files.remove(self.files.absolute(result.path))

    def _send_files(self, paths: list[Path]) -> list[SendOutcome]:
        """C-STORE ``paths`` over one association, in a pipeline process when there is a pool.

        pynetdicom spends about 0.35 ms of Python per P-DATA PDU (a 3 MB heatmap SC is ~190
        PDUs at the usual 16 KB): in the model's process that work would hold the GIL the
        model's thread needs. A broken or closed pool sends here instead; resending what a
        dead process may have sent is harmless (a PACS replaces an instance by its UID).
        """
        from dicomnode.sending.scu import send_files

        pool = self.pool
        if pool is not None and not is_broken(pool):
            try:
                return pool.submit(send_files, self.destination, self.calling_ae_title, paths).result()
            except (BrokenExecutor, RuntimeError) as exc:  # RuntimeError: the batch job reopened the pool
                logger.warning("sending in the pipeline processes failed (%s); sending from the node", exc)
        return send_files(self.destination, self.calling_ae_title, paths)

    def _send_due(self, report: TickReport) -> None:
        if not self.destination.enabled:
            return
        with self.sessions.begin() as session:
            due = queue.due_results(session, now=self.clock(), limit=SEND_BATCH)
        if not due:
            return
        outcomes = self._send_files([self.files.absolute(i.path) for i in due])
        with self.sessions.begin() as session:
            now = self.clock()
            for item, outcome in zip(due, outcomes):
                if outcome.ok:
                    queue.mark_result_sent(session, item.result_id, now=now)
                    report.sent += 1
                else:
                    queue.mark_result_failed(
                        session,
                        item.result_id,
                        outcome.error or "unknown send failure",
                        max_attempts=self.destination.max_attempts,
                        backoff_s=self.destination.retry_backoff_s,
                        backoff_max_s=self.destination.retry_backoff_max_s,
                        now=now,
                    )
                    report.send_failed += 1
        if report.send_failed:
            logger.warning("%d result(s) not accepted by the destination; will retry", report.send_failed)


def _run_logged(step: Callable[[], TickReport], name: str) -> TickReport | None:
    """Run one step; log what it did; None when it failed (logged, the next run retries)."""
    try:
        report = step()
    except Exception:  # the scheduler thread must survive; the rows keep the truth
        logger.exception("%s step failed; the next run will retry", name)
        return None
    if report.claimed or report.sent or report.send_failed or report.requeued or report.purged:
        logger.info("%s: %s", name, report)
    return report


def start_scheduler(worker: NodeWorker, settings: SchedulerSettings) -> BackgroundScheduler:
    """Start the background scheduler: the batch job every ``interval_s`` seconds and the
    send job every ``max(interval_s, 1)`` seconds and as soon as a batch produced results."""
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")

    def _batch() -> TickReport:
        report = worker.process_ready()
        if report.done:
            scheduler.modify_job("send", next_run_time=datetime.now(UTC))
        return report

    def _drain(step: Callable[[], TickReport], name: str, full: Callable[[TickReport], bool]) -> None:
        """Run ``step`` again at once while its report says it had a full load."""
        for _ in range(DRAIN_BATCHES):
            report = _run_logged(step, name)
            # A shutdown waits for this job: it stops after the round in hand.
            if report is None or not full(report) or not scheduler.running:
                return

    scheduler.add_job(
        _drain, "interval", seconds=settings.interval_s,
        args=[_batch, "batch", lambda report: report.claimed >= settings.batch_size],
        id="batch", max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        _drain, "interval", seconds=max(settings.interval_s, 1.0),
        args=[worker.send_due, "send", lambda report: report.sent + report.send_failed >= SEND_BATCH],
        id="send", max_instances=1, coalesce=True,
    )
    if worker.retention is not None:
        scheduler.add_job(
            _run_logged, "interval", seconds=worker.retention_interval_s, args=[worker.purge_expired, "retention"],
            id="retention", max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
        )
    scheduler.start()
    return scheduler
