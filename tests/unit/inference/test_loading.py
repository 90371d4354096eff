"""Device settings -> torch devices, and model settings -> a loaded runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dicomnode.config import ModelSettings
from dicomnode.errors import ConfigError, ModelError
from dicomnode.inference.loading import load_runner, select_device
from dicomnode.inference.registry import load_model, resolve_manifest
from tests.helpers import make_tiny_model


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device().type == expected
    for bad in ("gpu", "cuda:x", "cuda:-1", "cuda:0\n", "mps", ""):
        with pytest.raises(ConfigError):
            select_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_gpu_is_a_config_error() -> None:
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="not available"):
            select_device(spec)


def test_load_model_parses_a_device_setting(tmp_path: Path) -> None:
    """Registry, runner and training share the parser: a bad setting fails the same way."""
    loaded = resolve_manifest(str(make_tiny_model(tmp_path / "m")))
    assert next(load_model(loaded, "cpu").parameters()).device == torch.device("cpu")
    with pytest.raises(ConfigError, match="invalid device"):
        load_model(loaded, "gpu")


def test_load_runner_follows_the_model_settings(tmp_path: Path) -> None:
    manifest = make_tiny_model(tmp_path / "m", labels=("pneumonia", "effusion"), threshold=0.5)
    runner = load_runner(ModelSettings(name=str(manifest), device="cpu", thresholds={"effusion": 0.8}))
    assert runner.device == torch.device("cpu")
    assert runner.thresholds == (0.5, 0.8)
    size = runner.manifest.preprocessing.input_size
    (prediction,) = runner.predict(np.zeros((1, 3, size, size), np.float32))
    assert prediction.thresholds == (0.5, 0.8)
    with pytest.raises(ConfigError, match="unknown label"):
        load_runner(ModelSettings(name=str(manifest), device="cpu", thresholds={"nodule": 0.5}))
    with pytest.raises(ModelError, match="unknown model"):
        load_runner(ModelSettings(name="no-such-model", device="cpu"))
