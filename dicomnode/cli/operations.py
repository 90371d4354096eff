"""Operator commands on a node's database: ``results``, ``reprocess``, ``purge``.

Like ``status`` and ``retry`` they open only an existing database and work while a
node runs on it: the database is the source of truth, the running worker picks up
what they change on its next tick.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from dicomnode.cli.common import (
    destination_in_effect,
    fail,
    open_queue,
    processes,
    settings_in_effect,
)
from dicomnode.durations import parse_duration

__all__ = ["purge", "reprocess", "results"]

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder of the node.")]
DbUrl = Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL of the queue.")]


def _duration(text: str, option: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _finding_text(item: dict[str, Any]) -> str:
    label = item["label"] or "image"
    if item["decision"] == "not_assessed":
        reasons = ", ".join(item["not_assessed_reasons"]) or "no reason recorded"
        return f"{label} not assessed ({reasons})"
    probability = f" {item['probability']:.3f}" if item["probability"] is not None else ""
    return f"{label} {item['decision']}{probability}"


def result_line(row: dict[str, Any], *, destination: bool = True) -> str:
    """One study of :func:`dicomnode.web.studies.list_studies` as one line (no patient data).

    ``destination=False``: results are not sent anywhere, so a pending delivery reads
    "kept in results/" (as ``status`` says).
    """
    findings = "; ".join(_finding_text(f) for f in row["findings"]) or "no finding yet"
    models = ", ".join(row["models"]) or "-"
    purged = f" files purged {row['files_purged_at']}" if row["files_purged_at"] else ""
    received = row["timeline"]["last_received"] or "-"
    delivery = row["delivery"] if destination or row["delivery"] != "pending" else "kept in results/ (no destination)"
    return (f"{row['study_instance_uid']}  {received}  {row['state'] or '-'}  {findings}  "
            f"model {models}  delivery {delivery}{purged}")


def results(
    ctx: typer.Context,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list with the fields of GET /api/studies.")] = False,
    positive: Annotated[bool, typer.Option("--positive", help="Only studies with a finding decided present.")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Only studies received within this long, e.g. 24h, 30d.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many studies, newest first.")] = 100,
) -> None:
    """What the node concluded: one line per study (UID, time, state, findings, model, delivery).

    No patient data is printed. The same query serves ``GET /api/studies``.
    """
    from dicomnode.store.db import make_sessionmaker
    from dicomnode.store.queue import utcnow
    from dicomnode.web.studies import StudyFilter, list_studies

    settings = settings_in_effect(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    window = _duration(since, "--since") if since is not None else None
    filters = StudyFilter(positive=positive, since=utcnow() - window if window is not None else None, limit=limit)
    engine = open_queue(settings)
    try:
        with make_sessionmaker(engine)() as session:
            rows = list_studies(session, filters)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no study matches")
        return
    destination = destination_in_effect(settings, processes(settings)) is not None
    for row in rows:
        typer.echo(result_line(row, destination=destination))


def reprocess(
    ctx: typer.Context,
    study_uids: Annotated[list[str], typer.Argument(help="Study Instance UIDs to analyse again.")],
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    model: Annotated[
        str | None,
        typer.Option(help="Must be the model the node serves (a per-study model is not supported)."),
    ] = None,
) -> None:
    """Analyse studies again; the new SR supersedes the earlier one (Predecessor Documents Sequence).

    The studies get a ready job in the database; the running node's worker takes it on
    its next tick and sends the new results. Unknown studies, studies whose files were
    purged and studies without a usable image are refused, and then nothing changes.
    """
    from dicomnode.store.db import make_sessionmaker
    from dicomnode.store.queue import utcnow
    from dicomnode.store.reprocess import ReprocessError, reprocess_studies

    settings = settings_in_effect(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    running = processes(settings)
    workers = [p for p in running if p.role != "receiver"]
    if model is not None:
        serving = next((p.model for p in workers if p.model), None) or settings.model.name
        if model != serving:
            whose = "the running node serves" if workers else "the node's settings name"
            fail(f"--model {model}: {whose} model {serving!r} and a per-study model is not supported; "
                 f"restart the node with --model {model}, then reprocess")
    engine = open_queue(settings)
    try:
        with make_sessionmaker(engine).begin() as session:
            queued = reprocess_studies(session, study_uids, now=utcnow())
    except ReprocessError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    for item in queued:
        what = "queued for re-analysis as" if item.created else "already waiting for analysis in"
        typer.echo(f"study {item.study_instance_uid}: {what} job {item.job_id}")
    if not workers:
        typer.echo(f"note: no node worker is running on {settings.store.data_dir}; "
                   "the re-analysis starts when dicomnode serve runs")


def purge(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Only studies quiet for this long: 30d, 12h, 0s.")
    ],
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed and its size only.")] = False,
) -> None:
    """Remove the files of studies whose results were delivered (or processed, without a destination).

    Database rows stay and record when the files went. Studies with a job that is
    received, ready, running or failed, or with a send pending or failed, keep their files.
    """
    from dicomnode.store.db import make_sessionmaker
    from dicomnode.store.files import FileStore
    from dicomnode.store.purge import find_purgeable
    from dicomnode.store.purge import purge as purge_studies
    from dicomnode.store.queue import utcnow
    from dicomnode.store.space import human_bytes

    settings = settings_in_effect(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    age = _duration(older_than, "--older-than")
    delivered_only = destination_in_effect(settings, processes(settings)) is not None
    engine = open_queue(settings)
    files = FileStore(settings.store.data_dir)
    try:
        sessions = make_sessionmaker(engine)
        if dry_run:
            with sessions() as session:
                chosen = find_purgeable(session, files, older_than=age, now=utcnow(), delivered_only=delivered_only)
        else:
            chosen = purge_studies(sessions, files, older_than=age, now=utcnow(), delivered_only=delivered_only)
    finally:
        engine.dispose()
    verb = "would remove" if dry_run else "removed"
    for item in chosen:
        typer.echo(f"study {item.study_instance_uid}: {verb} {len(item.paths)} file(s), {human_bytes(item.size_bytes)} "
                   f"({item.size_bytes} bytes); last activity {item.last_activity.isoformat(timespec='seconds')}Z")
    total = sum(item.size_bytes for item in chosen)
    condition = "delivered" if delivered_only else "processed (no destination configured)"
    typer.echo(f"{verb} the files of {len(chosen)} {condition} studie(s) older than {older_than}: "
               f"{human_bytes(total)} ({total} bytes)")
