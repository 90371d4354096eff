"""``train`` calibrates, ``calibrate`` reproduces it post hoc, ``site-threshold`` writes a served copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dicomnode.cli import training
from dicomnode.inference.manifest import read_manifest, sha256_file

app = typer.Typer()
app.command("train")(training.train)
app.command("evaluate")(training.evaluate)
app.command("calibrate")(training.calibrate)
app.command("site-threshold")(training.site_threshold)
runner = CliRunner()


@pytest.fixture(scope="module")
def calibrated_model(synthetic_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calib") / "tiny"
    result = runner.invoke(
        app,
        [
            "train", "--data", str(synthetic_folder), "--arch", "test_resnet", "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--img-size", "64", "--in-chans", "1",
            "--val-fraction", "0.25", "--seed", "3", "--init", "random", "--no-augment",
            "--lr", "0.003", "--device", "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sensitivity" in result.output and "95% CIs" in result.output
    return out


@pytest.fixture(scope="module")
def site_folder(synthetic_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic images under Kermany-style names: two images per patient."""
    root = tmp_path_factory.mktemp("site")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir()
        for i, src in enumerate(sorted((synthetic_folder / cls).glob("*.png"))):
            name = f"person{i // 2}_bacteria_{i}.png" if cls == "PNEUMONIA" else f"IM-{i // 2:04d}-{i % 2:04d}.png"
            shutil.copy(src, root / cls / name)
    return root


