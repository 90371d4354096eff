"""Masked-autoencoder pretraining: the reconstruction loss falls and the encoder initialises a classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dicomnode.errors import ModelError
from dicomnode.training.init import initialise
from dicomnode.training.pretrain import PretrainConfig, pretrain


@pytest.mark.slow
def test_mae_pretraining_lowers_the_loss_and_fits_the_classifier(synthetic_folder: Path, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    config = PretrainConfig(
        data=synthetic_folder, arch="test_vit", out=tmp_path / "mae", img_size=32, epochs=4,
        batch_size=16, lr=3e-3, decoder_dim=32, decoder_depth=1,
    )
    path = pretrain(config)
    history = json.loads((tmp_path / "mae" / "pretrain_history.json").read_text(encoding="utf-8"))
    assert len(history) == 4
    assert history[-1]["loss"] < history[0]["loss"]
    classifier = timm.create_model("test_vit", pretrained=False, num_classes=1, img_size=32)
    initialise(classifier, "test_vit", str(path))
    encoder = load_file(str(path))
    torch.testing.assert_close(classifier.state_dict()["pos_embed"], encoder["pos_embed"])


def test_mae_needs_a_vit(synthetic_folder: Path, tmp_path: Path) -> None:
    config = PretrainConfig(data=synthetic_folder, arch="test_resnet", out=tmp_path / "x", img_size=32, epochs=1)
    with pytest.raises(ModelError):
        pretrain(config)
