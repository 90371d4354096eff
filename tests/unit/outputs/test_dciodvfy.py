"""dciodvfy (dicom3tools) on every object type we produce: zero "Error" lines.

Sources: synthetic DX/CR/SC datasets (MONOCHROME1/2, 8/12/16 bit) and each real DICOM
file in ../shared/data/dicom, read header-only as the pipeline does. Warnings are
allowed; the ones that remain come from the senders' own values (retired person-name
forms, unknown Body Part terms, missing Study ID/Date for DICOMDIR) and from the private
99DCMNODE coding scheme (declared in the SR's Coding Scheme Identification Sequence).
"""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.config import OutputSettings
from dicomnode.domain import (
    ModelIdentity,
    NotAssessedReason,
    PopulationCheck,
    PopulationStatus,
    Prediction,
)
from dicomnode.outputs.codes import NIH_CHESTXRAY14_LABELS
from dicomnode.outputs.sc import build_heatmap_sc
from dicomnode.outputs.sr import ImageFindings, PriorReport, build_findings_sr, reference_dataset
from dicomnode.outputs.validate import validate_result
from tests.helpers import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    make_cxr_dataset,
    require_shared_data,
    require_tool,
)
from tests.unit.outputs.conftest import header_only

pytestmark = pytest.mark.dciodvfy

REAL_FILES = [
    "RG1_UNCR.dcm",
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
    "RG1_JLSN.dcm",
    "RG3_UNCR.dcm",
    "siim_cxr_pa_jpeg_baseline.dcm",
    "Fake_MONOHR1.dcm",
    "nih_cxr14_google_dicom_DX.dcm",
    "highdicom_dx_image.dcm",
]
SYNTHETIC = {
    "dx-mono2-12bit": {
        "sop_class_uid": DX_PRESENTATION_STORAGE,
        "photometric": "MONOCHROME2",
        "bits_stored": 12,
    },
    "dx-mono1-16bit": {
        "sop_class_uid": DX_PRESENTATION_STORAGE,
        "photometric": "MONOCHROME1",
        "bits_stored": 16,
    },
    "cr-mono1-12bit": {
        "sop_class_uid": CR_IMAGE_STORAGE,
        "photometric": "MONOCHROME1",
        "bits_stored": 12,
    },
    "cr-mono2-10bit": {
        "sop_class_uid": CR_IMAGE_STORAGE,
        "photometric": "MONOCHROME2",
        "bits_stored": 10,
    },
    "sc-mono2-8bit": {
        "sop_class_uid": SECONDARY_CAPTURE_STORAGE,
        "photometric": "MONOCHROME2",
        "bits_stored": 8,
    },
    "sc-mono1-8bit": {
        "sop_class_uid": SECONDARY_CAPTURE_STORAGE,
        "photometric": "MONOCHROME1",
        "bits_stored": 8,
    },
}


