"""Fixtures for the result-object tests: a model identity, settings, sources, overlays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.config import OutputSettings
from dicomnode.domain import ModelIdentity
from tests.helpers import make_cxr_dataset


@pytest.fixture
def identity() -> ModelIdentity:
    """A model identity with a realistic sha256."""
    return ModelIdentity(
        name="vit-tiny-pneumonia",
        version="1.2.3",
        architecture="vit_tiny_patch16_224",
        weights_sha256="0f" * 32,
    )


@pytest.fixture
def output_settings() -> OutputSettings:
    """Default labelling (RESEARCH, "not for diagnostic use")."""
    return OutputSettings()


@pytest.fixture
def study_uid() -> str:
    """A fresh Study Instance UID."""
    return str(generate_uid())


@pytest.fixture
def cxr_dataset(study_uid: str) -> Dataset:
    """A DX chest radiograph of ``study_uid``."""
    return make_cxr_dataset(study_uid=study_uid)


@pytest.fixture
def overlay() -> np.ndarray:
    """A rendered overlay, (96, 128, 3) uint8, with distinct values per pixel."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)


def write_and_read(ds: Dataset) -> Dataset:
    """Write ``ds`` as a Part-10 file to memory and read it back (highdicom's test pattern)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def header_only(ds: Dataset) -> Dataset:
    """``ds`` as a receiver reads it with ``stop_before_pixels=True``."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer, stop_before_pixels=True)
