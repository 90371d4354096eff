"""Operating a real ``dicomnode serve`` process: results, reprocess, purge, retention, low disk.

DCMTK storescu sends the studies, DCMTK storescp takes the results; the commands run
through the real CLI (Typer's CliRunner) on the node's data folder while it serves.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from dicomnode.cli import app
from tests.helpers import dcmtk, free_port, make_cxr_dataset, make_tiny_model, wait_for_port
from tests.integration.peers import StoreSCP, run_storescp, start_node, storescu, wait_until
from tests.integration.test_web import WebNode

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]

runner = CliRunner()
#: Patient attributes of the sent images: they must never appear in CLI output.
PHI = ("Doe^Jane", "Doe", "PID-4711")


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", threshold=0.0)  # every image positive


def _study(folder: Path, images: int = 2) -> tuple[str, list[Path]]:
    study_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(images):
        ds = make_cxr_dataset(study_uid=study_uid, seed=seed, rows=128, cols=128,
                              PatientName="Doe^Jane", PatientID="PID-4711")  # fmt: skip
        path = folder / f"img{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _rows(data_dir: Path) -> list[dict[str, Any]]:
    code, out, _ = _cli("results", "--data-dir", str(data_dir), "--json")
    if code != 0:  # the port opens before the database exists
        return []
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def _row(data_dir: Path, study_uid: str) -> dict[str, Any] | None:
    return next((r for r in _rows(data_dir) if r["study_instance_uid"] == study_uid), None)


def _srs(pacs: StoreSCP) -> list[Any]:
    return [ds for ds in (dcmread(p) for p in pacs.files()) if ds.Modality == "SR"]


def _predecessors(sr: Any) -> list[str]:
    return [
        str(sop.ReferencedSOPInstanceUID)
        for item in sr.get("PredecessorDocumentsSequence", [])
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]


def _stored_files(data_dir: Path) -> list[Path]:
    return [p for area in ("incoming", "results") for p in (data_dir / area).rglob("*") if p.is_file()]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    with run_storescp(tmp_path / "pacs") as scp:
        yield scp


def test_results_reprocess_and_purge_on_a_running_node(tmp_path: Path, model: Path, pacs: StoreSCP) -> None:
    data_dir = tmp_path / "node"
    study_uid, files = _study(tmp_path / "study")
    node = start_node(data_dir, ["--destination", pacs.spec, "--model", str(model), "--stable-after", "1",
                                 "--interval", "1", "--receivers", "1"])  # fmt: skip
    try:
        sent = storescu(node.port, files)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: (_row(data_dir, study_uid) or {}).get("state") == "sent", 120, "the results to be sent")

        # results: one line, no patient data; --json has the API's fields
        code, out, _ = _cli("results", "--data-dir", str(data_dir))
        assert code == 0
        (line,) = out.splitlines()
        assert line.startswith(study_uid) and " sent " in line and "pneumonia present" in line
        assert "model tiny-test_resnet v0.0.1" in line and "delivery sent" in line
        assert not any(text in out for text in PHI)
        row = _row(data_dir, study_uid)
        assert row is not None and row["positive"] is True and row["delivery"] == "sent"
        (first_sr,) = _srs(pacs)

        # reprocess: the running worker re-analyses it and sends an SR superseding the first
        code, out, _ = _cli("reprocess", "--data-dir", str(data_dir), study_uid)
        assert code == 0 and f"study {study_uid}: queued for re-analysis as job" in out, out
        wait_until(lambda: len(_srs(pacs)) == 2, 120, "the superseding SR at the PACS")
        (second_sr,) = [sr for sr in _srs(pacs) if sr.SOPInstanceUID != first_sr.SOPInstanceUID]
        assert _predecessors(second_sr) == [first_sr.SOPInstanceUID]
        assert second_sr.StudyInstanceUID == study_uid
        wait_until(lambda: (_row(data_dir, study_uid) or {}).get("state") == "sent", 60, "the re-run to be sent")

        code, _, err = _cli("reprocess", "--data-dir", str(data_dir), "1.2.3.404")
        assert code == 1 and err.strip().splitlines() == ["error: no study 1.2.3.404 in the node's database"]

        # purge: dry run lists and keeps, purge removes, the rows stay
        stored = _stored_files(data_dir)
        assert len(stored) == 2 + 2 + 2  # 2 images, 2 heatmap SCs (kept across the re-run), 2 SRs
        size = sum(p.stat().st_size for p in stored)
        code, out, _ = _cli("purge", "--data-dir", str(data_dir), "--older-than", "0s", "--dry-run")
        assert code == 0 and f"study {study_uid}: would remove 6 file(s)" in out and f"({size} bytes)" in out, out
        assert _stored_files(data_dir) == stored
        code, out, _ = _cli("purge", "--data-dir", str(data_dir), "--older-than", "0s")
        assert code == 0 and f"study {study_uid}: removed 6 file(s)" in out, out
        assert _stored_files(data_dir) == []
        row = _row(data_dir, study_uid)
        assert row is not None and row["files_purged_at"] is not None and row["state"] == "sent"
        code, _, err = _cli("reprocess", "--data-dir", str(data_dir), study_uid)
        assert code == 1 and "files were purged" in err
        assert node.process.poll() is None
    finally:
        assert node.stop() == 0


def test_retention_removes_processed_files_on_schedule(tmp_path: Path, model: Path) -> None:
    data_dir = tmp_path / "node"
    config = tmp_path / "node.toml"
    config.write_text('[store]\nretention = "0s"\nretention_interval_s = 1\n')
    study_uid, files = _study(tmp_path / "study", images=1)
    node = start_node(data_dir, ["--config", str(config), "--model", str(model), "--stable-after", "1",
                                 "--interval", "1", "--receivers", "1"])  # fmt: skip
    try:
        assert storescu(node.port, files).returncode == 0
        wait_until(lambda: (_row(data_dir, study_uid) or {}).get("files_purged_at") is not None, 120,
                   "the retention run to purge the processed study")  # fmt: skip
        assert _stored_files(data_dir) == []
        assert (_row(data_dir, study_uid) or {}).get("state") == "done"  # no destination: processed is enough
    finally:
        assert node.stop() == 0


def test_below_min_free_bytes_cstore_is_refused_and_health_and_status_say_why(tmp_path: Path, model: Path) -> None:
    data_dir = tmp_path / "node"
    config = tmp_path / "node.toml"
    config.write_text(f"[store]\nmin_free_bytes = {10**15}\n")  # 1 PB: never free
    _, files = _study(tmp_path / "study", images=1)
    http = free_port()
    node = start_node(data_dir, ["--config", str(config), "--model", str(model), "--receivers", "1",
                                 "--http-port", str(http)])  # fmt: skip
    try:
        wait_for_port(http)
        refused = subprocess.run([dcmtk("storescu"), "-v", "-aec", "DICOMNODE", "127.0.0.1", str(node.port),
                                  *map(str, files)], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        # DCMTK names 0xA700 "Refused: OutOfResources" (DU_cstoreStatusString) and exits non-zero
        assert "Received Store Response (Refused: OutOfResources)" in refused.stdout + refused.stderr, refused.stderr
        assert refused.returncode != 0
        assert _stored_files(data_dir) == []

        web = WebNode(node, http, "", 0)
        status, body, _ = web.get("/healthz")
        assert status == 503 and b"below store.min_free_bytes" in body, body

        code, out, _ = _cli("status", "--config", str(config), "--data-dir", str(data_dir))
        assert code == 0
        assert any(line.startswith("disk:") and "below store.min_free_bytes" in line for line in out.splitlines()), out

        echo = subprocess.run([dcmtk("echoscu"), "-aec", "DICOMNODE", "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert echo.returncode == 0, echo.stderr  # still serving
        assert node.process.poll() is None
    finally:
        assert node.stop() == 0
