"""Test helpers shared by unit and integration tests (factories, peers, ports)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (or ``$DICOMNODE_SHARED_DATA``)."""
    return Path(os.environ.get("DICOMNODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def require_shared_data(*parts: str) -> Path:
    """Path under the shared data folder; skips the test with a reason when absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (see ../shared/data/README.md)")
    return path


def require_tool(name: str, full_path: str | None = None) -> str:
    """Path of an external tool (DCMTK, dicom3tools, Orthanc).

    Skips the test when the tool is missing, except under CI (``CI=true``), where a
    missing real peer is a failure: CI installs them in ``.ci/run``.
    """
    path = full_path if full_path and os.path.exists(full_path) else shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install dcmtk dicom3tools orthanc)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def dcmtk(tool: str) -> str:
    """Full path of a DCMTK tool; pynetdicom's venv scripts shadow the bare names."""
    return require_tool(tool, f"/usr/bin/{tool}")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 20.0) -> None:
    """Block until something accepts on ``host:port``; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def make_cxr_dataset(
    *,
    photometric: str = "MONOCHROME2",
    rows: int = 64,
    cols: int = 64,
    bits_stored: int = 12,
    signed: bool = False,
    sop_class_uid: UID = DX_PRESENTATION_STORAGE,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    seed: int = 0,
    **overrides: Any,
) -> Dataset:
    """A valid single-frame chest radiograph dataset built in memory.

    Pixels: a smooth synthetic 'chest' (two dark lung fields on a brighter body) with
    noise, stored in ``bits_stored`` bits (8 -> 8-bit allocation, else 16).
    Keyword ``overrides`` set any further attribute by keyword.
    """
    rng = np.random.default_rng(seed)
    bits_allocated = 8 if bits_stored <= 8 else 16
    max_value = (1 << bits_stored) - 1
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    body = 0.7 - 0.4 * (
        np.exp(-(((xx - cols * 0.3) / (cols * 0.12)) ** 2 + ((yy - rows * 0.5) / (rows * 0.3)) ** 2))
        + np.exp(-(((xx - cols * 0.7) / (cols * 0.12)) ** 2 + ((yy - rows * 0.5) / (rows * 0.3)) ** 2))
    )
    image = np.clip(body + rng.normal(0, 0.02, size=body.shape), 0, 1)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    values = np.round(image * max_value)
    if signed:
        values = values - (1 << (bits_stored - 1))
        dtype = np.int8 if bits_allocated == 8 else np.int16
    else:
        dtype = np.uint8 if bits_allocated == 8 else np.uint16
    pixels = values.astype(dtype)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "test"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if sop_class_uid == CR_IMAGE_STORAGE:
        ds.Modality = "CR"
    elif sop_class_uid == SECONDARY_CAPTURE_STORAGE:
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
    else:
        ds.Modality = "DX"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (max_value + 1) // 2 - (1 << (bits_stored - 1) if signed else 0)
    ds.WindowWidth = max_value + 1
    ds.PixelData = pixels.tobytes()
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    if transfer_syntax == ImplicitVRLittleEndian:
        pass
    return ds


def make_tiny_model(
    folder: Path,
    *,
    architecture: str = "test_resnet",
    labels: tuple[str, ...] = ("pneumonia",),
    input_size: int = 64,
    threshold: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write a random-weight timm model as a shipped-model folder (manifest + safetensors).

    Returns:
        the manifest path, usable wherever a model name or manifest path is accepted.
    """
    import torch
    from safetensors.torch import save_file

    from dicomnode.inference.manifest import (
        ModelManifest,
        Preprocessing,
        sha256_file,
        write_manifest,
    )
    from dicomnode.inference.registry import create_model

    folder.mkdir(parents=True, exist_ok=True)
    draft = ModelManifest(
        name=f"tiny-{architecture}",
        version="0.0.1",
        architecture=architecture,
        task="binary" if len(labels) == 1 else "multilabel",
        labels=labels,
        thresholds=tuple(threshold for _ in labels),
        preprocessing=Preprocessing(input_size=input_size, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        weights="model.safetensors",
        weights_sha256="0" * 64,
        description="random weights, for tests only",
    )
    torch.manual_seed(seed)
    model = create_model(draft)
    weights = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    manifest = draft.model_copy(update={"weights_sha256": sha256_file(weights)})
    return write_manifest(manifest, folder)