# Warnings dciodvfy may give on our objects, each caused by what the sender sent.
ALLOWED_WARNINGS = (
    re.compile(r"Missing attribute or value that would be needed to build DICOMDIR"),
    re.compile(r"Retired Person Name form"),
    re.compile(r"Unrecognized defined term <[^>]*> for value 1 of attribute <Body Part Examined>"),
    re.compile(
        r"Unrecognized defined term <99DCMNODE> for value 1 of attribute <Coding Scheme Designator>"
    ),
)


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    tool = require_tool("dciodvfy", "/usr/bin/dciodvfy")
    result = subprocess.run(
        [tool, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stderr + result.stdout).splitlines()
    return [line for line in lines if line.startswith("Error")], [
        line for line in lines if line.startswith("Warning")
    ]


def _build_and_check(
    source: Dataset,
    tmp_path: Path,
    identity: ModelIdentity,
    settings: OutputSettings,
    *,
    clean: bool = False,
) -> None:
    """Build SC + SR from ``source``; no dciodvfy errors, only allowed warnings (none if ``clean``)."""
    overlay = np.random.default_rng(3).integers(0, 256, size=(512, 410, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # senders' single-component person names
        heatmap = build_heatmap_sc(
            source, overlay, series_instance_uid="1.2.826.0.1.3680043.8.498.11", series_number=9901,
            instance_number=1, settings=settings, identity=identity,
        )  # fmt: skip
        prediction = Prediction(
            labels=NIH_CHESTXRAY14_LABELS[:4] + ("pneumonia",),
            probabilities=(0.1, 0.2, 0.3, 0.4, 0.9),
            thresholds=(0.5,) * 5,
        )
        report = build_findings_sr(
            [ImageFindings(source, prediction, {4: heatmap})], series_instance_uid="1.2.826.0.1.3680043.8.498.12",
            series_number=9902, settings=settings, identity=identity,
        )  # fmt: skip
    for name, result in (("sc", heatmap), ("sr", report)):
        validate_result(result)
        path = tmp_path / f"{name}.dcm"
        result.save_as(path, enforce_file_format=True)
        errors, warnings_ = _dciodvfy(path)
        assert errors == [], f"{name}: {errors}\n(warnings: {warnings_})"
        if clean:
            unexpected = [w for w in warnings_ if "99DCMNODE" not in w]
        else:
            unexpected = [w for w in warnings_ if not any(p.search(w) for p in ALLOWED_WARNINGS)]
        assert unexpected == [], f"{name}: unexpected dciodvfy warnings {unexpected}"


@pytest.mark.parametrize("kind", sorted(SYNTHETIC))
def test_dciodvfy_synthetic_sources(
    kind: str, tmp_path: Path, identity: ModelIdentity, output_settings: OutputSettings
) -> None:
    source = header_only(make_cxr_dataset(**SYNTHETIC[kind]))  # type: ignore[arg-type]
    _build_and_check(source, tmp_path, identity, output_settings, clean=True)


def test_dciodvfy_source_without_body_part_or_orientation(
    tmp_path: Path, identity: ModelIdentity, output_settings: OutputSettings
) -> None:
    source = make_cxr_dataset()
    del source.BodyPartExamined
    del source.PatientOrientation
    _build_and_check(header_only(source), tmp_path, identity, output_settings)


@pytest.mark.parametrize("name", REAL_FILES)
def test_dciodvfy_real_sources(
    name: str, tmp_path: Path, identity: ModelIdentity, output_settings: OutputSettings
) -> None:
    path = require_shared_data("dicom", name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        source = dcmread(path, stop_before_pixels=True)
    _build_and_check(source, tmp_path, identity, output_settings)


def test_dciodvfy_catches_an_invalid_object(tmp_path: Path) -> None:
    """The check itself can fail: a DX header without its Type 1 pixel attributes has errors."""
    broken = make_cxr_dataset()
    del broken.Rows
    path = tmp_path / "broken.dcm"
    broken.save_as(path, enforce_file_format=True)
    errors, _ = _dciodvfy(path)
    assert errors


def test_dciodvfy_full_study_report(tmp_path: Path, identity: ModelIdentity, output_settings: OutputSettings) -> None:
    """Assessed, out-of-population, gated and header-refused images, with a predecessor: no errors."""
    first = header_only(make_cxr_dataset(PatientAge="004Y"))
    study = str(first.StudyInstanceUID)
    adult = header_only(make_cxr_dataset(study_uid=study, PatientAge="045Y"))
    gated = header_only(make_cxr_dataset(study_uid=study))
    refused = reference_dataset(
        study_instance_uid=study, series_instance_uid="1.2.826.0.1.3680043.8.498.13",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.14", sop_class_uid=CR_IMAGE_STORAGE,
    )  # fmt: skip
    prediction = Prediction(labels=NIH_CHESTXRAY14_LABELS, probabilities=(0.3,) * 14, thresholds=(0.5,) * 14)
    images = [
        ImageFindings(first, prediction, population=PopulationCheck(PopulationStatus.WITHIN)),
        ImageFindings(adult, prediction, population=PopulationCheck(PopulationStatus.OUTSIDE, "age 45 years outside intended 1-5 years")),
        ImageFindings(gated, not_assessed=NotAssessedReason.INVERTED_GRAYSCALE, detail="OOD score 41.2 > 27.9"),
        ImageFindings(refused, not_assessed=NotAssessedReason.HEADER_NOT_ACCEPTED, detail="BodyPartExamined 'ABDOMEN' is not a chest"),
    ]
    report = build_findings_sr(
        images, series_instance_uid="1.2.826.0.1.3680043.8.498.12", series_number=9902, settings=output_settings,
        identity=identity, predecessor=PriorReport("1.2.826.0.1.3680043.8.498.15", "1.2.826.0.1.3680043.8.498.12"),
        instance_number=2,
    )  # fmt: skip
    validate_result(report)
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    errors, warnings_ = _dciodvfy(path)
    assert errors == [], f"{errors}\n(warnings: {warnings_})"
    assert [w for w in warnings_ if "99DCMNODE" not in w] == []
