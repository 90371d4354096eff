"""CLI adapters: predict writes SC + SR, status reads the queue, errors exit 1 with one line."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from dicomnode import __version__
from dicomnode.cli import app
from tests.helpers import free_port, make_cxr_dataset, make_tiny_model

runner = CliRunner()


def test_predict_writes_sc_and_sr(tmp_path: Path) -> None:
    manifest = make_tiny_model(tmp_path / "model")
    study = generate_uid()
    inputs = []
    for seed in (1, 2):
        path = tmp_path / f"in{seed}.dcm"
        make_cxr_dataset(study_uid=study, seed=seed).save_as(path, enforce_file_format=True)
        inputs.append(str(path))
    result = runner.invoke(app, ["predict", "--model", str(manifest), "--out", str(tmp_path / "out"), *inputs])
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(written) == 3
    modalities = sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in written)
    assert modalities == ["OT", "OT", "SR"]


def test_predict_applies_serve_rules_and_prints_one_line_per_file(tmp_path: Path) -> None:
    manifest = make_tiny_model(tmp_path / "model", threshold=0.0)
    study = generate_uid()
    good, abdomen, text = tmp_path / "good.dcm", tmp_path / "abdomen.dcm", tmp_path / "notes.txt"
    make_cxr_dataset(study_uid=study, seed=1).save_as(good, enforce_file_format=True)
    make_cxr_dataset(study_uid=study, seed=2, BodyPartExamined="ABDOMEN").save_as(abdomen, enforce_file_format=True)
    text.write_text("not a DICOM file")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(manifest), "--out", str(out), str(good), str(text), str(abdomen)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("good.dcm: pneumonia POSITIVE p=") and "(threshold 0.00)" in lines[0]
    assert lines[1].startswith("notes.txt: not DICOM or unreadable")
    assert lines[2] == "abdomen.dcm: not assessed: header not accepted (BodyPartExamined 'ABDOMEN' is not a chest)"
    assert "Test^Patient" not in result.output and "TEST-0001" not in result.output
    written = sorted(out.glob("*.dcm"))
    assert sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in written) == ["OT", "SR"]
    sr = next(dcmread(p) for p in written if p.name.startswith("findings_sr"))
    assert abdomen.exists() and len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 3


def test_predict_uses_the_first_copy_of_a_repeated_sop_instance_uid(tmp_path: Path) -> None:
    """Two files with one SOP Instance UID (Fake_MONOHR1 reuses the SIIM UID): serve keeps the first; so does predict."""
    manifest = make_tiny_model(tmp_path / "model")
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    original = make_cxr_dataset(seed=1)
    original.save_as(first, enforce_file_format=True)
    copy = make_cxr_dataset(seed=2, study_uid=str(original.StudyInstanceUID))
    copy.SOPInstanceUID = original.SOPInstanceUID
    copy.save_as(second, enforce_file_format=True)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(manifest), "--out", str(out), str(first), str(second)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("first.dcm: pneumonia")
    assert lines[1] == "second.dcm: not used: same SOP Instance UID as first.dcm (the first copy is used)"
    assert len(list(out.glob("findings_sr-*.dcm"))) == 1


def test_predict_exits_1_only_when_nothing_could_be_read(tmp_path: Path) -> None:
    manifest = make_tiny_model(tmp_path / "model")
    text = tmp_path / "notes.txt"
    text.write_text("not a DICOM file")
    result = runner.invoke(app, ["predict", "--model", str(manifest), "--out", str(tmp_path / "o"), str(text)])
    assert result.exit_code == 1
    assert "notes.txt: not DICOM or unreadable" in result.output


def test_predict_unknown_model_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "in.dcm"
    make_cxr_dataset().save_as(path, enforce_file_format=True)
    result = runner.invoke(app, ["predict", "--model", "no-such-model", "--out", str(tmp_path / "o"), str(path)])
    assert result.exit_code == 1
    assert "no-such-model" in result.output
    assert "Traceback" not in result.output


def test_status_json_on_an_empty_node(tmp_path: Path) -> None:
    from dicomnode.config import StoreSettings
    from dicomnode.store.db import make_engine

    make_engine(StoreSettings(data_dir=tmp_path)).dispose()
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["jobs"] == {} and summary["pending_sends"] == []


def test_status_without_a_database_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "no node database" in result.output


def test_bad_config_value_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[dicom]\nport = 99999\n")
    result = runner.invoke(app, ["--config", str(config), "config", "show"])
    assert result.exit_code == 1
    assert "dicom.port" in result.output


def test_config_show_is_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    assert json.loads(result.output)["dicom"]["ae_title"] == "DICOMNODE"


def test_config_show_redacts_the_http_token(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[http]\nport = 8080\ntoken = "very-secret-token-123"\n')
    result = runner.invoke(app, ["--config", str(config), "config", "show"])
    assert result.exit_code == 0
    assert json.loads(result.output)["http"] == {
        "port": 8080, "show_phi": False, "token": "<redacted>", "min_free_disk_mb": 500,
    }  # fmt: skip
    assert "very-secret" not in result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    return lines[0]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"dicomnode {__version__}"


@pytest.mark.parametrize(
    "where",
    [
        ["--config", "{file}", "config", "show"],
        ["config", "show", "--config", "{file}"],
        ["config", "show", "-c", "{file}"],
        ["config", "show", "--config={file}"],
    ],
)
def test_config_is_accepted_before_and_after_the_command(tmp_path: Path, where: list[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[dicom]\nae_title = "FROMFILE"\n')
    result = runner.invoke(app, [arg.format(file=config) for arg in where])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dicom"]["ae_title"] == "FROMFILE"


def test_hoisting_leaves_other_arguments_in_order() -> None:
    from dicomnode.cli.main import hoist_root_options

    assert hoist_root_options(["serve", "--port", "1", "--config", "a.toml", "--", "-c", "x"]) == [
        "--config", "a.toml", "serve", "--port", "1", "--", "-c", "x"
    ]


def test_status_takes_config_after_the_command(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[store]\ndata_dir = "{tmp_path / "from-config"}"\n')
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 1
    assert str(tmp_path / "from-config") in _one_error_line(result.output)


def test_toml_syntax_error_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[dicom]\nport = = 11112\n")
    result = runner.invoke(app, ["config", "show", "--config", str(config)])
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert str(config) in line and "line 2" in line


def test_unknown_environment_section_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_DESTINATON__HOST", "10.0.0.5")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert "DICOMNODE_DESTINATON__HOST" in line and "destination" in line


def test_serve_names_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    result = runner.invoke(
        app, ["serve", "--role", "receiver", "--port", str(free_port()), "--data-dir", str(not_a_folder)]
    )
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert str(not_a_folder) in line and "not a folder" in line
    assert "listen" not in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any folder: permissions cannot be tested")
def test_serve_names_an_unwritable_data_dir(tmp_path: Path) -> None:
    locked = tmp_path / "data"
    locked.mkdir(mode=0o500)
    result = runner.invoke(app, ["serve", "--role", "receiver", "--port", str(free_port()), "--data-dir", str(locked)])
    assert result.exit_code == 1
    line = _one_error_line(result.output)
    assert str(locked) in line and "cannot read and write" in line


@pytest.mark.parametrize("broken", ["unknown", "invalid-manifest", "no-weights"])
def test_serve_checks_the_model_before_creating_the_data_dir(tmp_path: Path, broken: str) -> None:
    if broken == "unknown":
        model, expected = "no-such-model", "no-such-model"
    elif broken == "invalid-manifest":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "manifest.json").write_text('{"name": "m"}')
        model, expected = str(tmp_path / "m" / "manifest.json"), "invalid model manifest"
    else:
        manifest = make_tiny_model(tmp_path / "m")
        weights = [p for p in manifest.parent.iterdir() if p != manifest]
        for path in weights:
            path.unlink()
        model, expected = str(manifest), "weights file"
    data_dir = tmp_path / "new-data"
    result = runner.invoke(app, ["serve", "--model", model, "--port", str(free_port()), "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and expected in result.output.splitlines()[0]
    assert not data_dir.exists()


def test_status_does_not_create_a_missing_database(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "queue.sqlite3"
    data_dir = tmp_path / "data"
    result = runner.invoke(app, ["status", "--db-url", f"sqlite:///{database}", "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert "no node database" in _one_error_line(result.output)
    assert not database.exists() and not database.parent.exists() and not data_dir.exists()


def test_status_names_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    result = runner.invoke(app, ["status", "--data-dir", str(not_a_folder)])
    assert result.exit_code == 1
    assert "not a folder" in _one_error_line(result.output)


def _node_with_work(data_dir: Path) -> dict[str, int]:
    """A node database with one FAILED job, one FAILED send and one send in backoff.

    Returns:
        job ids by what they are: ``failed`` (the FAILED job) and ``done`` (the results' job).
    """
    from dicomnode.config import StoreSettings
    from dicomnode.domain import InstanceState, NewResult, ResultKind
    from dicomnode.store import queue
    from dicomnode.store.db import make_engine, make_sessionmaker

    engine = make_engine(StoreSettings(data_dir=data_dir))
    sessions = make_sessionmaker(engine)
    now = queue.utcnow() - timedelta(minutes=5)
    with sessions.begin() as session:
        for study in ("1.2.826.0.1.1", "1.2.826.0.1.2"):
            queue.record_instance(
                session, study_instance_uid=study, series_instance_uid=study + ".1", sop_instance_uid=study + ".1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", path="incoming/x.dcm", state=InstanceState.ACCEPTED,
                skip_reason=None, calling_ae_title="TEST", now=now,
            )
        queue.mark_stable(session, stable_after_s=1, now=now + timedelta(seconds=2))
        failed, done = queue.claim_batch(session, limit=2, now=now + timedelta(seconds=2), worker="w")
        queue.fail_job(session, failed, "cannot decode", max_attempts=1, backoff_s=1, now=now)
        sr = "1.2.840.10008.5.1.4.1.1.88.33"
        queue.complete_job(session, done, [
            NewResult(ResultKind.FINDINGS_SR, "2.25.1", sr, "results/a.dcm"),
            NewResult(ResultKind.FINDINGS_SR, "2.25.2", sr, "results/b.dcm"),
        ], now=now)
        first, second = queue.due_results(session, now=now, limit=2)
        queue.mark_result_failed(session, first.result_id, "0xA700", max_attempts=1, backoff_s=1,
                                 backoff_max_s=1, now=now)
        queue.mark_result_failed(session, second.result_id, "refused", max_attempts=9, backoff_s=3600,
                                 backoff_max_s=3600, now=now)
    engine.dispose()
    return {"failed": failed.job_id, "done": done.job_id}


def _hold_pid_file(data_dir: Path, destination: str | None, role: str = "all") -> AbstractContextManager[Path]:
    from dicomnode.store import pidfile

    return pidfile.hold(data_dir, pidfile.NodeProcess(os.getpid(), role, destination, "2026-01-01T00:00:00Z"))


def test_status_says_whether_a_node_runs_on_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _node_with_work(data_dir)
    result = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"node:      not running on {data_dir}"
    with _hold_pid_file(data_dir, "PACS@127.0.0.1:104"):
        result = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
        summary = json.loads(runner.invoke(app, ["status", "--data-dir", str(data_dir), "--json"]).output)
    assert result.exit_code == 0, result.output
    assert f"running (pid {os.getpid()} role all" in result.output.splitlines()[0]
    assert summary["node"]["running"] is True and summary["node"]["processes"][0]["pid"] == os.getpid()
    assert summary["destination"] == "PACS@127.0.0.1:104"
    # The destination of the running node counts, not that of this command's settings.
    assert "waiting to be sent to PACS@127.0.0.1:104" in result.output


def test_status_ignores_a_stale_pid_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _node_with_work(data_dir)
    (data_dir / "run").mkdir()
    (data_dir / "run" / "serve-4194300-0000.json").write_text('{"pid": 4194300, "role": "all"}')
    result = runner.invoke(app, ["status", "--data-dir", str(data_dir), "--json"])
    assert json.loads(result.output)["node"] == {"running": False, "processes": []}


def test_status_without_destination_says_results_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    _node_with_work(data_dir)
    result = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert f"1 result(s) stay in {data_dir / 'results'}/" in result.output
    assert "waiting to be sent" not in result.output
    monkeypatch.setenv("DICOMNODE_DESTINATION__HOST", "127.0.0.1")
    result = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert "waiting to be sent to PACS@127.0.0.1:104" in result.output


def test_retry_requeues_failed_jobs_and_sends(tmp_path: Path) -> None:
    from sqlalchemy import select

    from dicomnode.config import StoreSettings
    from dicomnode.domain import JobState
    from dicomnode.store import queue
    from dicomnode.store.db import make_engine, make_sessionmaker
    from dicomnode.store.models import Job

    data_dir = tmp_path / "data"
    jobs = _node_with_work(data_dir)
    with _hold_pid_file(data_dir, "PACS@127.0.0.1:104"):
        result = runner.invoke(app, ["retry", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert f"re-queued 1 failed job(s):\n  job {jobs['failed']} study 1.2.826.0.1.1\n" in result.output
    assert "2 send(s) due now (1 failed, 1 waiting for a retry)" in result.output
    assert "note:" not in result.output  # a worker with a destination runs
    engine = make_engine(StoreSettings(data_dir=data_dir))
    with make_sessionmaker(engine).begin() as session:
        assert session.get(Job, jobs["failed"]).state == JobState.READY  # type: ignore[union-attr]
        assert len(queue.due_results(session, now=queue.utcnow(), limit=5)) == 2
        assert session.scalars(select(Job.state).order_by(Job.id)).all() == [JobState.READY, JobState.DONE]
    engine.dispose()
    again = runner.invoke(app, ["retry", "--data-dir", str(data_dir)])
    assert again.output.startswith("nothing to retry")


def test_retry_without_a_node_or_destination_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _node_with_work(data_dir)
    result = runner.invoke(app, ["retry", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "no destination" in result.output and "no node worker is running" in result.output


def test_retry_does_not_create_a_database(tmp_path: Path) -> None:
    result = runner.invoke(app, ["retry", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "no node database" in _one_error_line(result.output)
    assert not (tmp_path / "nothing").exists()


#: Libraries `dicomnode --help` must not import (STYLE.md section 4; ruff TID253 in pyproject).
HEAVY_MODULES = ("torch", "torchvision", "timm", "highdicom", "pytorch_grad_cam", "sklearn")


def test_importing_the_cli_imports_no_heavy_library() -> None:
    """``import dicomnode.cli.main`` (what ``dicomnode --help`` runs) leaves torch & co. alone."""
    import subprocess
    import sys

    from dicomnode import __file__ as dicomnode_file

    code = (
        "import sys, dicomnode.cli.main, dicomnode.config; "
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(dicomnode_file).parents[1],  # this checkout's dicomnode
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported at CLI import time: {result.stdout.strip()}"


def test_cli_command_modules_do_not_import_the_app_module() -> None:
    """No import cycle: the command modules never import dicomnode.cli.main."""
    import ast

    import dicomnode.cli

    folder = Path(dicomnode.cli.__file__).parent
    for path in folder.glob("*.py"):
        if path.name in ("main.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
                assert "dicomnode.cli.main" not in names, f"{path.name} imports dicomnode.cli.main"
