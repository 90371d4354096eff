"""Grad-CAM wrapper: target layers, exact heatmaps on a handcrafted CNN, hooks and flags released."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
from torch import nn

from dicomnode.errors import InferenceError, ModelError
from dicomnode.explain.gradcam import (
    CamTarget,
    VitTokenReshape,
    explain_batch,
    find_cam_target,
    get_submodule,
)


class TwoFindingNet(nn.Module):
    """Logit 0 = mean(x) ("bright finding"), logit 1 = mean(1 - x) ("dark finding").

    Grad-CAM at ``act`` is then known in closed form: channel weights are (1/HW, 0)
    for label 0 and (0, 1/HW) for label 1, so the heatmap of label 0 is min-max(x)
    and the one of label 1 is min-max(1 - x).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x))).flatten(1)


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def _cam(
    model: nn.Module, inputs: torch.Tensor, indices: list[int], target: CamTarget | None = None
) -> np.ndarray:
    """(N, H, W) heatmaps of label ``indices[i]`` for image ``i``, the way the runner asks."""
    return explain_batch(model, inputs, lambda _logits: indices, target or find_cam_target(model)).heatmaps


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_heatmap_is_exact_on_handcrafted_cnn() -> None:
    model = TwoFindingNet().eval()
    rng = np.random.default_rng(1)
    images = rng.uniform(0.0, 1.0, size=(3, 1, 16, 16)).astype(np.float32)
    target = find_cam_target(model, "act")
    heat = _cam(model, torch.from_numpy(images), [0, 1, 0], target)
    assert heat.shape == (3, 16, 16) and heat.dtype == np.float32
    np.testing.assert_allclose(heat[0], _minmax(images[0, 0]), atol=1e-5)
    np.testing.assert_allclose(heat[1], _minmax(1.0 - images[1, 0]), atol=1e-5)
    np.testing.assert_allclose(heat[2], _minmax(images[2, 0]), atol=1e-5)


def test_heatmap_follows_the_bright_region() -> None:
    model = TwoFindingNet().eval()
    images = np.zeros((2, 1, 32, 32), dtype=np.float32)
    images[0, 0, 2:8, 3:9] = 1.0  # top left
    images[1, 0, 20:30, 22:30] = 1.0  # bottom right
    heat = _cam(model, torch.from_numpy(images), [0, 0], find_cam_target(model, "act"))
    for i, (rows, cols) in enumerate([(slice(2, 8), slice(3, 9)), (slice(20, 30), slice(22, 30))]):
        inside = heat[i, rows, cols].mean()
        outside = (heat[i].sum() - heat[i, rows, cols].sum()) / (
            heat[i].size - heat[i, rows, cols].size
        )
        assert inside > 0.9 and outside < 0.1


def test_backward_only_through_the_chosen_rows() -> None:
    model = TwoFindingNet().eval()
    images = torch.rand(4, 1, 8, 8)
    result = explain_batch(
        model, images, lambda logits: [None, 1, None, 0], find_cam_target(model, "act")
    )
    assert result.explained.tolist() == [False, True, False, True]
    assert result.labels.tolist() == [-1, 1, -1, 0]
    assert not result.heatmaps[0].any() and not result.heatmaps[2].any()
    np.testing.assert_allclose(result.heatmaps[3], _minmax(images[3, 0].numpy()), atol=1e-5)
    expected_logits = model(images).detach()
    torch.testing.assert_close(result.logits, expected_logits)
    assert not result.logits.requires_grad


