"""CLI adapters: predict writes SC + SR, status reads the queue, errors exit 1 with one line."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from dicomnode.cli import app
from tests.helpers import make_cxr_dataset, make_tiny_model

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
