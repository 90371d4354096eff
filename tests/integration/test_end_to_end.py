"""The core path with real peers: DCMTK storescu -> dicomnode serve -> DCMTK storescp.

A study sent with storescu comes back at the destination as one heatmap SC per
image and one TID 1500 SR per study, each passing dciodvfy with 0 errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from tests.helpers import REPO_ROOT, make_cxr_dataset, make_tiny_model, require_shared_data
from tests.integration.peers import dciodvfy_errors, run_storescp, start_node, storescu, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22"}
REAL_CHEST_FILES = [
    "RG1_UNCR.dcm",
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
    "RG1_JLSN.dcm",
    "siim_cxr_pa_jpeg_baseline.dcm",
    "nih_cxr14_google_dicom_DX.dcm",
]


def _by_class(files: list[Path]) -> dict[str, list[Path]]:
    grouped: dict[str, list[Path]] = {"sc": [], "sr": []}
    for path in files:
        sop_class = str(dcmread(path, stop_before_pixels=True).SOPClassUID)
        if sop_class == SC_CLASS:
            grouped["sc"].append(path)
        elif sop_class in SR_CLASSES:
            grouped["sr"].append(path)
    return grouped


def _fast_node_args(destination: str, model: Path, stable_after_s: int = 1) -> list[str]:
    """`serve` options: results to ``destination``, ``model``, 1 s batch interval."""
    return ["--destination", destination, "--model", str(model),
            "--stable-after", str(stable_after_s), "--interval", "1"]  # fmt: skip


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "model")


def _write_synthetic_study(folder: Path) -> tuple[str, list[Path]]:
    """Three images of one study: MONOCHROME1 16-bit, MONOCHROME2 8-bit implicit, 12-bit CR."""
    from tests.helpers import CR_IMAGE_STORAGE

    study_uid = generate_uid()
    datasets = [
        make_cxr_dataset(photometric="MONOCHROME1", bits_stored=16, study_uid=study_uid, seed=1),
        make_cxr_dataset(photometric="MONOCHROME2", bits_stored=8, transfer_syntax=ImplicitVRLittleEndian,
                         study_uid=study_uid, seed=2),
        make_cxr_dataset(sop_class_uid=CR_IMAGE_STORAGE, bits_stored=12, transfer_syntax=ExplicitVRLittleEndian,
                         study_uid=study_uid, seed=3),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"img{n}.dcm"
        ds.save_as(path, implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
                   little_endian=True, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths


def test_synthetic_study_round_trip(tmp_path: Path, tiny_model: Path) -> None:
    study_uid, files = _write_synthetic_study(tmp_path / "study")
    with run_storescp(tmp_path / "pacs") as pacs:
        node = start_node(tmp_path / "node", _fast_node_args(pacs.spec, tiny_model))
        try:
            sent = storescu(node.port, files)
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: len(pacs.files()) >= 4, 120, "3 SC + 1 SR at the destination")
        finally:
            assert node.stop() == 0, node.log.read_text()
        results = _by_class(pacs.files())
    assert len(results["sc"]) == 3 and len(results["sr"]) == 1
    sources = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    for path in results["sc"] + results["sr"]:
        ds = dcmread(path)
        assert ds.StudyInstanceUID == study_uid
        assert "not for diagnostic use" in ds.SeriesDescription.lower()
        assert dciodvfy_errors(path) == [], path.name
    sr = dcmread(results["sr"][0])
    referenced = {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert sources <= referenced
    status = subprocess.run(
        [sys.executable, "-m", "dicomnode", "status", "--data-dir", str(tmp_path / "node"), "--json"],
        check=False, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout.strip().splitlines()[-1])
    assert summary["jobs"] == {"sent": 1}
    assert summary["results"] == {"sent": 4}


def test_real_chest_dicoms_round_trip(tmp_path: Path, tiny_model: Path) -> None:
    files = [require_shared_data("dicom", name) for name in REAL_CHEST_FILES]
    studies = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    images = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    with run_storescp(tmp_path / "pacs") as pacs:
        node = start_node(tmp_path / "node", _fast_node_args(pacs.spec, tiny_model))
        try:
            sent = storescu(node.port, files)
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: len(pacs.files()) >= len(images) + len(studies), 240,
                       f"{len(images)} SC + {len(studies)} SR at the destination")
        finally:
            assert node.stop() == 0, node.log.read_text()
        results = _by_class(pacs.files())
    assert len(results["sr"]) == len(studies)
    assert len(results["sc"]) == len(images)
    for path in results["sc"] + results["sr"]:
        assert dciodvfy_errors(path) == [], path.name
    log = node.log.read_text()
    for marker in ("Test^Patient",):
        assert marker not in log


def test_restart_after_sigkill_processes_each_instance_once(tmp_path: Path, tiny_model: Path) -> None:
    """Kill -9 between receive and inference; after restart every study gets exactly one result set."""
    study_uid, files = _write_synthetic_study(tmp_path / "study")
    data_dir = tmp_path / "node"
    with run_storescp(tmp_path / "pacs") as pacs:
        first = start_node(data_dir, _fast_node_args(pacs.spec, tiny_model, stable_after_s=600), log_name="first.log")
        sent = storescu(first.port, files)
        assert sent.returncode == 0, sent.stderr
        first.kill()
        assert pacs.files() == []
        second = start_node(data_dir, _fast_node_args(pacs.spec, tiny_model), port=first.port, log_name="second.log")
        try:
            wait_until(lambda: len(pacs.files()) >= 4, 120, "results after restart")
            # Give a duplicate a chance to appear: two more scheduler periods.
            import time

            time.sleep(3)
        finally:
            assert second.stop() == 0, second.log.read_text()
        results = _by_class(pacs.files())
    assert len(results["sr"]) == 1 and len(results["sc"]) == 3
    assert {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in pacs.files()} == {study_uid}


def test_fourteen_label_model_through_serve_and_predict(tmp_path: Path) -> None:
    """A 14-label (NIH ChestX-ray14) model: the SR lists every finding, one SC per positive finding."""
    from dicomnode.training.datasets import NIH_FINDINGS

    labels = tuple(f.lower() for f in NIH_FINDINGS)
    # Threshold 0.5 with random weights: some findings positive, some not; the counts are read back.
    model = make_tiny_model(tmp_path / "nih", labels=labels, threshold=0.5, seed=3)
    image = tmp_path / "study" / "img.dcm"
    image.parent.mkdir()
    make_cxr_dataset(seed=5).save_as(image, enforce_file_format=True)
    predicted = subprocess.run(
        [sys.executable, "-m", "dicomnode", "predict", "--model", str(model), "--explain", "positive",
         "--out", str(tmp_path / "predict"), str(image)],
        check=False, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    line = predicted.stdout.strip().splitlines()[0]
    calls = [part.split(" p=")[0] for part in line.split(": ", 1)[1].split("; ")]
    assert [c.rsplit(" ", 1)[0] for c in calls] == list(labels)
    positives = sum(c.endswith("POSITIVE") for c in calls)
    assert 0 < positives < len(labels), "the random model should give a mix of decisions"
    with run_storescp(tmp_path / "pacs") as pacs:
        node = start_node(tmp_path / "node", [*_fast_node_args(pacs.spec, model), "--explain", "positive"])
        try:
            sent = storescu(node.port, [image])
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: len(pacs.files()) >= positives + 1, 300, f"{positives} SC + 1 SR at the destination")
        finally:
            assert node.stop() == 0, node.log.read_text()
        results = _by_class(pacs.files())
    assert len(results["sc"]) == positives and len(results["sr"]) == 1
    from tests.helpers import dcmtk

    dump = subprocess.run([dcmtk("dsrdump"), "+Pl", str(results["sr"][0])], capture_output=True, text=True, timeout=60,
                          check=False).stdout  # fmt: skip
    assert dump.count('NUM:(,,"Probability")') == len(labels)
    for path in results["sc"] + results["sr"]:
        assert dciodvfy_errors(path) == [], path.name