@pytest.mark.parametrize(
    ("arch", "kwargs", "path"),
    [
        ("test_resnet", {}, "layer4[-1]"),
        ("test_efficientnet", {}, "bn2"),
        ("test_convnext", {}, "stages[-1]"),
        ("test_vit", {"img_size": 64}, "blocks[-1].norm1"),
    ],
)
def test_timm_defaults(arch: str, kwargs: dict[str, object], path: str) -> None:
    model = timm.create_model(arch, pretrained=False, num_classes=2, **kwargs).eval()
    target = find_cam_target(model)
    assert target.path == path
    assert target.layer is get_submodule(model, path)
    assert (target.reshape_transform is not None) == ("vit" in arch)
    before = [p.requires_grad for p in model.parameters()]
    heat = _cam(model, torch.randn(2, 3, 64, 64), [0, 1], target)
    assert heat.shape == (2, 64, 64)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert _hook_count(model) == 0
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "kwargs", "layer"),
    [
        ("test_resnet", {}, lambda m: m.layer4[-1]),
        ("test_efficientnet", {}, lambda m: m.bn2),
        ("test_vit", {"img_size": 64}, lambda m: m.blocks[-1].norm1),
    ],
)
def test_same_heatmaps_as_plain_pytorch_grad_cam(
    arch: str, kwargs: dict[str, object], layer: Callable[[nn.Module], nn.Module]
) -> None:
    """The graph cut (backward through the head only) changes nothing in the result."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=2, **kwargs).eval()
    # positive classifier weights: non-blank maps for post-activation CNN features
    with torch.no_grad():
        model.get_classifier().weight.uniform_(0.5, 1.0)
    images = torch.randn(3, 3, 64, 64)
    ours = _cam(model, images, [1, 0, 1])
    reshape = (lambda t: vit_reshape_transform(t, 4, 4)) if "vit" in arch else None
    with GradCAM(model, [layer(model)], reshape_transform=reshape) as cam:
        reference = cam(images, [ClassifierOutputTarget(k) for k in (1, 0, 1)])
    assert ours.max() > 0.5  # something to compare
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_vit_reshape_drops_prefix_tokens() -> None:
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 prefix + 2x3 grid
    grid = VitTokenReshape(1, (2, 3))(tokens)
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[0, :, 0, 0], tokens[0, 1])
    assert torch.equal(grid[1, :, 1, 2], tokens[1, 6])
    square = VitTokenReshape(1, (9, 9))(tokens[:, :5])  # 4 tokens: square grid inferred
    assert square.shape == (2, 3, 2, 2)
    with pytest.raises(InferenceError):
        VitTokenReshape(1, (2, 2))(tokens[:, :6])  # 5 patch tokens: no grid


def test_paths_and_fallback() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1)
    assert get_submodule(model, "layer4.0") is model.layer4[0]
    assert get_submodule(model, "layer4[-1].conv1") is model.layer4[-1].conv1
    for bad in ("layer9", "layer4[7]", "layer4..x", "fc[0]", ""):
        with pytest.raises(ModelError):
            get_submodule(model, bad)
    with pytest.raises(ModelError):
        find_cam_target(model, "nope")

    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.LazyLinear(1))
    assert find_cam_target(plain).layer is plain[1]
    with pytest.raises(ModelError, match="cam_target_layer"):
        find_cam_target(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)))


def test_errors_are_raised_not_swallowed() -> None:
    """An IndexError inside the CAM block (which BaseCAM.__exit__ suppresses) still surfaces."""
    model = TwoFindingNet().eval()
    target = find_cam_target(model, "act")

    def broken(_logits: torch.Tensor) -> list[int | None]:
        raise IndexError("boom")

    with pytest.raises(InferenceError, match="boom"):
        explain_batch(model, torch.rand(2, 1, 8, 8), broken, target)
    with pytest.raises(InferenceError, match="out of range"):
        _cam(model, torch.rand(2, 1, 8, 8), [0, 5], target)
    assert _hook_count(model) == 0
    assert all(p.requires_grad for p in model.parameters())


def test_one_by_one_feature_map_is_refused() -> None:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1).eval()
    with pytest.raises(InferenceError, match="1x1"):
        _cam(model, torch.randn(1, 3, 32, 32), [0])


def test_works_from_inference_mode_and_no_grad() -> None:
    model = TwoFindingNet().eval()
    target = find_cam_target(model, "act")
    with torch.inference_mode():
        images = torch.rand(2, 1, 8, 8)
        heat = _cam(model, images, [0, 0], target)
    np.testing.assert_allclose(heat[1], _minmax(images[1, 0].clone().numpy()), atol=1e-5)
    with torch.no_grad():
        assert _cam(model, torch.rand(1, 1, 8, 8), [1], target).shape == (1, 8, 8)
