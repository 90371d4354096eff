"""Calibration in the manifest and in the runner: old manifests unchanged, calibrated ones applied."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from pydantic import ValidationError

from dicomnode.inference.calibration import Calibration, calibrated_probabilities
from dicomnode.inference.manifest import ModelManifest, Preprocessing
from dicomnode.inference.runner import ModelRunner

REPO = Path(__file__).resolve().parents[3]


def _manifest(**overrides: object) -> ModelManifest:
    values: dict[str, object] = {
        "name": "tiny",
        "architecture": "test_resnet",
        "labels": ("pneumonia",),
        "thresholds": (0.5,),
        "preprocessing": Preprocessing(input_size=64, in_chans=1, mean=(0.5,), std=(0.25,)),
        "weights": "model.safetensors",
        "weights_sha256": "ab" * 32,
    }
    values.update(overrides)
    return ModelManifest(**values)  # type: ignore[arg-type]


def test_old_manifests_without_calibration_still_load() -> None:
    for folder in ("default", "vit-tiny"):
        data = json.loads((REPO / "models" / folder / "manifest.json").read_text(encoding="utf-8"))
        data.pop("calibration", None)
        manifest = ModelManifest.model_validate(data)
        assert manifest.calibration is None and manifest.site_validation is None


def test_calibration_is_validated() -> None:
    with pytest.raises(ValidationError, match="one temperature per label"):
        _manifest(calibration=Calibration(temperatures=(1.0, 2.0)))
    with pytest.raises(ValidationError):
        Calibration(temperatures=(0.0,))
    with pytest.raises(ValidationError, match="no bias"):
        Calibration(method="temperature", temperatures=(1.0,), biases=(0.3,))
    round_trip = _manifest(calibration=Calibration(temperatures=(2.0,), n=10))
    assert ModelManifest.model_validate_json(round_trip.model_dump_json()) == round_trip


def test_calibrated_probabilities() -> None:
    z = np.array([[-3.0, 0.0], [0.5, 8.0]], dtype=np.float32)
    np.testing.assert_allclose(calibrated_probabilities(z, None), 1 / (1 + np.exp(-z.astype(np.float64))), rtol=1e-6)
    cal = Calibration(method="platt", temperatures=(2.0, 0.5), biases=(0.1, -0.2))
    expected = 1 / (1 + np.exp(-(z.astype(np.float64) / np.array([2.0, 0.5]) + np.array([0.1, -0.2]))))
    np.testing.assert_allclose(calibrated_probabilities(z, cal), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="2 temperatures for 1 labels"):
        calibrated_probabilities(z[:, :1], cal)


def test_runner_applies_the_manifest_calibration() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1, in_chans=1)
    batch = np.random.default_rng(0).normal(0, 1, (4, 1, 64, 64)).astype(np.float32)
    plain = ModelRunner(model, _manifest(), torch.device("cpu"))
    with torch.no_grad():
        logits = plain.model(torch.from_numpy(batch)).numpy().astype(np.float64)
    # no calibration: exactly the sigmoid, as before
    got = np.array([p.probabilities for p in plain.predict(batch)])
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=1e-6, atol=1e-7)
    calibrated = ModelRunner(model, _manifest(calibration=Calibration(temperatures=(3.0,))), torch.device("cpu"))
    got = np.array([p.probabilities for p in calibrated.predict(batch)])
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits / 3.0)), rtol=1e-6, atol=1e-7)
    # predict_and_explain reports the same calibrated probabilities
    analysis = calibrated.predict_and_explain(batch)
    np.testing.assert_allclose(np.array([p.probabilities for p in analysis.predictions]), got, atol=1e-6)
