"""Model registry: resolve by name or path, list, build, load with sha256 verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import ModelManifest, Preprocessing, sha256_file, write_manifest
from dicomnode.inference.registry import (
    create_model,
    list_manifests,
    load_model,
    models_dir,
    resolve_manifest,
)


def make_model_folder(root: Path, name: str, arch: str = "test_resnet", in_chans: int = 1) -> Path:
    """A tiny trained-looking model folder (random weights) under ``root/name``."""
    folder = root / name
    folder.mkdir(parents=True)
    pre = Preprocessing(input_size=32, in_chans=in_chans, mean=(0.5,) * in_chans, std=(0.25,) * in_chans)  # type: ignore[arg-type]
    draft = ModelManifest(
        name=name,
        architecture=arch,
        labels=("pneumonia",),
        thresholds=(0.5,),
        preprocessing=pre,
        weights="model.safetensors",
        weights_sha256="",
    )
    torch.manual_seed(0)
    model = create_model(draft)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    manifest = draft.model_copy(update={"weights_sha256": sha256_file(folder / "model.safetensors")})
    write_manifest(manifest, folder)
    return folder


def test_models_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DICOMNODE_MODELS_DIR", raising=False)
    assert models_dir() == Path(__file__).resolve().parents[3] / "models"
    monkeypatch.setenv("DICOMNODE_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path


def test_resolve_by_name_and_by_path(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path, "default")
    by_name = resolve_manifest("default", tmp_path)
    assert by_name.manifest.name == "default" and by_name.folder == folder.resolve()
    assert resolve_manifest(str(folder / "manifest.json")).folder == folder.resolve()
    assert resolve_manifest(str(folder)).manifest.architecture == "test_resnet"


def test_unknown_model_names_the_available_ones(tmp_path: Path) -> None:
    make_model_folder(tmp_path, "default")
    make_model_folder(tmp_path, "vit-small-one", arch="test_vit", in_chans=3)
    with pytest.raises(ModelError, match="available: default, vit-small-one"):
        resolve_manifest("nope", tmp_path)
    with pytest.raises(ModelError, match="no model manifest"):
        resolve_manifest(str(tmp_path / "missing" / "manifest.json"))


def test_list_skips_invalid_manifests(tmp_path: Path) -> None:
    make_model_folder(tmp_path, "a")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json", encoding="utf-8")
    names = [m.folder.name for m in list_manifests(tmp_path)]
    assert names == ["a"]
    assert list_manifests(tmp_path / "absent") == []


def test_load_model_gives_the_saved_weights(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path, "m")
    loaded = resolve_manifest("m", tmp_path)
    model = load_model(loaded)
    assert not model.training
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32))
    with torch.inference_mode():
        assert model(x).shape == (2, 1)


def test_vit_is_built_for_the_manifest_input_size(tmp_path: Path) -> None:
    make_model_folder(tmp_path, "v", arch="test_vit", in_chans=3)
    model = load_model(resolve_manifest("v", tmp_path))
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1)


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path, "m")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    loaded = resolve_manifest("m", tmp_path)
    with pytest.raises(ModelError, match="do not match the manifest"):
        load_model(loaded)


def test_missing_weights_and_unknown_architecture(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path, "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="not found"):
        load_model(resolve_manifest("m", tmp_path))
    manifest = resolve_manifest("m", tmp_path).manifest.model_copy(update={"architecture": "no_such_net"})
    with pytest.raises(ModelError, match="cannot build"):
        create_model(manifest)
