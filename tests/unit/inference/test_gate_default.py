"""models/default with its shipped gate on real files: chests pass, everything else is gated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.domain import NotAssessedReason
from dicomnode.inference.registry import resolve_manifest
from dicomnode.inference.runner import ModelRunner
from dicomnode.training.gate_fit import inputs_of_grays
from dicomnode.training.gate_negatives import documents, synthetic
from tests.helpers import REPO_ROOT, require_shared_data

MODEL_DIR = REPO_ROOT / "models" / "default"


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    loaded = resolve_manifest(str(MODEL_DIR))
    if loaded.manifest.gate is None:
        pytest.skip("models/default has no gate (run `dicomnode gate fit --model default --data ...`)")
    return ModelRunner.from_loaded(loaded, device="cpu")


def _gray(name: str) -> np.ndarray:
    from dicomnode.training.datasets import load_gray

    return load_gray(require_shared_data("dicom", name))


def _analyse(runner: ModelRunner, grays: list[np.ndarray], explain: bool = False):  # type: ignore[no-untyped-def]
    inputs = inputs_of_grays(grays, runner.manifest.preprocessing)
    return runner.predict_and_explain(inputs, [explain] * len(grays))


def test_adult_chests_pass_and_get_heatmaps(runner: ModelRunner) -> None:
    names = ["RG1_UNCR.dcm", "siim_cxr_pa_jpeg_baseline.dcm", "nih_cxr14_google_dicom_DX.dcm"]
    result = _analyse(runner, [_gray(n) for n in names], explain=True)
    for name, verdict, heatmap in zip(names, result.verdicts, result.heatmaps):
        assert verdict.assessable, f"{name}: {verdict.detail}"
        assert heatmap is not None


def test_tibia_and_inverted_chest_are_gated_without_heatmaps(runner: ModelRunner) -> None:
    result = _analyse(runner, [_gray("RG3_UNCR.dcm"), _gray("Fake_MONOHR1.dcm")], explain=True)
    tibia, fake = result.verdicts
    assert tibia.reason is NotAssessedReason.NOT_CHEST_RADIOGRAPH, tibia.detail
    assert fake.reason is NotAssessedReason.INVERTED_GRAYSCALE, fake.detail
    assert result.heatmaps == [None, None]
    assert len(result.predictions) == 2


def test_synthetic_images_and_forms_are_gated(runner: ModelRunner) -> None:
    rng = np.random.default_rng(0)
    by_name = {item.name: item.gray for item in synthetic(rng, size=256)}
    picked = ["uniform-noise-0", "gaussian-noise-0", "constant-0.5", "nearly-constant", "linear-90", "radial", "checkerboard-8"]
    forms = [item.gray for item in documents(np.random.default_rng(1), n=3)]
    result = _analyse(runner, [by_name[n] for n in picked] + forms)
    allowed = {NotAssessedReason.NO_IMAGE_CONTENT, NotAssessedReason.NOT_CHEST_RADIOGRAPH}
    for name, verdict in zip(picked + ["text", "form", "table"], result.verdicts):
        assert not verdict.assessable and verdict.reason in allowed, f"{name}: {verdict.detail}"
    reasons = dict(zip(picked, (v.reason for v in result.verdicts)))
    assert reasons["uniform-noise-0"] is NotAssessedReason.NO_IMAGE_CONTENT
    assert reasons["constant-0.5"] is NotAssessedReason.NO_IMAGE_CONTENT


def test_shipped_gate_file_is_small() -> None:
    manifest = resolve_manifest(str(MODEL_DIR)).manifest
    if manifest.gate is None:
        pytest.skip("models/default has no gate")
    assert (MODEL_DIR / manifest.gate.file).stat().st_size < 1_000_000
    assert manifest.gate.val_acceptance is not None and manifest.gate.val_acceptance >= 0.99


def test_ct_slice_from_pydicom_is_gated(runner: ModelRunner) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    from dicomnode.inference.preprocess import dicom_to_gray

    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    gray = dicom_to_gray(pydicom.dcmread(Path(str(path))))
    verdict = _analyse(runner, [gray]).verdicts[0]
    assert not verdict.assessable, verdict.detail
