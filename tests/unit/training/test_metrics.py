"""Metric code checked against scikit-learn on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from dicomnode.errors import DataError
from dicomnode.training import metrics


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.35).astype(np.int64)
    s = np.clip(0.3 * y + rng.normal(0.4, 0.2, 400), 0, 1)
    s[:50] = np.round(s[:50], 1)  # ties
    return y, s


def test_auc_matches_sklearn(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scores
    assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_auc_known_values() -> None:
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_matches_sklearn(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scores
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])


def test_average_precision_matches_sklearn(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scores
    assert metrics.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_threshold_metrics_match_sklearn(scores: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    y, s = scores
    pred = (s >= threshold).astype(np.int64)
    report = metrics.binary_report(y, s, threshold, n_boot=0)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (report.tn, report.fp, report.fn, report.tp) == (tn, fp, fn, tp)
    np.testing.assert_array_equal(metrics.confusion(y, s, threshold).matrix(), skm.confusion_matrix(y, pred))
    assert report.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert report.sensitivity == pytest.approx(skm.recall_score(y, pred))
    assert report.specificity == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert report.precision == pytest.approx(skm.precision_score(y, pred))
    assert report.f1 == pytest.approx(skm.f1_score(y, pred))
    assert report.n == 400 and report.n_positive == int(y.sum())


def test_bootstrap_ci_brackets_the_auc(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scores
    low, high = metrics.bootstrap_auc_ci(y, s, n_boot=300, seed=1)
    auc = metrics.roc_auc(y, s)
    assert low < auc < high
    assert 0.02 < high - low < 0.2
    assert metrics.bootstrap_auc_ci(y, s, n_boot=300, seed=1) == (low, high)  # seeded


def test_ece_against_a_direct_computation() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.85, 0.95, 0.55, 0.45, 0.65, 0.92])
    ece, conf, acc, counts = metrics.expected_calibration_error(y, p, n_bins=10)
    expected = 0.0
    for lo in np.arange(10) / 10:
        mask = (p >= lo) & (p < lo + 0.1)
        if mask.any():
            expected += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    assert ece == pytest.approx(expected / len(y))
    assert counts.sum() == len(y)
    prob_true, prob_pred = skm_calibration(y, p)
    finite = np.isfinite(acc)
    np.testing.assert_allclose(acc[finite], prob_true)
    np.testing.assert_allclose(conf[finite], prob_pred)


def skm_calibration(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.calibration import calibration_curve

    return calibration_curve(y, p, n_bins=10, strategy="uniform")


def test_youden_threshold_maximises_j(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scores
    threshold = metrics.youden_threshold(y, s)
    fpr, tpr, _ = skm.roc_curve(y, s)
    best_j = float(np.max(tpr - fpr))
    report = metrics.binary_report(y, s, threshold, n_boot=0)
    assert report.sensitivity + report.specificity - 1 == pytest.approx(best_j)


def test_sensitivity_threshold_reaches_the_target(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = scores
    threshold = metrics.choose_threshold(y, s, "sensitivity:0.95")
    report = metrics.binary_report(y, s, threshold, n_boot=0)
    assert report.sensitivity >= 0.95
    # the highest such threshold: a slightly higher one loses the target
    higher = metrics.binary_report(y, s, np.min(s[s > threshold]) + 1e-9, n_boot=0)
    assert higher.sensitivity < 0.95


def test_policies_and_errors() -> None:
    assert metrics.choose_threshold([0, 1], [0.2, 0.8], "fixed:0.3") == 0.3
    with pytest.raises(DataError, match="unknown threshold policy"):
        metrics.choose_threshold([0, 1], [0.2, 0.8], "magic")
    with pytest.raises(DataError, match="both classes"):
        metrics.choose_threshold([1, 1], [0.2, 0.8], "youden")


def test_per_label_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 3)) < 0.3).astype(np.float32)
    probs = np.clip(targets * 0.4 + rng.random((200, 3)) * 0.6, 0, 1)
    per = metrics.per_label_auc(targets, probs, ("a", "b", "c"))
    for i, name in enumerate("abc"):
        assert per[name] == pytest.approx(skm.roc_auc_score(targets[:, i], probs[:, i]))
    assert metrics.mean_auc(targets, probs) == pytest.approx(skm.roc_auc_score(targets, probs, average="macro"))
