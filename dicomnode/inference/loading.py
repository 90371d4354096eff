"""From settings to a loaded model: the torch device it runs on and the runner that serves it.

Every command that runs a model (``serve``, ``predict``, the web demo, ``evaluate``,
``calibrate``, ``train``, ``gate fit``) turns its device setting into a torch device with
:func:`select_device`, so ``"auto"``, ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` mean the
same everywhere and a bad value fails with the same message.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dicomnode.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from dicomnode.config import ModelSettings
    from dicomnode.inference.runner import ModelRunner

_CUDA_SPEC = re.compile(r"cuda(:(\d+))?")


def select_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device setting into a torch device.

    Args:
        spec: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"`` (case and surrounding blanks ignored); a ``torch.device`` is
            returned as is.

    Raises:
        ConfigError: unknown value, or CUDA asked for but not available / no such GPU.
    """
    import torch

    if isinstance(spec, torch.device):
        return spec
    value = spec.strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.fullmatch(value)
    if match is None:
        raise ConfigError(f'invalid device {spec!r}: use "auto", "cpu", "cuda" or "cuda:N"')
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available")
    if match.group(2) is not None:
        index = int(match.group(2))
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device {spec!r} requested but only {count} CUDA device(s) exist")
        return torch.device("cuda", index)
    return torch.device("cuda")


def load_runner(settings: ModelSettings) -> ModelRunner:
    """Resolve and load the configured model (weights and input gate verified against the manifest).

    Args:
        settings: the ``model`` settings: ``name`` (registry name or manifest path),
            ``device`` (see :func:`select_device`) and per-label ``thresholds``.

    Raises:
        ConfigError: bad device or thresholds.
        ModelError: the model cannot be found, loaded or verified.
    """
    from dicomnode.inference.registry import resolve_manifest
    from dicomnode.inference.runner import ModelRunner

    loaded = resolve_manifest(settings.name)
    return ModelRunner.from_loaded(loaded, device=settings.device, thresholds=settings.thresholds or None)
