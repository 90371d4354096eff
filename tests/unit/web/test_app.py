"""The web app in-process (Starlette TestClient) over a real queue database and real result files.

A study is received, processed by the real pipeline with a tiny random-weight model
and completed with its findings, exactly as the worker does; then the page, API,
heatmap PNG, metrics and health endpoints are read.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from dicomnode.config import HttpSettings, OutputSettings
from dicomnode.domain import FindingDecision, InstanceState, JobState, NewFinding, NotAssessedReason
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.pipeline import PipelineOptions, process_jobs
from dicomnode.store import queue
from dicomnode.store.db import make_sessionmaker
from dicomnode.store.files import FileStore
from dicomnode.store.models import Finding
from dicomnode.web.app import WebContext, build_app
from dicomnode.web.demo import DemoModels
from tests.helpers import make_cxr_dataset, make_tiny_model

T0 = queue.utcnow().replace(microsecond=0)
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # threshold 0: every label is decided present, so the study is positive and has heatmaps
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", labels=("pneumonia", "effusion"), threshold=0.0)


@dataclass
class Node:
    sessions: sessionmaker[Session]
    files: FileStore
    study_uid: str
    image_uids: list[str]


@pytest.fixture
def node(data_dir: Path, store_engine: Engine, tiny_manifest: Path) -> Node:
    """One study of two images received, processed and completed with findings."""
    sessions = make_sessionmaker(store_engine)
    files = FileStore(data_dir)
    study_uid = generate_uid()
    uids: list[str] = []
    with sessions.begin() as session:
        for seed in (1, 2):
            ds = make_cxr_dataset(study_uid=study_uid, seed=seed, rows=128, cols=128,
                                  PatientName="Doe^Jane", PatientID="PID-4711")
            path = files.incoming_path(str(ds.SOPInstanceUID))
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            uids.append(str(ds.SOPInstanceUID))
            queue.record_instance(
                session, study_instance_uid=study_uid, series_instance_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                path=files.relative(path), state=InstanceState.ACCEPTED, skip_reason=None,
                calling_ae_title="MODALITY", now=T0 + timedelta(seconds=seed - 1),
            )  # fmt: skip
        queue.mark_stable(session, stable_after_s=1, now=T0 + timedelta(seconds=2))
        claims = queue.claim_batch(session, limit=4, now=T0 + timedelta(seconds=3), worker="test:1")
    runner = ModelRunner.from_loaded(resolve_manifest(str(tiny_manifest)), device="cpu")
    (outcome,) = process_jobs(claims, runner, files, PipelineOptions(OutputSettings()))
    assert outcome.error is None
    with sessions.begin() as session:
        assert queue.complete_job(session, outcome.claim, outcome.results, now=T0 + timedelta(seconds=4),
                                  findings=outcome.findings)  # fmt: skip
    return Node(sessions, files, study_uid, uids)


def _client(node: Node, *, show_phi: bool = False, token: str | None = None,
            health: list[str] | None = None) -> TestClient:  # fmt: skip
    context = WebContext(
        sessions=node.sessions, files=node.files, http=HttpSettings(show_phi=show_phi, token=token),
        health=lambda: list(health or []), clock=lambda: T0 + timedelta(seconds=64), demo=DemoModels("cpu"),
    )
    return TestClient(build_app(context))


def test_complete_job_records_one_finding_per_image_and_label(node: Node) -> None:
    with node.sessions() as session:
        rows = session.scalars(select(Finding).order_by(Finding.id)).all()
    assert [(r.sop_instance_uid, r.label) for r in rows] == [
        (uid, label) for uid in node.image_uids for label in ("pneumonia", "effusion")
    ]
    assert {r.decision for r in rows} == {FindingDecision.PRESENT}
    assert all(r.threshold == 0.0 and r.probability is not None and 0 <= r.probability <= 1 for r in rows)
    assert all(r.sr_sop_instance_uid and r.sc_sop_instance_uid for r in rows)
    assert {r.model_name for r in rows} == {"tiny-test_resnet"}


def test_new_finding_requires_a_reason_exactly_when_not_assessed() -> None:
    with pytest.raises(ValueError, match="not_assessed_reason"):
        NewFinding("1.2", None, FindingDecision.NOT_ASSESSED, "m", "1")
    with pytest.raises(ValueError, match="not_assessed_reason"):
        NewFinding("1.2", "x", FindingDecision.ABSENT, "m", "1", not_assessed_reason=NotAssessedReason.UNDECODABLE)
    with pytest.raises(ValueError, match="outside"):
        NewFinding("1.2", "x", FindingDecision.ABSENT, "m", "1", probability=1.5)


def test_api_lists_and_filters_studies(node: Node) -> None:
    client = _client(node)
    body = client.get("/api/studies").json()
    assert body["count"] == 1
    (row,) = body["studies"]
    assert row["study_instance_uid"] == node.study_uid
    assert row["state"] == "done" and row["positive"] is True
    assert row["present"] == ["effusion", "pneumonia"]
    assert row["timeline"]["received"] == T0.isoformat() + "Z"
    assert row["timeline"]["done"] == (T0 + timedelta(seconds=4)).isoformat() + "Z"
    assert row["results_pending"] == 5  # one SC per positive finding (2 images x 2 labels) + the SR
    assert client.get("/api/studies", params={"state": "failed"}).json()["count"] == 0
    assert client.get("/api/studies", params={"positive": "1", "state": "done"}).json()["count"] == 1
    later = (T0 + timedelta(minutes=5)).isoformat() + "Z"
    assert client.get("/api/studies", params={"since": later}).json()["count"] == 0
    bad = client.get("/api/studies", params={"state": "bogus"})
    assert bad.status_code == 400 and "state must be one of" in bad.json()["error"]


def test_api_study_detail_has_findings_results_and_no_phi(node: Node) -> None:
    client = _client(node)
    response = client.get(f"/api/studies/{node.study_uid}")
    assert response.status_code == 200
    detail = response.json()
    assert [i["sop_instance_uid"] for i in detail["images"]] == node.image_uids
    finding = detail["images"][0]["findings"][0]
    assert finding["label"] == "pneumonia" and finding["decision"] == "present"
    assert finding["model"] == {"name": "tiny-test_resnet", "version": "0.0.1"}
    assert detail["images"][0]["heatmap"]["state"] == "pending"
    assert sorted(r["kind"] for r in detail["results"]) == ["findings_sr"] + ["heatmap_sc"] * 4  # per positive finding
    assert "patient" not in detail
    assert "Doe" not in response.text and "PID-4711" not in response.text
    assert client.get("/api/studies/1.2.3.4").status_code == 404


def test_show_phi_adds_the_patient(node: Node) -> None:
    detail = _client(node, show_phi=True).get(f"/api/studies/{node.study_uid}").json()
    assert detail["patient"]["patient_name"] == "Doe^Jane"
    assert detail["patient"]["patient_id"] == "PID-4711"


def test_pages_show_the_row_and_a_decodable_heatmap(node: Node) -> None:
    client = _client(node)
    index = client.get("/")
    assert index.status_code == 200 and f'href="/studies/{node.study_uid}"' in index.text
    page = client.get(f"/studies/{node.study_uid}")
    assert page.status_code == 200
    assert "Doe" not in page.text
    sources = [part.split('"', 1)[0] for part in page.text.split('<img class="heatmap" src="')[1:]]
    assert len(sources) == 2
    png = client.get(sources[0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.format == "PNG" and image.mode == "RGB" and min(image.size) >= 64
        pixels = np.asarray(image).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 16  # a picture, not a blank
    assert client.get("/heatmaps/1.2.3").status_code == 404


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_come_from_the_database(node: Node) -> None:
    response = _client(node).get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("dicomnode_instances_received_total", (("outcome", "accepted"),))] == 2
    assert samples[("dicomnode_jobs", (("state", "done"),))] == 1
    assert samples[("dicomnode_jobs", (("state", "failed"),))] == 0
    assert samples[("dicomnode_results_sent_total", ())] == 0
    assert samples[("dicomnode_findings_total", (("decision", "present"),))] == 4
    assert samples[("dicomnode_oldest_pending_send_age_seconds", ())] == 60.0
    names = {name for name, _ in samples}
    assert {"dicomnode_inference_duration_seconds_count", "dicomnode_batch_duration_seconds_count"} <= names


def test_healthz_reports_reasons(node: Node) -> None:
    assert _client(node).get("/healthz").text == "ok\n"
    sick = _client(node, health=["the batch scheduler is not running"]).get("/healthz")
    assert sick.status_code == 503 and "scheduler" in sick.text


def test_token_is_required_on_every_route(node: Node) -> None:
    client = _client(node, token=TOKEN)
    for route in ("/", "/healthz", "/metrics", "/api/studies"):
        assert client.get(route).status_code == 401
        assert client.get(route, headers={"Authorization": "Bearer wrong-token-0000000"}).status_code == 401
    assert client.get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.fixture
def models_dir(tiny_manifest: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(tiny_manifest.parent.parent))
    yield tiny_manifest.parent.parent


def test_demo_analyses_an_upload_without_storing(node: Node, models_dir: Path) -> None:
    client = _client(node)
    form = client.get("/demo")
    assert form.status_code == 200 and '<option value="tiny"' in form.text
    picture = io.BytesIO()
    Image.fromarray(make_cxr_dataset(seed=5, rows=96, cols=96, bits_stored=8).pixel_array).save(picture, format="PNG")
    before = sorted(p for p in node.files.data_dir.rglob("*") if p.is_file())
    answer = client.post("/demo", data={"model": "tiny"}, files={"file": ("cxr.png", picture.getvalue(), "image/png")})
    assert answer.status_code == 200, answer.text
    assert 'id="demo-result"' in answer.text and "present" in answer.text
    assert 'src="data:image/png;base64,' in answer.text
    assert sorted(p for p in node.files.data_dir.rglob("*") if p.is_file()) == before
    dicom = io.BytesIO()
    make_cxr_dataset(seed=6, rows=96, cols=96, photometric="MONOCHROME1").save_as(dicom, enforce_file_format=True)
    answer = client.post("/demo", data={"model": "tiny"}, files={"file": ("cxr.dcm", dicom.getvalue(), "application/dicom")})
    assert answer.status_code == 200 and 'id="demo-result"' in answer.text
    junk = client.post("/demo", data={"model": "tiny"}, files={"file": ("x.png", b"not an image", "image/png")})
    assert junk.status_code == 400 and "cannot read image" in junk.text
    unknown = client.post("/demo", data={"model": "nope"}, files={"file": ("x.png", picture.getvalue(), "image/png")})
    assert unknown.status_code == 400 and "unknown model" in unknown.text


def test_job_state_enum_values_are_the_api_filter_values() -> None:
    assert {s.value for s in JobState} >= {"received", "ready", "running", "done", "sent", "failed"}
