"""No patient data in any log line, at DEBUG, through every path of a real node.

A ``dicomnode serve --log-level DEBUG`` (plain and TLS ports) receives datasets
carrying a unique marker in every patient-identifying attribute: one processed
to results, one skipped (not a chest), one skipped by the batch (corrupt stream),
a conflicting duplicate, and refused ones (missing UID, overlong and
control-character values). Then its whole log, and ``dicomnode status``, are
searched for the markers: zero hits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

from tests.helpers import REPO_ROOT, dcmtk, free_port, make_cxr_dataset, make_tiny_model
from tests.integration.peers import dicomnode_status, node_sending_to_storescp, storescu, wait_until
from tests.integration.tlscerts import make_certificates, storescu_tls_args
from tests.peers import corpus
from tests.peers.scp import send_datasets

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk, pytest.mark.slow]

MARKERS = {
    "PatientName": "Phimarkname^Phimarkgiven",
    "PatientID": "PHIMARKPID",
    "PatientBirthDate": "19020304",
    "AccessionNumber": "PHIMARKACC",
    "OtherPatientNames": "Phimarkother^Name",
    "PatientAddress": "PHIMARKSTREET 1",
    "PatientTelephoneNumbers": "PHIMARKPHONE",
    "PatientMotherBirthName": "Phimarkmother",
    "ReferringPhysicianName": "Phimarkdoctor^Who",
    "StudyID": "PHIMARKSID",
}
NEEDLES = ("phimark", "19020304", "1902-03-04")


def _mark(ds: Dataset) -> Dataset:
    for keyword, value in MARKERS.items():
        setattr(ds, keyword, value)
    other = Dataset()
    other.PatientID = "PHIMARKOTHERID"
    other.IssuerOfPatientID = "PHIMARKISSUER"
    ds.OtherPatientIDsSequence = [other]
    return ds


def test_no_patient_data_in_any_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certs = make_certificates(tmp_path / "pki")
    tls_port = free_port()
    monkeypatch.setenv("DICOMNODE_DICOM__TLS_PORT", str(tls_port))
    monkeypatch.setenv("DICOMNODE_DICOM__TLS_CERTIFICATE", str(certs.server_cert))
    monkeypatch.setenv("DICOMNODE_DICOM__TLS_PRIVATE_KEY", str(certs.server_key))
    monkeypatch.setenv("DICOMNODE_DICOM__TLS_CA_CERTIFICATES", str(certs.ca))
    monkeypatch.setenv("DICOMNODE_SCHEDULER__MAX_ATTEMPTS", "1")
    model = make_tiny_model(tmp_path / "model")

    processed = _mark(make_cxr_dataset(seed=1))
    skipped = _mark(make_cxr_dataset(seed=2, BodyPartExamined="ABDOMEN"))
    corrupt = _mark(corpus.build_case("corrupt-j2k-stream").dataset)
    assert corrupt.file_meta.TransferSyntaxUID == JPEG2000Lossless
    conflicting = _mark(make_cxr_dataset(seed=3))
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(conflicting, keyword, getattr(processed, keyword))
    conflicting.file_meta.MediaStorageSOPInstanceUID = processed.SOPInstanceUID
    missing_uid = _mark(make_cxr_dataset(seed=4))
    del missing_uid.StudyInstanceUID
    overlong = _mark(make_cxr_dataset(seed=5))
    overlong.PatientName = "Phimarklong^" + "X" * 200
    control = _mark(make_cxr_dataset(seed=6))
    control.PatientID = "PHIMARK\x07ID"
    via_tls = _mark(make_cxr_dataset(seed=7))
    via_tls.StudyInstanceUID = generate_uid()
    tls_file = tmp_path / "tls.dcm"
    via_tls.save_as(tls_file, enforce_file_format=True)

    with node_sending_to_storescp(tmp_path, model, "--log-level", "DEBUG") as (node, pacs):
        statuses = send_datasets(
            node.port,
            [processed, skipped, corrupt, conflicting, missing_uid, overlong, control],
            calling="PRIVACYSCU",
        )
        assert statuses[:4] == [0, 0, 0, 0]
        assert all(0xA000 <= status <= 0xCFFF for status in statuses[4:]), statuses
        tls = subprocess.run(
            [dcmtk("storescu"), *storescu_tls_args(certs.client_key, certs.client_cert, certs.ca),
             "-aec", "DICOMNODE", "127.0.0.1", str(tls_port), str(tls_file)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert tls.returncode == 0, tls.stdout + tls.stderr
        # processed + via_tls: 2 SC + 2 SR
        wait_until(lambda: len(pacs.files()) >= 4, 120, "results of both processed studies")
        status = dicomnode_status(tmp_path / "node")
    outputs = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs.files()]
    # The results do carry the patient (they belong in the PACS), so the markers were live.
    assert any(str(ds.PatientID) == MARKERS["PatientID"] for ds in outputs)
    log = node.log.read_text(errors="replace")
    assert "DEBUG" in log and processed.SOPInstanceUID in log  # the log is real and detailed
    assert "cannot decode" in log and "DIFFERENT content" in log
    for text, where in ((log, "node log"), (status.stdout + status.stderr, "dicomnode status")):
        lowered = text.lower()
        hits = [needle for needle in NEEDLES if needle in lowered]
        assert hits == [], f"patient data in the {where}: {hits}"


#: Values that make libraries talk: highdicom warns 'The string "<name>" is unlikely to
#: represent the intended person name' for single-component names (a word, a UUID, a
#: ward), quoting the name (issue 15).
SINGLE_WORD = {
    "PatientName": "Phimarkcovid0000",
    "ReferringPhysicianName": "Phimarkward",
    "PatientID": "PHIMARKSWID",
    "PatientBirthDate": "19020304",
    "InstitutionName": "Phimark Institution",
    "OtherPatientNames": "Phimarkalias",
    "OperatorsName": "Phimarkoperator",
    "AccessionNumber": "PHIMARKSWACC",
}


def _single_word_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, patient_name in ((11, None), (12, "phimark0e6f1c2a-5b7d-4e8f-9a10-b2c3d4e5f6a7")):
        ds = make_cxr_dataset(seed=seed)
        for keyword, value in SINGLE_WORD.items():
            setattr(ds, keyword, value)
        if patient_name is not None:
            ds.PatientName = patient_name  # a UUID as the name
        path = folder / f"single{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_single_word_names_stay_out_of_logs_and_cli_output(tmp_path: Path) -> None:
    """serve (fed by DCMTK storescu), status (text and JSON) and predict, at DEBUG: the
    names libraries warn about, IDs, birth dates and institutions appear nowhere."""
    model = make_tiny_model(tmp_path / "model")
    files = _single_word_files(tmp_path / "in")
    with node_sending_to_storescp(tmp_path, model, "--log-level", "DEBUG") as (node, pacs):
        sent = storescu(node.port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: len(pacs.files()) >= 4, 120, "SC + SR of both studies")
        outputs = [dicomnode_status(tmp_path / "node", *extra) for extra in ([], ["--json"])]
    results = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs.files()]
    predict = subprocess.run(
        [sys.executable, "-m", "dicomnode", "predict", *map(str, files), "--out", str(tmp_path / "out"),
         "--model", str(model)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False,
        env=dict(os.environ, DICOMNODE_LOG_LEVEL="DEBUG"),
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert len(list((tmp_path / "out").rglob("*.dcm"))) >= 4
    # The markers were live: the results carry them, and the library did warn.
    assert any(str(ds.PatientName) == SINGLE_WORD["PatientName"] for ds in results)
    log = node.log.read_text(errors="replace")
    assert "DEBUG" in log and "UserWarning" in log
    texts = {
        "node log": log,
        "dicomnode status": outputs[0].stdout + outputs[0].stderr,
        "dicomnode status --json": outputs[1].stdout + outputs[1].stderr,
        "dicomnode predict": predict.stdout + predict.stderr,
    }
    for where, text in texts.items():
        lowered = text.lower()
        hits = [needle for needle in NEEDLES if needle in lowered]
        assert hits == [], f"patient data in the {where}: {hits}"
