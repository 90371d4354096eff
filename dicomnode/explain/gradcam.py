"""Grad-CAM heatmaps for timm classifiers, on top of pytorch-grad-cam.

:func:`find_cam_target` picks the layer Grad-CAM reads: the manifest's
``cam_target_layer`` when set, else an architecture default (ResNet ``layer4[-1]``,
EfficientNet ``bn2``, MobileNetV3 ``blocks[-1]``, DenseNet ``features.norm5``,
ConvNeXt ``stages[-1]``, ViT/DeiT ``blocks[-1].norm1`` with a token reshape),
else the last ``Conv2d``.

:func:`explain_batch` runs ONE forward pass for a whole batch with the CAM hooks
in place, lets the caller choose per image which label to explain from the logits
of that same pass, and back-propagates once for the chosen rows. Two things keep
it about as cheap as a plain forward pass:

* the model's parameters are frozen for the call, and the target layer's output is
  re-rooted as a new leaf tensor (a "graph cut"), so autograd records and
  back-propagates only the layers after the target layer (the head), never the
  backbone;
* the logits come from the same pass, so predictions need no second forward.

The gradient that reaches the target layer is identical to the one of a full
backward pass: a tensor's gradient only depends on the paths from it to the loss.

pytorch-grad-cam's ``BaseCAM.__exit__`` prints and suppresses ``IndexError``;
exceptions are therefore caught inside the ``with`` block and re-raised after it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dicomnode.errors import DicomNodeError, InferenceError, ModelError

logger = logging.getLogger(__name__)

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]
"""Maps a target layer's output to a ``(N, C, h, w)`` feature map."""

Chooser = Callable[[torch.Tensor], Sequence[int | None]]
"""Given the detached ``(N, K)`` logits, the label index to explain per image (None = skip)."""

_PATH_TOKEN = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*|\d+)?(?P<indices>(\[-?\d+\])*)$")


class VitTokenReshape:
    """Turn ViT tokens ``(N, T, D)`` into a CNN-like map ``(N, D, gh, gw)``.

    The first ``num_prefix_tokens`` tokens (class/distillation/register tokens) are
    dropped; the remaining patch tokens are laid out on the patch grid.

    Args:
        num_prefix_tokens: tokens before the patch tokens (1 for ViT, 2 for DeiT-distilled).
        grid_size: ``(rows, cols)`` of the patch grid, e.g. ``(14, 14)`` at 224 px / 16 px.
            When the token count does not match (dynamic image size) a square grid is
            inferred.
    """

    def __init__(self, num_prefix_tokens: int, grid_size: tuple[int, int]) -> None:
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3:
            raise InferenceError(
                f"ViT reshape expects (N, T, D) tokens, got shape {tuple(tokens.shape)}"
            )
        patches = tokens[:, self.num_prefix_tokens :, :]
        n, count, dim = patches.shape
        rows, cols = self.grid_size
        if rows * cols != count:
            side = math.isqrt(count)
            if side * side != count:
                raise InferenceError(
                    f"{count} patch tokens do not fit the {rows}x{cols} grid nor a square one"
                )
            rows = cols = side
        return patches.reshape(n, rows, cols, dim).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class CamTarget:
    """The layer Grad-CAM reads.

    Attributes:
        layer: the module whose output is the explained feature map.
        path: its dotted path in the model, e.g. ``"layer4[-1]"`` (for messages).
        reshape_transform: turns the layer's output into ``(N, C, h, w)``; None for CNNs.
    """

    layer: nn.Module
    path: str
    reshape_transform: ReshapeTransform | None = None


