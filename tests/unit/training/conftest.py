"""Fixtures for training tests: small synthetic labelled image sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_synthetic_folder(root: Path, n_per_class: int = 24, size: int = 48, seed: int = 0) -> Path:
    """NORMAL/ (smooth noise) and PNEUMONIA/ (the same plus a bright blob) PNG images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for cls in ("NORMAL", "PNEUMONIA"):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = 0.35 + rng.normal(0, 0.08, (size, size))
            if cls == "PNEUMONIA":
                cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
                img += 0.45 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size * 0.12) ** 2)))
            u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(u8).save(folder / f"{cls.lower()}_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-class image folder (24 + 24 PNGs, 48x48)."""
    return write_synthetic_folder(tmp_path_factory.mktemp("synthetic"))
