"""``train``, ``evaluate --json`` and ``models list`` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dicomnode.cli import training

app = typer.Typer()
app.command("train")(training.train)
app.command("evaluate")(training.evaluate)
app.add_typer(training.models_app, name="models")
runner = CliRunner()


@pytest.fixture(scope="module")
def cli_model(synthetic_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "models" / "tiny"
    result = runner.invoke(
        app,
        [
            "train", "--data", str(synthetic_folder), "--arch", "test_resnet", "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--img-size", "32", "--in-chans", "1",
            "--val-fraction", "0.25", "--seed", "2", "--init", "random", "--no-augment",
            "--threshold-policy", "sensitivity:0.9", "--lr", "0.003", "--device", "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    return out


@pytest.mark.slow
def test_evaluate_json_last_line(cli_model: Path, synthetic_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(cli_model / "manifest.json"), "--data", str(synthetic_folder),
         "--json", "--bootstrap", "50", "--out", str(tmp_path / "eval")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("auc", "accuracy", "sensitivity", "specificity", "threshold", "n"):
        assert key in report
    assert report["n"] == 48
    manifest = json.loads((cli_model / "manifest.json").read_text(encoding="utf-8"))
    assert report["threshold"] == pytest.approx(manifest["thresholds"][0])
    assert manifest["threshold_policy"] == "sensitivity:0.9"
    assert (tmp_path / "eval" / "report.json").is_file()
    assert (tmp_path / "eval" / "roc.png").is_file()


@pytest.mark.slow
def test_evaluate_val_split_reproduces_the_manifest(cli_model: Path, synthetic_folder: Path) -> None:
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(cli_model), "--data", str(synthetic_folder), "--split", "val", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    vm = json.loads((cli_model / "manifest.json").read_text(encoding="utf-8"))["validation_metrics"]
    assert report["n"] == vm["n"] == 12
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        assert report[key] == pytest.approx(vm[key])


@pytest.mark.slow
def test_evaluate_several_models_keyed_by_name(cli_model: Path, synthetic_folder: Path) -> None:
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(cli_model), "--model", str(cli_model / "manifest.json"),
         "--data", str(synthetic_folder), "--json", "--bootstrap", "0"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) == 2
    first, second = report.values()
    assert first["auc"] == pytest.approx(second["auc"])


@pytest.mark.slow
def test_models_list(cli_model: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--dir", str(cli_model.parent), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [m["name"] for m in listed] == ["tiny"]
    assert listed[0]["architecture"] == "test_resnet"
    table = runner.invoke(app, ["models", "list", "--dir", str(cli_model.parent)])
    assert "tiny" in table.stdout and "test_resnet" in table.stdout


def test_unknown_model_is_one_line_error(tmp_path: Path, synthetic_folder: Path) -> None:
    result = runner.invoke(
        app,
        ["evaluate", "--model", "no-such-model", "--data", str(synthetic_folder)],
        env={"DICOMNODE_MODELS_DIR": str(tmp_path)},
    )
    assert result.exit_code == 1
    assert "unknown model 'no-such-model'" in result.output
    assert "Traceback" not in result.output


def test_bad_dataset_is_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path / "absent"), "--arch", "test_resnet", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "dataset path not found" in result.output


@pytest.mark.slow
def test_train_fits_the_input_gate(cli_model: Path) -> None:
    from dicomnode.inference.gate import InputGate
    from dicomnode.inference.manifest import read_manifest

    loaded = read_manifest(cli_model)
    spec = loaded.manifest.gate
    assert spec is not None
    assert (cli_model / spec.file).is_file()
    assert spec.n_val > 0 and spec.val_acceptance is not None and 0.5 <= spec.val_acceptance <= 1.0
    gate = InputGate.load(loaded)
    assert gate is not None and gate.params.dim == spec.feature_dim
