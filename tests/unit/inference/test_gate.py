"""Input gate maths and runner integration with a tiny timm model (no shared data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from dicomnode.domain import GateVerdict, NotAssessedReason
from dicomnode.errors import ModelError
from dicomnode.inference.gate import (
    GateParams,
    InputGate,
    PpcaScore,
    capture_pre_logits,
    content_check,
    inputs_to_gray,
    invert_inputs,
    layout_vectors,
    read_params,
    write_params,
)
from dicomnode.inference.manifest import GateSpec, Preprocessing
from dicomnode.inference.runner import ModelRunner
from tests.unit.inference.test_runner import SIZE, _hook_count, make_manifest

PRE = Preprocessing(input_size=SIZE, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)


LAYOUT = 8


def make_params(features: np.ndarray, layout: np.ndarray, k: int = 4) -> GateParams:
    return GateParams(PpcaScore.fit(features, k), PpcaScore.fit(layout, 4))


def make_spec(params: GateParams, threshold: float, layout_threshold: float, **overrides: object) -> GateSpec:
    values: dict[str, object] = {
        "sha256": "00" * 32, "threshold": threshold, "feature_dim": params.dim,
        "n_components": int(params.features.eigenvalues.shape[0]),
        "layout_threshold": layout_threshold, "layout_size": LAYOUT, "layout_components": 4,
    }
    values.update(overrides)
    return GateSpec.model_validate(values)


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, S, S) smooth gray images in [0, 1] (blurred noise + a vertical gradient)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE), np.float32)
    yy = np.linspace(0.2, 0.8, SIZE, dtype=np.float32)[:, None]
    for i in range(n):
        blob = cv2.GaussianBlur(rng.random((SIZE, SIZE), dtype=np.float32), (0, 0), 4)
        out[i] = np.clip(yy + (blob - blob.mean()) * 6, 0, 1)
    return out


def to_inputs(grays: np.ndarray) -> np.ndarray:
    x = (grays[:, None] - 0.5) / 0.25
    return np.repeat(x, 3, axis=1).astype(np.float32)


# -- maths ----------------------------------------------------------------------


def test_score_is_about_one_in_distribution_and_large_outside() -> None:
    rng = np.random.default_rng(0)
    d = 32
    basis = rng.standard_normal((d, d))
    train = rng.standard_normal((4000, d)) @ basis
    params = PpcaScore.fit(train, 8)
    inside = params.score(rng.standard_normal((500, d)) @ basis)
    assert 0.7 < float(np.median(inside)) < 1.3
    outside = params.score(rng.standard_normal((50, d)) @ basis + 10 * basis[0])
    assert float(outside.min()) > float(np.quantile(inside, 0.99))


def test_params_round_trip_and_sha256(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    params = make_params(rng.standard_normal((200, 8)), rng.standard_normal((200, LAYOUT * LAYOUT)), k=3)
    path = tmp_path / "gate.safetensors"
    sha = write_params(params, path)
    again = read_params(path, sha)
    features = np.random.default_rng(2).standard_normal((5, 8))
    np.testing.assert_allclose(again.features.score(features), params.features.score(features), rtol=1e-5)
    assert again.layout.dim == LAYOUT * LAYOUT
    with pytest.raises(ModelError, match="does not match"):
        read_params(path, "ff" * 32)
    with pytest.raises(ModelError, match="not found"):
        read_params(tmp_path / "absent.safetensors", None)


def test_content_check() -> None:
    rng = np.random.default_rng(0)
    blank = np.full((1, SIZE, SIZE), 0.4, np.float32)
    noise = rng.random((1, SIZE, SIZE), dtype=np.float32)
    grays = np.concatenate([blank, noise, smooth_images(2)])
    reasons, std, corr = content_check(grays, 0.02, 0.3)
    assert reasons[0] is not None and "uniform" in reasons[0]
    assert reasons[1] is not None and "noise" in reasons[1]
    assert reasons[2:] == [None, None]
    assert std[0] == pytest.approx(0.0) and corr[2] > 0.9


def test_inversion_and_gray_round_trip() -> None:
    grays = smooth_images(2)
    inputs = to_inputs(grays)
    np.testing.assert_allclose(inputs_to_gray(inputs, PRE), grays, atol=1e-6)
    inverted = invert_inputs(torch.from_numpy(inputs), PRE).numpy()
    np.testing.assert_allclose(inputs_to_gray(inverted, PRE), 1.0 - grays, atol=1e-5)


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_captured_features_are_the_pre_logits(arch: str) -> None:
    torch.manual_seed(0)
    kwargs = {"img_size": SIZE} if "vit" in arch else {}
    model = timm.create_model(arch, pretrained=False, num_classes=1, **kwargs).eval()
    x = torch.from_numpy(to_inputs(smooth_images(2)))
    with torch.inference_mode(), capture_pre_logits(model) as captured:
        model(x)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert len(captured) == 1  # pre_logits=True skips the classifier
    torch.testing.assert_close(captured[0], expected.float())
    assert _hook_count(model) == 0


def test_layout_vectors_are_standardised_and_invert_to_their_negative() -> None:
    grays = smooth_images(2)
    v = layout_vectors(grays, LAYOUT)
    assert v.shape == (2, LAYOUT * LAYOUT)
    np.testing.assert_allclose(v.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(v.std(axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(layout_vectors(1.0 - grays, LAYOUT), -v, atol=1e-4)
    np.testing.assert_allclose(layout_vectors(0.5 * grays + 0.2, LAYOUT), v, atol=1e-3)


# -- runner ---------------------------------------------------------------------


def tilted_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth images that are bright at the top: an asymmetric layout with a clear inversion."""
    yy = np.linspace(0.9, 0.1, SIZE, dtype=np.float32)[:, None]
    return np.clip(0.5 * smooth_images(n, seed) + 0.7 * yy - 0.15, 0, 1).astype(np.float32)


