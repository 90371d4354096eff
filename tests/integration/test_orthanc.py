"""Round trips with a real Orthanc: Orthanc pushes a study, the node sends SC + SR back.

Each test starts its own Orthanc (``tests.integration.orthanc.run_orthanc``) with the
node registered as modality ``dicomnode``, and a ``dicomnode serve`` subprocess whose
destination is that Orthanc. Results are found through Orthanc's REST API, in the
same study as the images, and the SR is downloaded and read back with pydicom.

Every wait is bounded (at most 120 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.helpers import (
    REPO_ROOT,
    free_port,
    make_cxr_dataset,
    make_tiny_model,
    require_shared_data,
)
from tests.integration.orthanc import Modality, Orthanc, run_orthanc
from tests.integration.peers import NodeProcess, start_node, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.orthanc, pytest.mark.slow]

NODE_AET = "DICOMNODE"
NODE_MODALITY = "dicomnode"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22"}
# Standard codes checked in the SR (PS3.16), written out here so the test does not
# simply echo the production constants.
PROBABILITY = ("122157", "DCM")
PRESENT_ABSENT = {("52101004", "SCT"), ("272519000", "SCT")}
ALGORITHM_NAME = ("111001", "DCM")
ALGORITHM_VERSION = ("111003", "DCM")
PNEUMONIA = ("233604007", "SCT")
WAIT_S = 120.0


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "model")


def _model_identity(manifest: Path) -> tuple[str, str]:
    from dicomnode.inference.manifest import read_manifest

    loaded = read_manifest(manifest)
    return loaded.manifest.name, loaded.manifest.version


def _write_study(folder: Path, n_images: int) -> tuple[str, list[Path]]:
    """``n_images`` synthetic chest radiographs of one new study, as Part-10 files."""
    study_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(n_images):
        ds = make_cxr_dataset(
            photometric="MONOCHROME1" if n % 2 else "MONOCHROME2",
            study_uid=study_uid,
            seed=n + 1,
            InstanceNumber=n + 1,
        )
        path = folder / f"img{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def _sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _node_args(orthanc: Orthanc, model: Path, *, stable_after: float) -> list[str]:
    return [
        "--destination", orthanc.spec,
        "--model", str(model),
        "--stable-after", str(stable_after),
        "--interval", "1",
        "--allowed-calling-aets", orthanc.ae_title,
    ]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small send retry backoff and timeouts for the node subprocesses (env settings)."""
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_S", "1")
    monkeypatch.setenv("DICOMNODE_DESTINATION__RETRY_BACKOFF_MAX_S", "2")
    monkeypatch.setenv("DICOMNODE_DESTINATION__TIMEOUT_S", "10")


def _status(data_dir: Path, *, as_json: bool = True) -> Any:
    """``dicomnode status`` of a node's data folder: the parsed JSON (or the text)."""
    result = subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--data-dir", str(data_dir), *(["--json"] if as_json else [])],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    if not as_json:
        return result.stdout
    return json.loads(result.stdout.strip().splitlines()[-1])


def _results_in_orthanc(orthanc: Orthanc, study_uid: str) -> dict[str, list[dict[str, Any]]]:
    """The study's instances in Orthanc, grouped: ``sc`` (heatmaps), ``sr``, ``other``."""
    grouped: dict[str, list[dict[str, Any]]] = {"sc": [], "sr": [], "other": []}
    study_id = orthanc.find_study(study_uid)
    if study_id is None:
        return grouped
    for instance in orthanc.study_instances(study_id):
        sop_class = instance["Tags"].get("SOPClassUID")
        if sop_class == SC_CLASS and "heatmap" in instance["Tags"].get("SeriesDescription", "").lower():
            grouped["sc"].append(instance)
        elif sop_class in SR_CLASSES:
            grouped["sr"].append(instance)
        else:
            grouped["other"].append(instance)
    return grouped


def _wait_for_results(orthanc: Orthanc, study_uid: str, n_sc: int, timeout_s: float = WAIT_S) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}

    def arrived() -> bool:
        nonlocal found
        found = _results_in_orthanc(orthanc, study_uid)
        return len(found["sr"]) >= 1 and len(found["sc"]) >= n_sc

    wait_until(arrived, timeout_s, f"{n_sc} SC + 1 SR of study {study_uid} in Orthanc", poll_s=0.25)
    return found


