"""Metrics read from the queue database at scrape time (the database is the source of truth).

Counts kept in rows are right across the receiving processes, a separate worker
and restarts without any bookkeeping in the processes; :func:`exposition` adds
the in-process values of :mod:`dicomnode.metrics` (summed over processes in
multiprocess mode).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.domain import FindingDecision, InstanceState, JobState, OutboxState
from dicomnode.store.models import Finding, Instance, Job, Result
from dicomnode.web import multiproc


class QueueCollector(Collector):
    """Collects the node's counts from the database on every scrape.

    Args:
        sessions: session factory of the queue database.
        data_dir: the data folder (its free space is reported).
        clock: naive UTC now.
    """

    def __init__(self, sessions: sessionmaker[Session], data_dir: Path, clock: Callable[[], datetime]) -> None:
        self.sessions = sessions
        self.data_dir = data_dir
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            instances = _counts(session, Instance.state)
            jobs = _counts(session, Job.state)
            results = _counts(session, Result.state)
            decisions = _counts(session, Finding.decision)
            oldest = session.scalar(select(func.min(Result.created_at)).where(Result.state == OutboxState.PENDING))
        received = CounterMetricFamily(
            "dicomnode_instances_received", "Instances stored and recorded, by outcome", labels=["outcome"]
        )
        for state in InstanceState:
            received.add_metric([state.value], instances.get(state.value, 0))
        yield received
        yield CounterMetricFamily(
            "dicomnode_results_sent", "Result objects (SC, SR) acknowledged by the destination",
            value=results.get(OutboxState.SENT.value, 0),
        )
        results_gauge = GaugeMetricFamily("dicomnode_results", "Result objects by delivery state", labels=["state"])
        for outbox_state in OutboxState:
            results_gauge.add_metric([outbox_state.value], results.get(outbox_state.value, 0))
        yield results_gauge
        jobs_gauge = GaugeMetricFamily("dicomnode_jobs", "Jobs (one per study arrival) by state", labels=["state"])
        for job_state in JobState:
            jobs_gauge.add_metric([job_state.value], jobs.get(job_state.value, 0))
        yield jobs_gauge
        findings = CounterMetricFamily(
            "dicomnode_findings", "Findings recorded (per image and label), by decision", labels=["decision"]
        )
        for decision in FindingDecision:
            findings.add_metric([decision.value], decisions.get(decision.value, 0))
        yield findings
        age = max((self.clock() - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "dicomnode_oldest_pending_send_age_seconds",
            "Age of the oldest result waiting to be sent (0: none waits)",
            value=age,
        )
        yield GaugeMetricFamily(
            "dicomnode_data_dir_free_bytes", "Free space in the data folder's file system",
            value=shutil.disk_usage(self.data_dir).free,
        )


def _counts(session: Session, column: object) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()  # type: ignore[call-overload]
    return {str(getattr(key, "value", key)): int(n) for key, n in rows}


def exposition(collector: QueueCollector) -> bytes:
    """The Prometheus text exposition: the database's counts and the processes' metrics.

    In multiprocess mode (:mod:`dicomnode.web.multiproc`) the values of every node
    process are merged from the metrics folder; otherwise this process's own.
    """
    from prometheus_client import REGISTRY

    import dicomnode.metrics  # noqa: F401  (defines the process metrics, also before any was used)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if multiproc.enabled():
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(registry) + generate_latest(REGISTRY)
