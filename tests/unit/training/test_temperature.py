"""Temperature/Platt fitting, bootstrap intervals (image and patient) and the specificity policy."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.errors import DataError
from dicomnode.training import metrics
from dicomnode.training.temperature import binary_nll, fit_calibration, fit_scaling


def _synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z): z is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.5, 2.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return y, z


def test_temperature_is_recovered_and_lowers_ece_and_nll() -> None:
    y, z = _synthetic(20000)
    overconfident = 2.5 * z  # a model whose logits are 2.5x too large
    temperature, bias = fit_scaling(y, overconfident)
    assert temperature == pytest.approx(2.5, rel=0.05) and bias == 0.0
    cal = fit_calibration(y[:, None], overconfident[:, None], fitted_on="synthetic")
    assert cal.method == "temperature" and cal.n == 20000
    assert cal.temperatures[0] == pytest.approx(temperature)
    assert cal.nll_after[0] < cal.nll_before[0]
    assert cal.ece_after[0] < 0.5 * cal.ece_before[0]
    assert cal.ece_after[0] < 0.02
    # the fitted NLL is a minimum: nearby temperatures are worse
    for t in (0.9 * temperature, 1.1 * temperature):
        assert binary_nll(y, overconfident / t) > cal.nll_after[0]


def test_platt_recovers_temperature_and_bias() -> None:
    y, z = _synthetic(20000, seed=1)
    shifted = 2.0 * z - 1.0  # z = shifted / 2 + 0.5
    temperature, bias = fit_scaling(y, shifted, "platt")
    assert temperature == pytest.approx(2.0, rel=0.05)
    assert bias == pytest.approx(0.5, abs=0.08)


def test_a_single_class_label_keeps_identity_and_fit_refuses_it() -> None:
    y, z = _synthetic(200)
    targets = np.stack([y, np.zeros_like(y)], axis=1)
    cal = fit_calibration(targets, np.stack([2 * z, z], axis=1))
    assert cal.temperatures[1] == 1.0
    with pytest.raises(DataError, match="both classes"):
        fit_scaling(np.zeros(5), np.arange(5.0))


def test_image_bootstrap_auc_interval_is_unchanged() -> None:
    y, z = _synthetic(300, seed=2)
    p = 1 / (1 + np.exp(-z))
    cis = metrics.bootstrap_cis(y, p, 0.5, n_boot=200, seed=3)
    assert cis["auc"] == metrics.bootstrap_auc_ci(y, p, n_boot=200, seed=3)
    report = metrics.binary_report(y, p, 0.5, n_boot=200, seed=3)
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        low, high = getattr(report, f"{key}_ci_low"), getattr(report, f"{key}_ci_high")
        assert low <= getattr(report, key) <= high
    assert "images" in report.ci_method and report.n_groups == 0


def test_patient_bootstrap_keeps_patients_together() -> None:
    y, z = _synthetic(200, seed=4)
    p = 1 / (1 + np.exp(-z))
    # every patient has three identical images: resampling images understates the spread
    y3, p3 = np.repeat(y, 3), np.repeat(p, 3)
    groups = [f"p{i}" for i in np.repeat(np.arange(200), 3)]
    per_image = metrics.bootstrap_cis(y3, p3, 0.5, n_boot=300, seed=0)
    per_patient = metrics.bootstrap_cis(y3, p3, 0.5, groups=groups, n_boot=300, seed=0)
    alone = metrics.bootstrap_cis(y, p, 0.5, n_boot=300, seed=0)
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        width_image = per_image[key][1] - per_image[key][0]
        width_patient = per_patient[key][1] - per_patient[key][0]
        width_alone = alone[key][1] - alone[key][0]
        assert width_patient > 1.3 * width_image
        assert width_patient == pytest.approx(width_alone, rel=0.35)
    report = metrics.binary_report(y3, p3, 0.5, n_boot=100, groups=groups)
    assert report.n_groups == 200 and "200 patients" in report.ci_method


def test_specificity_threshold_reaches_the_target() -> None:
    y, z = _synthetic(500, seed=5)
    p = 1 / (1 + np.exp(-z))
    for target in (0.8, 0.9, 0.95):
        threshold = metrics.choose_threshold(y, p, f"specificity:{target}")
        spec = np.mean(p[y == 0] < threshold)
        assert spec >= target
        # the lowest such threshold: the next lower negative score would break the target
        lower = p[(y == 0) & (p < threshold)].max()
        assert np.mean(p[y == 0] < lower) < target
    with pytest.raises(DataError, match="specificity"):
        metrics.choose_threshold(y, p, "specificity:1.5")