def _content_items(item: Dataset) -> Iterator[Dataset]:
    """Every content item below ``item``, depth first."""
    for child in getattr(item, "ContentSequence", []):
        yield child
        yield from _content_items(child)


def _concept(item: Dataset) -> tuple[str, str] | None:
    if "ConceptNameCodeSequence" not in item:
        return None
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _check_sr(sr: Dataset, *, sources: set[str], heatmaps: set[str], model: tuple[str, str]) -> list[float]:
    """Assert the SR's TID 1500 content; returns the probabilities it reports."""
    assert sr.SOPClassUID in SR_CLASSES
    assert sr.ContentSequence, "SR has no content"
    items = list(_content_items(sr))
    findings = [i for i in items if i.ValueType == "CODE" and _concept(i) == PNEUMONIA]
    assert len(findings) == len(sources) + 1, "Pneumonia = Present/Absent per image and for the study"
    for item in findings:
        code = item.ConceptCodeSequence[0]
        assert (str(code.CodeValue), str(code.CodingSchemeDesignator)) in PRESENT_ABSENT
    probabilities = [
        float(i.MeasuredValueSequence[0].NumericValue) for i in items if _concept(i) == PROBABILITY
    ]
    assert len(probabilities) == len(sources), "one probability per image (single-label model)"
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    names = {str(i.TextValue) for i in items if _concept(i) == ALGORITHM_NAME}
    versions = {str(i.TextValue) for i in items if _concept(i) == ALGORITHM_VERSION}
    assert names == {model[0]} and versions == {model[1]}
    referenced = {
        str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for i in items
        if i.ValueType == "IMAGE"
    }
    assert sources <= referenced, "every source image is referenced from the content tree"
    assert heatmaps <= referenced, "every heatmap SC in Orthanc is referenced from the content tree"
    evidence = {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert sources | heatmaps <= evidence
    return probabilities


def _download_sr(orthanc: Orthanc, results: dict[str, list[dict[str, Any]]]) -> Dataset:
    assert len(results["sr"]) == 1, f"exactly one SR, got {len(results['sr'])}"
    return dcmread(BytesIO(orthanc.download(results["sr"][0]["ID"])))


def _stop(node: NodeProcess) -> None:
    code = node.stop()
    assert code == 0, node.log.read_text()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_orthanc_pushes_study_and_gets_sc_and_sr_back(tmp_path: Path, tiny_model: Path, source: str) -> None:
    """Orthanc -> node (C-STORE via /modalities/<node>/store) -> SC + SR -> Orthanc, same study."""
    if source == "real":
        real = require_shared_data("dicom", "siim_cxr_pa_jpeg_baseline.dcm")
        study_uid = str(dcmread(real, stop_before_pixels=True).StudyInstanceUID)
        files = [real]
    else:
        study_uid, files = _write_study(tmp_path / "study", 2)
    sources = {_sop_uid(f) for f in files}
    node_port = free_port()
    stable_after = 1.0
    with run_orthanc(tmp_path / "orthanc", modalities={NODE_MODALITY: Modality(NODE_AET, node_port)}) as orthanc:
        for path in files:
            orthanc.upload(path)
        study_id = orthanc.find_study(study_uid)
        assert study_id is not None
        node = start_node(tmp_path / "node", _node_args(orthanc, tiny_model, stable_after=stable_after), port=node_port)
        try:
            started = time.monotonic()
            pushed = orthanc.store_to_modality(NODE_MODALITY, [study_id])
            assert pushed["FailedInstancesCount"] == 0 and pushed["InstancesCount"] == len(files), pushed
            results = _wait_for_results(orthanc, study_uid, n_sc=len(files))
            latency = time.monotonic() - started
        finally:
            _stop(node)
        print(f"\n[orthanc round trip, {source}, {len(files)} image(s)] push -> SC+SR in Orthanc: "
              f"{latency:.2f} s (stable_after {stable_after} s, interval 1 s)")
        assert {i["Tags"]["SOPInstanceUID"] for i in results["other"]} == sources
        sr = _download_sr(orthanc, results)
        heatmaps = {i["Tags"]["SOPInstanceUID"] for i in results["sc"]}
        assert len(heatmaps) == len(files)
        for instance in results["sc"]:
            sc = dcmread(BytesIO(orthanc.download(instance["ID"])))
            assert sc.StudyInstanceUID == study_uid
            assert {str(ref.ReferencedSOPInstanceUID) for ref in sc.SourceImageSequence} <= sources
    assert sr.StudyInstanceUID == study_uid
    assert "not for diagnostic use" in sr.SeriesDescription.lower()
    _check_sr(sr, sources=sources, heatmaps=heatmaps, model=_model_identity(tiny_model))
    summary = _status(tmp_path / "node")
    assert summary["jobs"] == {"sent": 1}
    assert summary["results"] == {"sent": len(files) + 1}


def test_study_pushed_in_pieces_gives_one_job_and_one_sr(tmp_path: Path, tiny_model: Path) -> None:
    """Two pushes separated by less than stable_after: one job, one SR covering both images."""
    study_uid, files = _write_study(tmp_path / "study", 2)
    node_port = free_port()
    stable_after = 8.0
    with run_orthanc(tmp_path / "orthanc", modalities={NODE_MODALITY: Modality(NODE_AET, node_port)}) as orthanc:
        instance_ids = [orthanc.upload(path)["ID"] for path in files]
        node = start_node(tmp_path / "node", _node_args(orthanc, tiny_model, stable_after=stable_after), port=node_port)
        try:
            orthanc.store_to_modality(NODE_MODALITY, [instance_ids[0]])
            first_push = time.monotonic()
            time.sleep(stable_after / 2)
            mid = _status(tmp_path / "node")
            assert mid["jobs"] == {"received": 1}, "the first piece alone must not be processed yet"
            orthanc.store_to_modality(NODE_MODALITY, [instance_ids[1]])
            gap = time.monotonic() - first_push
            assert gap < stable_after, f"pieces {gap:.1f} s apart: not shorter than stable_after"
            results = _wait_for_results(orthanc, study_uid, n_sc=2)
            time.sleep(3)  # two more scheduler periods: a second SR would show up now
            results = _results_in_orthanc(orthanc, study_uid)
        finally:
            _stop(node)
        sr = _download_sr(orthanc, results)
        heatmaps = {i["Tags"]["SOPInstanceUID"] for i in results["sc"]}
    assert len(heatmaps) == 2
    _check_sr(sr, sources={_sop_uid(f) for f in files}, heatmaps=heatmaps, model=_model_identity(tiny_model))
    summary = _status(tmp_path / "node")
    assert summary["jobs"] == {"sent": 1}
    assert summary["results"] == {"sent": 3}


@pytest.mark.usefixtures("fast_retries")
def test_results_wait_in_outbox_while_orthanc_is_down(tmp_path: Path, tiny_model: Path) -> None:
    """Orthanc stops before results are ready; they stay pending (with the reason) and
    arrive once Orthanc is back on the same port."""
    study_uid, files = _write_study(tmp_path / "study", 2)
    node_port, dicom_port, http_port = free_port(), free_port(), free_port()
    modalities = {NODE_MODALITY: Modality(NODE_AET, node_port)}
    folder = tmp_path / "orthanc"
    stable_after = 6.0
    node: NodeProcess | None = None
    try:
        with run_orthanc(folder, dicom_port=dicom_port, http_port=http_port, modalities=modalities,
                         log_name="first.log") as orthanc:
            study_id = orthanc.upload(files[0])["ParentStudy"]
            orthanc.upload(files[1])
            node = start_node(tmp_path / "node", _node_args(orthanc, tiny_model, stable_after=stable_after),
                              port=node_port)
            orthanc.store_to_modality(NODE_MODALITY, [study_id])
            pushed_at = time.monotonic()
        # Orthanc is down now; the study becomes ready only stable_after s after the push.
        assert time.monotonic() - pushed_at < stable_after, "Orthanc took too long to stop: results may be sent"
        pending: list[dict[str, Any]] = []

        def waiting_with_reason() -> bool:
            nonlocal pending
            pending = _status(tmp_path / "node")["pending_sends"]
            return len(pending) == 3 and all(p["last_error"] for p in pending)

        wait_until(waiting_with_reason, WAIT_S, "3 results pending with a reason", poll_s=1.0)
        for item in pending:
            assert f"127.0.0.1:{dicom_port}" in item["last_error"], item
            assert item["attempts"] >= 1
        text = _status(tmp_path / "node", as_json=False)
        assert "waiting to be sent" in text and "last error" in text

        with run_orthanc(folder, dicom_port=dicom_port, http_port=http_port, modalities=modalities,
                         log_name="second.log") as orthanc:
            back = time.monotonic()
            results = _wait_for_results(orthanc, study_uid, n_sc=2)
            print(f"\n[orthanc back] results delivered {time.monotonic() - back:.2f} s after Orthanc restarted")
            sr = _download_sr(orthanc, results)
            heatmaps = {i["Tags"]["SOPInstanceUID"] for i in results["sc"]}
    finally:
        if node is not None:
            _stop(node)
    _check_sr(sr, sources={_sop_uid(f) for f in files}, heatmaps=heatmaps, model=_model_identity(tiny_model))
    summary = _status(tmp_path / "node")
    assert summary["results"] == {"sent": 3}
    assert summary["pending_sends"] == []


@pytest.mark.usefixtures("fast_retries")
def test_orthanc_refusing_results_shows_failure_in_status(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Orthanc does not allow the node's AE to store: every result ends FAILED with the reason."""
    monkeypatch.setenv("DICOMNODE_DESTINATION__MAX_ATTEMPTS", "2")
    study_uid, files = _write_study(tmp_path / "study", 2)
    node_port = free_port()
    refusing = {NODE_MODALITY: Modality(NODE_AET, node_port, allow_store=False)}
    with run_orthanc(tmp_path / "orthanc", modalities=refusing) as orthanc:
        study_id = orthanc.upload(files[0])["ParentStudy"]
        orthanc.upload(files[1])
        node = start_node(tmp_path / "node", _node_args(orthanc, tiny_model, stable_after=1), port=node_port)
        try:
            orthanc.store_to_modality(NODE_MODALITY, [study_id])
            summary: dict[str, Any] = {}

            def all_failed() -> bool:
                nonlocal summary
                summary = _status(tmp_path / "node")
                return bool(summary["results"] == {"failed": 3})

            wait_until(all_failed, WAIT_S, "3 results FAILED after 2 refused attempts", poll_s=1.0)
            in_orthanc = _results_in_orthanc(orthanc, study_uid)
        finally:
            _stop(node)
    assert in_orthanc["sr"] == [] and in_orthanc["sc"] == []
    assert len(in_orthanc["other"]) == 2
    sends = [f for f in summary["recent_failures"] if f["what"] == "send"]
    print("\n[refused] " + "; ".join(sorted({f["error"] for f in sends})))
    assert len(sends) == 3
    assert any("C-STORE" in f["error"] for f in sends), "the association was made and the C-STORE refused"
    for failure in sends:
        assert failure["attempts"] == 2
        assert orthanc.spec.split("@", 1)[1] in failure["error"], failure
    assert summary["jobs"] == {"done": 1}
    text = _status(tmp_path / "node", as_json=False)
    assert "recent failures" in text


def test_compose_orthanc_config_auto_routes_chest_images(tmp_path: Path, tiny_model: Path) -> None:
    """compose/orthanc.json and its Lua auto-routing on a real Orthanc: a DX study uploaded
    to Orthanc reaches the node by itself, and the results are not routed back."""
    compose = json.loads((REPO_ROOT / "compose" / "orthanc.json").read_text())
    [(name, entry)] = compose["DicomModalities"].items()
    extra = dict(compose, LuaScripts=[str(REPO_ROOT / "compose" / "orthanc-autoroute.lua")])
    study_uid, files = _write_study(tmp_path / "study", 2)
    node_port = free_port()
    with run_orthanc(tmp_path / "orthanc", ae_title=compose["DicomAet"],
                     modalities={name: Modality(entry["AET"], node_port)}, extra_config=extra) as orthanc:
        node = start_node(tmp_path / "node", ["--ae-title", entry["AET"],
                                              *_node_args(orthanc, tiny_model, stable_after=1)], port=node_port)
        try:
            for path in files:
                orthanc.upload(path)  # no push: the Lua script forwards each DX image
            results = _wait_for_results(orthanc, study_uid, n_sc=2)
            time.sleep(3)  # a loop would show up now as a second job or re-received results
            results = _results_in_orthanc(orthanc, study_uid)
        finally:
            _stop(node)
        assert len(results["sr"]) == 1 and len(results["sc"]) == 2
    summary = _status(tmp_path / "node")
    assert summary["jobs"] == {"sent": 1}
    assert summary["instances"] == {"accepted": 2}, "only the two DX images reached the node"