@dataclass(frozen=True)
class CamBatch:
    """Result of :func:`explain_batch`.

    Attributes:
        logits: ``(N, K)`` float tensor, detached, on the model's device.
        heatmaps: ``(N, H, W)`` float32 in [0, 1] at the input resolution; rows not
            explained are zeros.
        explained: ``(N,)`` bool, True where a heatmap was computed.
        labels: ``(N,)`` int64, the explained label index per image (-1 where not explained).
    """

    logits: torch.Tensor
    heatmaps: np.ndarray
    explained: np.ndarray
    labels: np.ndarray


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted module path with optional indices.

    Accepts ``"layer4[-1]"``, ``"layer4.1"``, ``"blocks[-1].norm1"``, ``"features.norm5"``.

    Raises:
        ModelError: the path is malformed or names no module.
    """
    if not path or not path.strip():
        raise ModelError("empty Grad-CAM target layer path")
    module: nn.Module = model
    for token in path.strip().split("."):
        match = _PATH_TOKEN.match(token)
        if match is None or (not match.group("name") and not match.group("indices")):
            raise ModelError(f"malformed Grad-CAM target layer path {path!r} (at {token!r})")
        name = match.group("name")
        try:
            if name is not None:
                if name.isdigit():
                    module = _index(module, int(name))
                else:
                    child = getattr(module, name)
                    if not isinstance(child, nn.Module):
                        raise ModelError(f"{name!r} in {path!r} is not a module")
                    module = child
            for index in re.findall(r"\[(-?\d+)\]", match.group("indices")):
                module = _index(module, int(index))
        except (AttributeError, IndexError, TypeError) as exc:
            raise ModelError(
                f"Grad-CAM target layer {path!r} not found in {type(model).__name__}: {exc}"
            ) from exc
    return module


def _index(module: nn.Module, index: int) -> nn.Module:
    if not isinstance(module, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"{type(module).__name__} cannot be indexed")
    child = module[index]
    if not isinstance(child, nn.Module):
        raise TypeError(f"item {index} is not a module")
    return child


def _is_vit_like(model: nn.Module) -> bool:
    if not all(hasattr(model, a) for a in ("patch_embed", "blocks", "num_prefix_tokens")):
        return False
    blocks = model.blocks
    return (
        isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) > 0
        and hasattr(blocks[-1], "norm1")
    )


def _vit_target(model: nn.Module) -> CamTarget:
    path = "blocks[-1].norm1"
    grid = getattr(model.patch_embed, "grid_size", None)
    if grid is None:
        raise ModelError(f"{type(model).__name__} has no patch_embed.grid_size for the ViT reshape")
    rows, cols = (int(grid[0]), int(grid[1]))
    prefix = cast(int, model.num_prefix_tokens)
    reshape = VitTokenReshape(int(prefix), (rows, cols))
    return CamTarget(get_submodule(model, path), path, reshape)


def default_target_path(model: nn.Module) -> str:
    """The default Grad-CAM layer path of a (non-ViT) timm model.

    Raises:
        ModelError: the architecture is unknown and the model has no ``Conv2d`` at all.
    """
    from timm.models.convnext import ConvNeXt
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    if isinstance(model, EfficientNet):
        return "bn2"  # conv_head + BN + activation: the final 7x7 feature map at 224 px
    if isinstance(model, MobileNetV3):
        return "blocks[-1]"  # its conv_head runs after global pooling (1x1)
    if isinstance(model, DenseNet):
        return "features.norm5" if hasattr(model.features, "norm5") else "features[-1]"
    if isinstance(model, ConvNeXt):
        return "stages[-1]"
    if isinstance(getattr(model, "layer4", None), nn.Sequential):
        return "layer4[-1]"  # timm and torchvision ResNet families
    last_conv: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            last_conv = name
    if last_conv is None:
        raise ModelError(
            f"no Grad-CAM target layer for {type(model).__name__}: unknown architecture "
            "without any Conv2d; set cam_target_layer in the model manifest"
        )
    return last_conv


def find_cam_target(model: nn.Module, layer_path: str | None = None) -> CamTarget:
    """Choose the layer Grad-CAM reads.

    Args:
        model: a timm (or torchvision ResNet) classifier.
        layer_path: dotted path from the manifest (``cam_target_layer``); None picks the
            architecture default. For ViT-like models the token reshape is added either way.

    Raises:
        ModelError: the path names no module, or no default exists for the model.
    """
    vit = _is_vit_like(model)
    if layer_path is None:
        target = _vit_target(model) if vit else None
        if target is None:
            path = default_target_path(model)
            target = CamTarget(get_submodule(model, path), path)
    else:
        layer = get_submodule(model, layer_path)
        tokens = vit and not layer_path.strip().startswith("patch_embed")
        reshape = _vit_target(model).reshape_transform if tokens else None
        target = CamTarget(layer, layer_path, reshape)
    logger.debug("Grad-CAM target layer of %s: %s", type(model).__name__, target.path)
    return target


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter, restore the previous flags after."""
    params = list(model.parameters())
    previous = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)


def _cut_graph(_module: nn.Module, _args: object, output: object) -> torch.Tensor:
    """Forward hook: re-root the target layer's output as a fresh autograd leaf.

    The clone (a non-leaf) lets later layers modify it in place.
    """
    if not isinstance(output, torch.Tensor):
        raise InferenceError(
            f"Grad-CAM target layer returned {type(output).__name__}, not a tensor"
        )
    return output.detach().requires_grad_(True).clone()