def gated_runner(arch: str = "test_resnet") -> tuple[ModelRunner, np.ndarray]:
    """A tiny runner whose gate is fitted on tilted smooth images; returns it and those inputs."""
    torch.manual_seed(0)
    manifest = make_manifest(architecture=arch)
    kwargs = {"img_size": SIZE} if "vit" in arch else {}
    model = timm.create_model(arch, pretrained=False, num_classes=2, **kwargs).eval()
    grays = tilted_images(96, seed=1)
    fit_inputs = to_inputs(grays)
    with torch.inference_mode(), capture_pre_logits(model) as captured:
        model(torch.from_numpy(fit_inputs))
    features = captured[0].numpy()
    layout = layout_vectors(grays, LAYOUT)
    params = make_params(features, layout, k=4)
    spec = make_spec(
        params,
        threshold=float(params.features.score(features).max()) * 1.5,
        layout_threshold=float(params.layout.score(layout).max()) * 1.5,
    )
    gate = InputGate(params, spec, manifest.preprocessing)
    return ModelRunner(model, manifest, torch.device("cpu"), gate=gate), fit_inputs


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_runner_gates_blank_and_noise_and_explains_only_assessable(arch: str) -> None:
    runner, fit_inputs = gated_runner(arch)
    rng = np.random.default_rng(5)
    blank = to_inputs(np.full((1, SIZE, SIZE), 0.3, np.float32))
    noise = to_inputs(rng.random((1, SIZE, SIZE), dtype=np.float32))
    inverted = to_inputs(1.0 - tilted_images(1, seed=7))
    batch = np.concatenate([fit_inputs[:2], blank, noise, inverted])
    before = _hook_count(runner.model)
    result = runner.predict_and_explain(batch)
    reasons = [v.reason for v in result.verdicts]
    assert reasons[:2] == [None, None] and all(v.assessable for v in result.verdicts[:2])
    assert reasons[2:4] == [NotAssessedReason.NO_IMAGE_CONTENT] * 2
    assert reasons[4] is NotAssessedReason.INVERTED_GRAYSCALE
    assert result.heatmaps[0] is not None and result.heatmaps[1] is not None
    assert result.heatmaps[2:] == [None, None, None]
    assert len(result.predictions) == 5
    assert all(v.threshold == 1.0 and (v.score > 1.0) != v.assessable for v in result.verdicts[:2])
    assert _hook_count(runner.model) == before
    plain = runner.predict_and_explain(batch, [False] * 5)
    assert [v.reason for v in plain.verdicts] == reasons
    np.testing.assert_allclose(
        [p.probabilities for p in plain.predictions], [p.probabilities for p in result.predictions], atol=1e-5
    )


def test_runner_without_gate_accepts_everything() -> None:
    from tests.unit.inference.test_runner import make_batch, make_runner

    result = make_runner().predict_and_explain(make_batch(2))
    assert all(v == GateVerdict.accepted() for v in result.verdicts)


def test_gate_dimension_mismatch_is_a_model_error() -> None:
    rng = np.random.default_rng(0)
    params = make_params(rng.standard_normal((100, 6)), rng.standard_normal((100, LAYOUT * LAYOUT)), k=2)
    with pytest.raises(ModelError, match="re-fit"):
        InputGate(params, make_spec(params, 3.0, 3.0, feature_dim=7), PRE)


def test_confirm_inverted_runs_one_pass_only_for_inverted_candidates() -> None:
    rng = np.random.default_rng(0)
    params = make_params(rng.standard_normal((300, 6)), rng.standard_normal((300, LAYOUT * LAYOUT)), k=2)
    gate = InputGate(params, make_spec(params, 3.0, 3.0), PRE)
    inputs = torch.from_numpy(to_inputs(smooth_images(3)))
    first = [
        GateVerdict(False, NotAssessedReason.INVERTED_GRAYSCALE, 4.0, 1.0, "grayscale looks inverted: x"),
        GateVerdict(False, NotAssessedReason.INVERTED_GRAYSCALE, 4.0, 1.0, "grayscale looks inverted: x"),
        GateVerdict(True, None, 0.5, 1.0),
    ]
    calls: list[int] = []

    def features_of(batch: torch.Tensor) -> np.ndarray:
        calls.append(int(batch.shape[0]))
        close = params.features.mean[None, :].astype(np.float64)
        return np.concatenate([close, close + 100.0])  # second inversion is no chest either

    out = gate.confirm_inverted(inputs, first, features_of)
    assert calls == [2]
    assert out[0].reason is NotAssessedReason.INVERTED_GRAYSCALE
    assert out[1].reason is NotAssessedReason.NOT_CHEST_RADIOGRAPH and not out[1].assessable
    assert out[2].assessable
    assert gate.confirm_inverted(inputs, [first[2]] * 3, features_of) == [first[2]] * 3 and calls == [2]
