"""ModelRunner: GPU vs CPU, predictions vs a manual sigmoid, thresholds, Grad-CAM, leaks."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from dicomnode.domain import ModelIdentity
from dicomnode.errors import ConfigError, InferenceError
from dicomnode.inference.loading import select_device
from dicomnode.inference.manifest import ModelManifest, Preprocessing
from dicomnode.inference.runner import ModelRunner

SIZE = 64


def make_manifest(**overrides: object) -> ModelManifest:
    values: dict[str, object] = {
        "name": "unit",
        "version": "0.0.1",
        "architecture": "test_resnet",
        "task": "multilabel",
        "labels": ("pneumonia", "effusion"),
        "thresholds": (0.5, 0.4),
        "preprocessing": Preprocessing(
            input_size=SIZE, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3
        ),
        "weights": "model.safetensors",
        "weights_sha256": "ab" * 32,
    }
    values.update(overrides)
    return ModelManifest.model_validate(values)


def make_runner(arch: str = "test_resnet", **overrides: object) -> ModelRunner:
    torch.manual_seed(0)
    manifest = make_manifest(architecture=arch, **overrides)
    kwargs = {"img_size": SIZE} if "vit" in arch else {}
    model = timm.create_model(arch, pretrained=False, num_classes=len(manifest.labels), **kwargs)
    return ModelRunner(model, manifest, torch.device("cpu"))


def make_batch(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


# -- devices ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu() -> None:
    assert select_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError):
        select_device(f"cuda:{torch.cuda.device_count()}")
    cpu = make_runner()
    with torch.no_grad():
        cpu.model.get_classifier().weight.uniform_(0.5, 1.0)
    gpu_model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    gpu_model.load_state_dict(cpu.model.state_dict())
    gpu = ModelRunner(gpu_model, cpu.manifest, torch.device("cuda"))
    batch = make_batch(4)
    cpu_result = cpu.predict_and_explain(batch)
    cpu_predictions, cpu_maps = cpu_result.predictions, cpu_result.heatmaps
    gpu_result = gpu.predict_and_explain(batch)
    gpu_predictions, gpu_maps = gpu_result.predictions, gpu_result.heatmaps
    for p, q in zip(cpu_predictions, gpu_predictions):
        np.testing.assert_allclose(p.probabilities, q.probabilities, atol=1e-3)
    for h, g in zip(cpu_maps, gpu_maps):
        assert h is not None and g is not None and g.shape == (SIZE, SIZE)
        np.testing.assert_allclose(h, g, atol=2e-2)
    assert _hook_count(gpu.model) == 0


# -- predictions --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_vit"])
def test_predictions_are_the_sigmoid_of_the_logits(arch: str) -> None:
    runner = make_runner(arch)
    batch = make_batch(3)
    with torch.no_grad():
        logits = runner.model(torch.from_numpy(batch)).numpy()
    expected = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    predictions = runner.predict(batch)
    assert len(predictions) == 3
    for prediction, row in zip(predictions, expected):
        assert prediction.labels == ("pneumonia", "effusion")
        assert prediction.thresholds == (0.5, 0.4)
        np.testing.assert_allclose(prediction.probabilities, row, rtol=1e-5, atol=1e-6)


def test_binary_model_and_identity() -> None:
    runner = make_runner(task="binary", labels=("pneumonia",), thresholds=(0.3,))
    (prediction,) = runner.predict(make_batch(1))
    assert prediction.labels == ("pneumonia",) and len(prediction.probabilities) == 1
    assert 0.0 <= prediction.probabilities[0] <= 1.0
    assert runner.identity == ModelIdentity("unit", "0.0.1", "test_resnet", "ab" * 32)


def test_threshold_overrides() -> None:
    manifest = make_manifest()
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    runner = ModelRunner(model, manifest, torch.device("cpu"), thresholds={"effusion": 0.9})
    assert runner.thresholds == (0.5, 0.9)
    assert runner.predict(make_batch(1))[0].thresholds == (0.5, 0.9)
    with pytest.raises(ConfigError, match="unknown label"):
        ModelRunner(model, manifest, torch.device("cpu"), thresholds={"nodule": 0.5})
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            ModelRunner(model, manifest, torch.device("cpu"), thresholds={"pneumonia": bad})


def test_bad_batches_raise_inference_error() -> None:
    runner = make_runner()
    for bad in (
        make_batch(2)[:, :1],  # wrong channel count
        np.zeros((2, 3, SIZE + 1, SIZE), np.float32),
        np.zeros((0, 3, SIZE, SIZE), np.float32),
        np.zeros((3, SIZE, SIZE), np.float32),
        np.zeros((1, 3, SIZE, SIZE), np.uint8),
    ):
        with pytest.raises(InferenceError):
            runner.predict(bad)
    with pytest.raises(InferenceError):
        runner.explain(make_batch(2), [0])
    with pytest.raises(InferenceError):
        runner.explain(make_batch(2), [0, 2])
    with pytest.raises(InferenceError):
        runner.predict_and_explain(make_batch(2), [True])


def test_non_finite_output_is_an_inference_error() -> None:
    runner = make_runner()
    batch = make_batch(2)
    batch[1, 0, 3, 3] = np.nan
    with pytest.raises(InferenceError, match="non-finite"):
        runner.predict(batch)


def test_input_is_not_modified_and_float64_is_accepted() -> None:
    runner = make_runner()
    batch = make_batch(2)
    copy = batch.copy()
    first = runner.predict(batch)
    runner.explain(batch, [0, 1])
    np.testing.assert_array_equal(batch, copy)
    again = runner.predict(batch.astype(np.float64))
    np.testing.assert_allclose(first[0].probabilities, again[0].probabilities, rtol=1e-6)


# -- explanations -------------------------------------------------------------


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_vit"])
def test_explain_shapes_and_range(arch: str) -> None:
    runner = make_runner(arch)
    heat = runner.explain(make_batch(3), [0, 1, 0])
    assert heat.shape == (3, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert _hook_count(runner.model) == 0
    assert not any(p.requires_grad for p in runner.model.parameters())
    assert all(p.grad is None for p in runner.model.parameters())


def test_explain_depends_on_the_image() -> None:
    runner = make_runner()
    with torch.no_grad():  # positive head weights: non-blank post-ReLU maps
        runner.model.get_classifier().weight.uniform_(0.5, 1.0)
    batch = make_batch(2, seed=3)
    heat = runner.explain(batch, [0, 0])
    assert heat.max() > 0.5
    assert np.abs(heat[0] - heat[1]).max() > 0.05
    again = runner.explain(batch[::-1].copy(), [0, 0])
    np.testing.assert_allclose(again[::-1], heat, atol=1e-5)


def test_predict_and_explain_matches_separate_calls() -> None:
    runner = make_runner()
    with torch.no_grad():
        runner.model.get_classifier().weight.uniform_(-1.0, 1.0)
    batch = make_batch(4, seed=5)
    result = runner.predict_and_explain(batch, [True, False, True, True])
    predictions, heatmaps = result.predictions, result.heatmaps
    alone = runner.predict(batch)
    for p, q in zip(predictions, alone):
        np.testing.assert_allclose(p.probabilities, q.probabilities, rtol=1e-5, atol=1e-6)
    assert heatmaps[1] is None
    wanted = [0, 2, 3]
    reference = runner.explain(batch[wanted], [alone[i].top_index for i in wanted])
    for position, i in enumerate(wanted):
        heatmap = heatmaps[i]
        assert heatmap is not None
        np.testing.assert_allclose(heatmap, reference[position], atol=1e-4)


def test_positive_only() -> None:
    manifest = make_manifest()
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    batch = make_batch(3)
    everyone = ModelRunner(
        model, manifest, torch.device("cpu"), {"pneumonia": 0.0, "effusion": 0.0}
    )
    result = everyone.predict_and_explain(batch, positive_only=True)
    heatmaps = result.heatmaps
    assert all(h is not None for h in heatmaps)
    nobody = ModelRunner(model, manifest, torch.device("cpu"), {"pneumonia": 1.0, "effusion": 1.0})
    result = nobody.predict_and_explain(batch, positive_only=True)
    predictions, heatmaps = result.predictions, result.heatmaps
    assert heatmaps == [None, None, None] and len(predictions) == 3
    result = nobody.predict_and_explain(batch, [False, False, False])
    predictions, heatmaps = result.predictions, result.heatmaps
    assert heatmaps == [None, None, None] and len(predictions) == 3


def test_manifest_cam_layer_is_used() -> None:
    runner = make_runner(cam_target_layer="layer3")
    assert runner.cam_target.path == "layer3"
    assert runner.cam_target.layer is runner.model.layer3
    assert runner.explain(make_batch(1), [1]).shape == (1, SIZE, SIZE)


def test_from_loaded_builds_and_verifies(tmp_path: Path) -> None:
    pytest.importorskip("dicomnode.inference.registry")
    from safetensors.torch import save_file

    from dicomnode.errors import ModelError
    from dicomnode.inference.manifest import read_manifest, sha256_file, write_manifest

    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    write_manifest(make_manifest(weights_sha256=sha256_file(weights)), tmp_path)
    runner = ModelRunner.from_loaded(
        read_manifest(tmp_path), device="cpu", thresholds={"pneumonia": 0.7}
    )
    batch = make_batch(2)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(batch))).numpy()
    predictions = runner.predict(batch)
    np.testing.assert_allclose(
        [p.probabilities for p in predictions], expected, rtol=1e-5, atol=1e-6
    )
    assert predictions[0].thresholds == (0.7, 0.4)

    write_manifest(make_manifest(weights_sha256="cd" * 32), tmp_path)
    with pytest.raises(ModelError):
        ModelRunner.from_loaded(read_manifest(tmp_path), device="cpu")


# -- leaks --------------------------------------------------------------------


@pytest.mark.slow
def test_no_hook_or_memory_leak_over_many_batches() -> None:
    """30 CAM batches: hooks released, RSS and Python heap flat (pytorch-grad-cam's context-release test)."""
    runner = make_runner()
    batch = make_batch(2)
    for _ in range(5):  # warm up allocator caches and lazy imports
        runner.predict_and_explain(batch)
    gc.collect()
    rss_before = _rss_bytes()
    for _ in range(30):
        runner.predict_and_explain(batch)
        assert _hook_count(runner.model) == 0
    gc.collect()
    rss_growth = _rss_bytes() - rss_before
    assert rss_growth < 25_000_000, f"RSS grew by {rss_growth} B over 30 batches"

    tracemalloc.start()  # slows torch's Python side down: fewer rounds
    try:
        runner.predict_and_explain(batch)
        gc.collect()
        heap_before, _ = tracemalloc.get_traced_memory()
        for _ in range(5):
            runner.predict_and_explain(batch)
        gc.collect()
        heap_growth = tracemalloc.get_traced_memory()[0] - heap_before
    finally:
        tracemalloc.stop()
    assert heap_growth < 200_000, f"Python heap grew by {heap_growth} B over 5 batches"
    assert all(p.grad is None for p in runner.model.parameters())


def test_warm_up_runs_every_batch_size_down_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node sees batches of any size up to model.batch_size: each is warmed once."""
    runner = make_runner()
    sizes: list[int] = []
    original = runner.predict_and_explain

    def recording(batch: np.ndarray, *args: object, **kwargs: object) -> object:
        sizes.append(int(batch.shape[0]))
        return original(batch, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "predict_and_explain", recording)
    runner.warm_up(4)
    assert sizes == [4, 3, 2, 1]