def explain_batch(
    model: nn.Module, inputs: torch.Tensor, choose: Chooser, target: CamTarget
) -> CamBatch:
    """One forward pass with Grad-CAM hooks, then one backward pass for the chosen rows.

    The model's parameters are frozen for the call and their ``requires_grad`` flags
    restored afterwards; all hooks are removed before returning, also on errors.
    Not thread-safe for one model (hooks and flags are per model).

    Args:
        model: classifier returning ``(N, K)`` logits (``(N,)`` accepted for K = 1).
        inputs: ``(N, C, H, W)`` float tensor on the model's device.
        choose: called once with the detached ``(N, K)`` logits; returns per image the
            label index to explain or None.
        target: from :func:`find_cam_target`.

    Returns:
        Logits of the pass and ``(N, H, W)`` float32 heatmaps in [0, 1], each
        min-max normalised on its own.

    Raises:
        InferenceError: the forward/backward pass failed, no gradient reached the
            target layer, or its feature map is 1x1 (nothing to localise).
    """
    from pytorch_grad_cam import GradCAM

    if inputs.ndim != 4:
        raise InferenceError(
            f"Grad-CAM expects (N, C, H, W) inputs, got shape {tuple(inputs.shape)}"
        )
    error: Exception | None = None
    result: CamBatch | None = None
    with _frozen_parameters(model), torch.inference_mode(False), torch.enable_grad():
        if inputs.is_inference():
            inputs = inputs.clone()  # inference tensors cannot enter autograd
        cut = target.layer.register_forward_hook(_cut_graph, prepend=True)
        try:
            with GradCAM(model, [target.layer], reshape_transform=target.reshape_transform) as cam:
                try:
                    result = _forward_backward(cam, inputs, choose, target)
                except Exception as exc:  # noqa: BLE001 - re-raised below, after __exit__
                    error = exc
        finally:
            cut.remove()
    if error is not None:
        if isinstance(error, DicomNodeError):
            raise error
        raise InferenceError(f"Grad-CAM failed at layer {target.path}: {error}") from error
    if result is None:  # only if __exit__ swallowed something raised outside our try
        raise InferenceError(f"Grad-CAM at layer {target.path} produced no result")
    return result


def _forward_backward(
    cam: Any, inputs: torch.Tensor, choose: Chooser, target: CamTarget
) -> CamBatch:
    """The body of :func:`explain_batch`, run inside ``with GradCAM(...) as cam``."""
    acts = cam.activations_and_grads
    n = inputs.shape[0]
    logits = acts(inputs)
    if not isinstance(logits, torch.Tensor):
        raise InferenceError(f"model returned {type(logits).__name__}, not a tensor")
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.ndim != 2 or logits.shape[0] != n:
        raise InferenceError(f"model output shape {tuple(logits.shape)} is not (N={n}, K)")
    chosen = list(choose(logits.detach()))
    if len(chosen) != n:
        raise InferenceError(f"{len(chosen)} Grad-CAM targets for {n} images")
    labels = np.full(n, -1, dtype=np.int64)
    for i, k in enumerate(chosen):
        if k is not None:
            if not 0 <= int(k) < logits.shape[1]:
                raise InferenceError(
                    f"Grad-CAM target label {k} out of range 0..{logits.shape[1] - 1}"
                )
            labels[i] = int(k)
    explained = labels >= 0
    height, width = int(inputs.shape[-2]), int(inputs.shape[-1])
    heatmaps = np.zeros((n, height, width), dtype=np.float32)
    if explained.any():
        rows = torch.as_tensor(np.flatnonzero(explained), device=logits.device)
        cols = torch.as_tensor(labels[explained], device=logits.device)
        loss = logits[rows, cols].sum()
        torch.autograd.backward(loss)
        if not acts.activations or not acts.gradients:
            raise InferenceError(
                f"no activation/gradient reached Grad-CAM layer {target.path}; "
                "is it part of the path to the logits?"
            )
        feature = acts.activations[0]
        if feature.ndim != 4:
            raise InferenceError(
                f"Grad-CAM layer {target.path} gives shape {tuple(feature.shape)}, not (N, C, h, w)"
            )
        if feature.shape[-1] * feature.shape[-2] <= 1:
            raise InferenceError(
                f"Grad-CAM layer {target.path} has a 1x1 feature map at this input size; "
                "set cam_target_layer to an earlier layer"
            )
        per_layer = cam.compute_cam_per_layer(inputs, None, False)
        maps = np.asarray(cam.aggregate_multi_layers(per_layer), dtype=np.float32)
        np.clip(maps, 0.0, 1.0, out=maps)
        heatmaps[explained] = maps[explained]
    acts.clear()
    return CamBatch(logits.detach(), heatmaps, explained, labels)
