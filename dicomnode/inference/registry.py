"""The model registry: shipped models are folders ``models/<name>/`` with a manifest.

A model is named by its folder (``default``, ``vit-tiny``) or given as the path of its
manifest (file or folder). :func:`load_model` rebuilds the timm architecture, checks
the weights' sha256 against the manifest and loads them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import (
    MANIFEST_FILENAME,
    LoadedManifest,
    ModelManifest,
    read_manifest,
    sha256_file,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "DICOMNODE_MODELS_DIR"
DEFAULT_MODEL = "default"


def models_dir() -> Path:
    """Folder of the shipped models: ``$DICOMNODE_MODELS_DIR`` or ``<repo>/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def list_manifests(directory: Path | None = None) -> list[LoadedManifest]:
    """Every valid manifest directly under ``directory`` (default :func:`models_dir`), by name.

    Invalid manifests are skipped with a warning.
    """
    root = directory or models_dir()
    if not root.is_dir():
        return []
    found: list[LoadedManifest] = []
    for file in sorted(root.glob(f"*/{MANIFEST_FILENAME}")):
        try:
            found.append(read_manifest(file))
        except ModelError as exc:
            logger.warning("skipping %s: %s", file, exc)
    return found


def resolve_manifest(name_or_path: str, directory: Path | None = None) -> LoadedManifest:
    """Find a model by folder name (``default``) or by the path of its manifest file/folder.

    Args:
        name_or_path: a model name under ``directory``, or a path.
        directory: the models folder (default :func:`models_dir`).

    Raises:
        ModelError: nothing matches (the message lists the available models) or the
            manifest is invalid.
    """
    root = directory or models_dir()
    path = Path(name_or_path).expanduser()
    looks_like_path = (
        os.sep in name_or_path or name_or_path.endswith(".json") or name_or_path.startswith(".")
    )
    if looks_like_path or (path.exists() and not (root / name_or_path).is_dir()):
        if not path.exists():
            raise ModelError(f"no model manifest at {path}")
        return read_manifest(path)
    candidate = root / name_or_path
    if (candidate / MANIFEST_FILENAME).is_file():
        return read_manifest(candidate)
    names = [m.folder.name for m in list_manifests(root)]
    available = ", ".join(names) if names else "none"
    raise ModelError(f"unknown model {name_or_path!r} in {root} (available: {available})")


def is_cnn(architecture: str) -> bool:
    """True for convolutional families (channels_last helps them on CPU and GPU).

    The package's one answer to "is this a CNN": it reads the manifest's architecture
    name, so it is known before a model is built (``create_model`` needs it for the
    ViT ``img_size``) and training, evaluation and serving agree on it.
    """
    arch = architecture.lower()
    return not any(k in arch for k in ("vit", "deit", "swin", "beit", "eva", "mixer", "xcit"))


def create_model(manifest: ModelManifest) -> torch.nn.Module:
    """Build the manifest's architecture with random weights.

    One output logit per label; ``in_chans`` and, for ViTs, ``img_size`` follow the
    manifest's preprocessing.

    Raises:
        ModelError: timm does not know the architecture or cannot build it.
    """
    import timm

    kwargs: dict[str, Any] = {
        "pretrained": False,
        "num_classes": len(manifest.labels),
        "in_chans": manifest.preprocessing.in_chans,
    }
    if not is_cnn(manifest.architecture):
        kwargs["img_size"] = manifest.preprocessing.input_size
    try:
        return timm.create_model(manifest.architecture, **kwargs)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot build architecture {manifest.architecture!r}: {exc}") from exc


def load_model(
    loaded: LoadedManifest,
    device: torch.device | str = "cpu",
    *,
    verify_sha256: bool = True,
) -> torch.nn.Module:
    """Build and load a model in eval mode on ``device``.

    Args:
        loaded: a manifest with its folder (:func:`resolve_manifest`).
        device: a torch device or a device setting (see
            :func:`~dicomnode.inference.loading.select_device`).
        verify_sha256: check the weights file against ``manifest.weights_sha256``.

    Returns:
        The model, ``eval()``, on ``device`` (channels_last for CNNs).

    Raises:
        ConfigError: a device setting that is invalid or not available.
        ModelError: missing weights, sha256 mismatch, or weights that do not fit.
    """
    import torch
    from safetensors.torch import load_file

    from dicomnode.inference.loading import select_device

    torch_device = select_device(device)
    manifest = loaded.manifest
    weights = loaded.weights_path
    if not weights.is_file():
        raise ModelError(f"weights file of model {manifest.name!r} not found: {weights}")
    if verify_sha256:
        actual = sha256_file(weights)
        if actual != manifest.weights_sha256:
            raise ModelError(
                f"weights of model {manifest.name!r} do not match the manifest "
                f"(sha256 {actual[:12]}..., manifest says {manifest.weights_sha256[:12]}...)"
            )
    model = create_model(manifest)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors and torch raise several types
        raise ModelError(f"cannot load weights {weights} into {manifest.architecture}: {exc}") from exc
    model.eval()
    model.to(torch_device)
    if is_cnn(manifest.architecture):
        model.to(memory_format=torch.channels_last)
    logger.info("loaded model %s (%s) on %s", manifest.name, manifest.architecture, torch_device)
    return model
