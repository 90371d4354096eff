"""``dicomnode results``, ``reprocess`` and ``purge`` through the real CLI on a real queue database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.config import StoreSettings
from dicomnode.domain import JobState
from dicomnode.store.db import make_engine, make_sessionmaker
from dicomnode.store.files import FileStore
from dicomnode.store.models import Job
from dicomnode.store.queue import utcnow
from tests.unit.store.studies import FILE_BYTES, make_study

runner = CliRunner()


@pytest.fixture
def node_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    return tmp_path / "node"


@pytest.fixture
def sessions(node_dir: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(StoreSettings(data_dir=node_dir))
    yield make_sessionmaker(engine)
    engine.dispose()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_results_prints_one_line_per_study_and_json_like_the_api(
    node_dir: Path, sessions: sessionmaker[Session]
) -> None:
    files = FileStore(node_dir)
    now = utcnow().replace(microsecond=0)
    positive = make_study(sessions, files, stage="sent", now=now, probability=0.9)
    negative = make_study(sessions, files, stage="done", now=now - timedelta(hours=1), probability=0.1)
    old = make_study(sessions, files, stage="sent", now=now - timedelta(days=3))

    code, out, _ = _run("results", "--data-dir", str(node_dir))
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [positive, negative, old]
    assert "sent" in lines[0] and "pneumonia present 0.900" in lines[0] and "model default v1.0" in lines[0]
    assert "delivery sent" in lines[0]
    # no destination: what is not sent stays in results/ (as ``status`` says)
    assert "pneumonia absent 0.100" in lines[1] and "delivery kept in results/ (no destination)" in lines[1]
    result = runner.invoke(
        app, ["results", "--data-dir", str(node_dir)],
        env={"DICOMNODE_DESTINATION__AE_TITLE": "PACS", "DICOMNODE_DESTINATION__HOST": "127.0.0.1"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "delivery pending" in result.stdout.splitlines()[1]

    code, out, _ = _run("results", "--data-dir", str(node_dir), "--json", "--positive", "--since", "24h")
    assert code == 0
    rows = json.loads(out)
    assert [r["study_instance_uid"] for r in rows] == [positive]
    assert {"state", "timeline", "findings", "models", "delivery", "present", "max_probability"} <= set(rows[0])
    assert rows[0]["findings"] == [
        {"label": "pneumonia", "decision": "present", "probability": 0.9, "not_assessed_reasons": []}
    ]


def test_results_refuses_a_bad_duration_in_one_line(node_dir: Path, sessions: sessionmaker[Session]) -> None:
    code, _, err = _run("results", "--data-dir", str(node_dir), "--since", "yesterday")
    assert code == 1
    assert "'yesterday'" in _one_error_line(err)


def test_reprocess_queues_a_job_and_refuses_unknown_studies(node_dir: Path, sessions: sessionmaker[Session]) -> None:
    study = make_study(sessions, FileStore(node_dir), stage="sent", now=utcnow())

    code, out, _ = _run("reprocess", "--data-dir", str(node_dir), study)
    assert code == 0, out
    assert f"study {study}: queued for re-analysis as job 2" in out
    assert "no node worker is running" in out
    with sessions() as session:
        assert [j.state for j in session.scalars(select(Job).order_by(Job.id))] == [JobState.SENT, JobState.READY]

    code, _, err = _run("reprocess", "--data-dir", str(node_dir), "1.2.3.999")
    assert code == 1
    assert "no study 1.2.3.999" in _one_error_line(err)


def test_reprocess_accepts_only_the_model_the_node_serves(node_dir: Path, sessions: sessionmaker[Session]) -> None:
    study = make_study(sessions, FileStore(node_dir), stage="sent", now=utcnow())
    code, _, err = _run("reprocess", "--data-dir", str(node_dir), "--model", "vit-tiny", study)
    assert code == 1
    assert "per-study model is not supported" in _one_error_line(err)
    code, out, _ = _run("reprocess", "--data-dir", str(node_dir), "--model", "default", study)
    assert code == 0 and "queued for re-analysis" in out


def test_purge_dry_run_lists_then_purge_removes(node_dir: Path, sessions: sessionmaker[Session]) -> None:
    files = FileStore(node_dir)
    now = utcnow()
    old = make_study(sessions, files, stage="sent", now=now - timedelta(days=40))
    young = make_study(sessions, files, stage="sent", now=now)
    pending = make_study(sessions, files, stage="running", now=now - timedelta(days=40))
    before = sorted(p for p in node_dir.rglob("*.dcm"))

    code, out, _ = _run("purge", "--data-dir", str(node_dir), "--older-than", "30d", "--dry-run")
    assert code == 0, out
    assert f"study {old}: would remove 3 file(s)" in out and f"({3 * FILE_BYTES} bytes)" in out
    assert young not in out and pending not in out
    assert sorted(p for p in node_dir.rglob("*.dcm")) == before

    code, out, _ = _run("purge", "--data-dir", str(node_dir), "--older-than", "30d")
    assert code == 0, out
    assert f"study {old}: removed 3 file(s)" in out
    assert len(list(node_dir.rglob("*.dcm"))) == len(before) - 3
    code, out, _ = _run("results", "--data-dir", str(node_dir), "--json")
    purged = {r["study_instance_uid"]: r["files_purged_at"] for r in json.loads(out)}
    assert purged[old] is not None and purged[young] is None and purged[pending] is None


def test_purge_needs_a_valid_age(node_dir: Path, sessions: sessionmaker[Session]) -> None:
    code, _, err = _run("purge", "--data-dir", str(node_dir), "--older-than", "30")
    assert code == 1
    assert "--older-than: invalid duration '30'" in _one_error_line(err)


def test_commands_do_not_create_a_database(tmp_path: Path) -> None:
    for args in (["results"], ["reprocess", "1.2.3"], ["purge", "--older-than", "1d"]):
        code, _, err = _run(*args, "--data-dir", str(tmp_path / "none"))
        assert code == 1 and "no node database" in _one_error_line(err)
    assert not (tmp_path / "none").exists()
