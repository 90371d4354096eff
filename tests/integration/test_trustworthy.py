"""Findings a radiologist can trust, end to end with the shipped model and real files.

A real ``dicomnode serve`` with ``models/default`` (and its input gate) receives, with
DCMTK storescu, studies whose headers lie: a tibia labelled CHEST, a chest whose
photometric interpretation is inverted, uniform noise stored as DX. Only the real chest
gets a finding; the others are listed in the SR as not assessed with their coded reason
(read back with DCMTK ``dsrdump``); a study with no assessable image is skipped with the
reason in ``dicomnode status``; ``predict`` applies the same rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.domain import NotAssessedReason
from dicomnode.outputs.codes import not_assessed_code
from tests.helpers import REPO_ROOT, dcmtk, make_cxr_dataset, require_shared_data
from tests.integration.peers import dciodvfy_errors, run_storescp, start_node, storescu, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk, pytest.mark.shared_data, pytest.mark.slow]

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SHIPPED_MODEL = REPO_ROOT / "models" / "default"


def _restudy(ds: Dataset, study_uid: str, **changes: object) -> Dataset:
    """The dataset moved into ``study_uid`` with fresh series/instance UIDs and ``changes``."""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _lying_study(folder: Path) -> tuple[str, dict[str, Path]]:
    """One study: a real chest, a tibia labelled CHEST, an inverted chest, noise stored as DX."""
    study_uid = generate_uid()
    chest = _restudy(dcmread(require_shared_data("dicom", "siim_cxr_pa_jpeg_baseline.dcm")), study_uid)
    tibia = _restudy(dcmread(require_shared_data("dicom", "RG3_UNCR.dcm")), study_uid, BodyPartExamined="CHEST")
    inverted = _restudy(dcmread(require_shared_data("dicom", "Fake_MONOHR1.dcm")), study_uid)
    noise = make_cxr_dataset(study_uid=study_uid, seed=7, transfer_syntax=ExplicitVRLittleEndian)
    pixels = np.random.default_rng(7).integers(0, 4096, size=(noise.Rows, noise.Columns), dtype=np.uint16)
    noise.BitsAllocated, noise.BitsStored, noise.HighBit = 16, 12, 11
    noise.PixelRepresentation = 0
    noise.PixelData = pixels.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, ds in (("chest", chest), ("tibia", tibia), ("inverted", inverted), ("noise", noise)):
        paths[name] = folder / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    return study_uid, paths


def _dsrdump(path: Path) -> str:
    done = subprocess.run([dcmtk("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_serve_gates_images_whose_header_lies(tmp_path: Path) -> None:
    if not (SHIPPED_MODEL / "manifest.json").is_file():
        pytest.skip("models/default is not present")
    lying_study, lying = _lying_study(tmp_path / "lying")
    tibia_only_study = generate_uid()
    tibia_only = tmp_path / "tibia_only.dcm"
    _restudy(dcmread(require_shared_data("dicom", "RG3_UNCR.dcm")), tibia_only_study, BodyPartExamined="CHEST").save_as(
        tibia_only, enforce_file_format=True
    )
    args = ["--model", str(SHIPPED_MODEL), "--stable-after", "1", "--interval", "1"]
    with run_storescp(tmp_path / "pacs") as pacs:
        node = start_node(tmp_path / "node", ["--destination", pacs.spec, *args])
        try:
            sent = storescu(node.port, [*lying.values(), tibia_only])
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: len(pacs.files()) >= 2, 240, "the SR and the chest's SC at the destination")

            def tibia_study_skipped() -> bool:
                done = subprocess.run(
                    [sys.executable, "-m", "dicomnode", "status", "--data-dir", str(tmp_path / "node"), "--json"],
                    capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False,
                )
                summary = json.loads(done.stdout.strip().splitlines()[-1])
                return any(s["study_instance_uid"] == tibia_only_study for s in summary["skipped_studies"])

            wait_until(tibia_study_skipped, 120, "the tibia-only study skipped in status")
        finally:
            assert node.stop() == 0, node.log.read_text()
        results = pacs.files()
    studies = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in results}
    assert studies == {lying_study}, "a study with no assessable image produces no result"
    scs = [p for p in results if str(dcmread(p, stop_before_pixels=True).SOPClassUID) == SC_CLASS]
    srs = [p for p in results if p not in scs]
    chest_uid = str(dcmread(lying["chest"], stop_before_pixels=True).SOPInstanceUID)
    assert len(scs) == 1 and len(srs) == 1
    assert str(dcmread(scs[0]).SourceImageSequence[0].ReferencedSOPInstanceUID) == chest_uid
    report = _dsrdump(srs[0])
    for reason in (NotAssessedReason.NOT_CHEST_RADIOGRAPH, NotAssessedReason.INVERTED_GRAYSCALE):
        assert not_assessed_code(reason).value in report, reason
    assert not_assessed_code(NotAssessedReason.NO_IMAGE_CONTENT).value in report or (
        not_assessed_code(NotAssessedReason.NOT_CHEST_RADIOGRAPH).value in report
    )
    assert report.count('"Probability"') == 1, "only the real chest carries a probability"
    assert dciodvfy_errors(srs[0]) == []


def test_predict_applies_the_same_gate(tmp_path: Path) -> None:
    if not (SHIPPED_MODEL / "manifest.json").is_file():
        pytest.skip("models/default is not present")
    _, lying = _lying_study(tmp_path / "lying")
    done = subprocess.run(
        [sys.executable, "-m", "dicomnode", "predict", "--model", str(SHIPPED_MODEL), "--out", str(tmp_path / "out"),
         *map(str, lying.values())],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines() if ": " in line)
    assert lines["chest.dcm"].startswith("pneumonia ")
    assert lines["tibia.dcm"].startswith("not assessed: ")
    assert lines["inverted.dcm"].startswith("not assessed: ")
    assert lines["noise.dcm"].startswith("not assessed: ")
