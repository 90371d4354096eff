"""Tiny real training runs: the loss goes down, the written model reloads and predicts the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import read_manifest, sha256_file
from dicomnode.inference.registry import load_model
from dicomnode.training.augment import augment_gray
from dicomnode.training.datasets import Split
from dicomnode.training.evaluate import evaluate_models
from dicomnode.training.init import initialise
from dicomnode.training.loop import TrainConfig, train


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": data,
        "arch": "test_resnet",
        "out": out,
        "epochs": 4,
        "batch_size": 8,
        "img_size": 32,
        "in_chans": 1,
        "val_fraction": 0.25,
        "seed": 1,
        "lr": 3e-3,
        "warmup_epochs": 0.5,
        "augment": False,
        "patience": 10,
        "bootstrap": 50,
        "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(synthetic_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    train(tiny_config(synthetic_folder, out))
    return out


@pytest.mark.slow
def test_training_lowers_the_loss(trained: Path) -> None:
    history = json.loads((trained / "history.json").read_text(encoding="utf-8"))
    assert len(history) == 4
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert max(h["val_auc"] for h in history) > 0.8


@pytest.mark.slow
def test_written_model_reloads_and_predicts_the_same(trained: Path, synthetic_folder: Path) -> None:
    loaded = read_manifest(trained)
    manifest = loaded.manifest
    assert manifest.name == "tiny" and manifest.architecture == "test_resnet"
    assert manifest.labels == ("pneumonia",)
    assert manifest.preprocessing.input_size == 32 and manifest.preprocessing.in_chans == 1
    assert manifest.weights_sha256 == sha256_file(trained / "model.safetensors")
    assert 0.0 <= manifest.thresholds[0] <= 1.0
    vm = manifest.validation_metrics
    assert vm["n"] == 12 and vm["val_fraction"] == 0.25 and vm["split_seed"] == 1
    for png in ("curves.png", "roc.png", "pr.png", "confusion.png", "reliability.png"):
        assert (trained / png).stat().st_size > 1000
    # evaluate re-carves the same validation split from the manifest and reproduces its figures
    result = evaluate_models([str(trained)], synthetic_folder, split=Split.VAL, n_boot=50)
    report = result.summary()
    for key in ("auc", "accuracy", "sensitivity", "specificity", "threshold"):
        assert report[key] == pytest.approx(vm[key], abs=1e-6)
    assert report["n"] == 12
    saved = np.loadtxt(trained / "val_predictions.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(result.evaluations[0].y_prob, saved[:, 1], atol=1e-5)
    np.testing.assert_array_equal(result.evaluations[0].y_true, saved[:, 0])
    model = load_model(loaded)
    assert not model.training


@pytest.mark.slow
def test_resume_continues_the_history(synthetic_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    train(tiny_config(synthetic_folder, out, epochs=2))
    result = train(tiny_config(synthetic_folder, out, epochs=3, resume=True))
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0]
    with pytest.raises(ModelError, match="no last.pt"):
        train(tiny_config(synthetic_folder, tmp_path / "fresh", resume=True))


def test_augmentation_keeps_range_and_shape_and_is_seeded() -> None:
    gray = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    a = augment_gray(gray, np.random.default_rng(0))
    b = augment_gray(gray, np.random.default_rng(0))
    assert a.shape == gray.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, gray)
    big = augment_gray(np.zeros((1000, 800), dtype=np.float32), np.random.default_rng(1), max_side=100)
    assert big.shape == (100, 80)


def test_init_from_a_weights_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False, num_classes=5, in_chans=3)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = timm.create_model("test_resnet", pretrained=False, num_classes=1, in_chans=1)
    note = initialise(target, "test_resnet", str(tmp_path / "w.safetensors"))
    assert "w.safetensors" in note
    # RGB stem summed into the gray channel; the 5-class head is skipped (shape differs)
    stem = next(k for k, v in source.state_dict().items() if v.ndim == 4)
    torch.testing.assert_close(target.state_dict()[stem], source.state_dict()[stem].sum(1, keepdim=True))
    with pytest.raises(ModelError, match="not found"):
        initialise(target, "test_resnet", str(tmp_path / "absent.pth"))


def test_effnet_package_init_only_fits_lite0() -> None:
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=1)
    with pytest.raises(ModelError, match="only fits efficientnet_lite0"):
        initialise(model, "test_resnet", "effnet-lite0-package")


@pytest.mark.slow
def test_effnet_package_weights_load_into_timm() -> None:
    import timm

    from dicomnode.training.init import effnet_lite0_package_state_dict

    state = effnet_lite0_package_state_dict()
    assert len(state) == 294 and "conv_stem.weight" in state
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1)
    initialise(model, "efficientnet_lite0", "effnet-lite0-package")
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    torch.testing.assert_close(model.state_dict()["bn2.running_var"], state["bn2.running_var"])


def test_imagenet_init_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-dicomnode-test")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1)
    with pytest.raises(ModelError, match="cannot fetch timm ImageNet weights"):
        initialise(model, "test_resnet", "imagenet")


@pytest.mark.slow
def test_distillation_from_a_teacher_on_the_same_split(trained: Path, synthetic_folder: Path, tmp_path: Path) -> None:
    """A student at another input size learns from the teacher's soft targets."""
    from dicomnode.inference.manifest import IntendedPopulation

    out = tmp_path / "student"
    population = IntendedPopulation(description="children", min_age_years=1, max_age_years=5, view_positions=("AP",))
    result = train(
        tiny_config(
            synthetic_folder, out, teacher=str(trained / "manifest.json"), img_size=24, epochs=2, augment=True,
            population=population,
        )
    )  # fmt: skip
    assert result.manifest.preprocessing.input_size == 24
    assert read_manifest(out).manifest.intended_population == population
    config = json.loads((out / "train_config.json").read_text(encoding="utf-8"))
    assert config["teacher"].endswith("manifest.json") and config["distill_weight"] == 0.5


@pytest.mark.slow
def test_a_teacher_from_another_split_is_refused(trained: Path, synthetic_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="split"):
        train(tiny_config(synthetic_folder, tmp_path / "student", teacher=str(trained), seed=2, epochs=1))