def _json_tail(output: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return loaded


@pytest.mark.slow
def test_train_stores_calibration_and_intervals(calibrated_model: Path) -> None:
    manifest = read_manifest(calibrated_model).manifest
    cal = manifest.calibration
    assert cal is not None and cal.method == "temperature" and cal.n == 12
    assert cal.temperatures[0] > 0 and cal.nll_after[0] <= cal.nll_before[0] + 1e-12
    vm = manifest.validation_metrics
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        assert vm[f"{key}_ci_low"] <= vm[key] <= vm[f"{key}_ci_high"]
    assert "images" in str(manifest.validation_split["ci_method"])
    report = json.loads((calibrated_model / "metrics.json").read_text(encoding="utf-8"))
    assert report["calibration"]["temperatures"] == list(cal.temperatures)
    header = (calibrated_model / "val_predictions.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "target,probability,uncalibrated_probability"


@pytest.mark.slow
def test_calibrate_reproduces_the_train_result(calibrated_model: Path, synthetic_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(calibrated_model, folder)
    trained = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    old = dict(trained, calibration=None, thresholds=[0.5])  # as a model from before calibration
    (folder / "manifest.json").write_text(json.dumps(old), encoding="utf-8")
    weights_before = sha256_file(folder / "model.safetensors")
    result = runner.invoke(app, ["calibrate", "--model", str(folder), "--data", str(synthetic_folder), "--json"])
    assert result.exit_code == 0, result.output
    assert "rewrote" in result.output and "weights unchanged" in result.output
    assert "0.5000 ->" in result.output
    rewritten = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert rewritten["thresholds"] == pytest.approx(trained["thresholds"], abs=1e-9)
    assert rewritten["calibration"]["temperatures"] == pytest.approx(trained["calibration"]["temperatures"], rel=1e-9)
    for key, value in trained["validation_metrics"].items():
        assert rewritten["validation_metrics"][key] == pytest.approx(value, abs=1e-9), key
    assert sha256_file(folder / "model.safetensors") == weights_before
    assert _json_tail(result.output)["threshold"] == pytest.approx(trained["thresholds"][0])


@pytest.mark.slow
def test_evaluate_and_runner_report_the_calibrated_figures(calibrated_model: Path, synthetic_folder: Path) -> None:
    from dicomnode.inference.preprocess import gray_to_input
    from dicomnode.inference.runner import ModelRunner
    from dicomnode.training.datasets import Split
    from dicomnode.training.evaluate import evaluate_models

    loaded = read_manifest(calibrated_model)
    vm = loaded.manifest.validation_metrics
    result = runner.invoke(
        app, ["evaluate", "--model", str(calibrated_model), "--data", str(synthetic_folder), "--split", "val", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = _json_tail(result.output)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ece", "threshold"):
        assert report[key] == pytest.approx(vm[key], abs=1e-9), key
    for key in ("accuracy", "sensitivity", "specificity"):
        assert report[f"{key}_ci_low"] == pytest.approx(vm[f"{key}_ci_low"], abs=1e-9)
    assert report["calibrated"] is True
    # serving (ModelRunner on the same pixels) reports the probabilities evaluate used
    evaluation = evaluate_models([str(calibrated_model)], synthetic_folder, split=Split.VAL, n_boot=0)
    model = ModelRunner.from_loaded(loaded, device="cpu")
    from dicomnode.training.datasets import select_split

    val = select_split(synthetic_folder, Split.VAL, val_fraction=0.25, seed=3)
    batch = np.stack([gray_to_input(val.gray(i), loaded.manifest.preprocessing) for i in range(len(val))])
    served = np.array([p.probabilities[0] for p in model.predict(batch)])
    np.testing.assert_allclose(served, evaluation.evaluations[0].y_prob, atol=1e-6)
    saved = np.loadtxt(calibrated_model / "val_predictions.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(served, saved[:, 1], atol=2e-6)


def test_calibrate_refuses_other_data(calibrated_model: Path, tmp_path: Path) -> None:
    from tests.unit.training.conftest import write_synthetic_folder

    other = write_synthetic_folder(tmp_path / "other", n_per_class=10)
    folder = tmp_path / "copy"
    shutil.copytree(calibrated_model, folder)
    result = runner.invoke(app, ["calibrate", "--model", str(folder), "--data", str(other)])
    assert result.exit_code == 1
    assert "re-carved validation split has" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_site_threshold_writes_a_served_copy(calibrated_model: Path, site_folder: Path, tmp_path: Path) -> None:
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner

    source_text = (calibrated_model / "manifest.json").read_text(encoding="utf-8")
    out = tmp_path / "sites" / "tiny-site-a"
    args = ["site-threshold", "--model", str(calibrated_model), "--data", str(site_folder), "--out", str(out),
            "--policy", "sensitivity:0.9", "--site-name", "Site A", "--bootstrap", "200", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "source threshold" in result.output and "site threshold" in result.output
    assert "24 patients (cluster)" in result.output
    source = read_manifest(calibrated_model).manifest
    site = read_manifest(out).manifest
    assert (calibrated_model / "manifest.json").read_text(encoding="utf-8") == source_text
    assert sha256_file(out / "model.safetensors") == source.weights_sha256 == site.weights_sha256
    assert site.version == f"{source.version}+site.site-a"
    assert site.threshold_policy.startswith("site: sensitivity:0.9 on image folder") and "n=48" in site.threshold_policy
    assert site.calibration == source.calibration
    sv = site.site_validation
    assert sv is not None and sv.n == 48 and sv.n_positive == 24 and sv.n_groups == 24
    assert sv.source_thresholds == source.thresholds
    assert sv.at_new_threshold["threshold"] == site.thresholds[0]
    assert sv.at_new_threshold["sensitivity"] >= 0.9
    assert sv.at_source_threshold["threshold"] == source.thresholds[0]
    for figures in (sv.at_new_threshold, sv.at_source_threshold):
        assert figures["sensitivity_ci_low"] <= figures["sensitivity"] <= figures["sensitivity_ci_high"]
    assert (out / "site_metrics.json").is_file() and (out / "site_roc.png").is_file()
    # the registry and the runner take the new folder (as serve --model DIR does)
    for ref in (str(out), str(out / "manifest.json")):
        loaded = resolve_manifest(ref)
        assert loaded.manifest.version == site.version
    assert ModelRunner.from_loaded(resolve_manifest(str(out)), device="cpu").thresholds == site.thresholds
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output


def test_site_threshold_refuses_one_class_and_bad_policy(calibrated_model: Path, tmp_path: Path) -> None:
    npz = tmp_path / "normals.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8), train_labels=np.zeros((6, 1)))
    out = tmp_path / "site"
    result = runner.invoke(app, ["site-threshold", "--model", str(calibrated_model), "--data", str(npz), "--out", str(out)])
    assert result.exit_code == 1
    assert "one class only (6 negative, 0 pneumonia)" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
    bad = runner.invoke(
        app, ["site-threshold", "--model", str(calibrated_model), "--data", str(npz), "--out", str(out), "--policy", "fixed:0.3"]
    )
    assert bad.exit_code == 1 and "needs no site data" in bad.output
