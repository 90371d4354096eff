"""Shared pieces of the benchmarks: synthetic data, processes, timing. Run from the repo root."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def dcmtk(tool: str) -> str:
    """Full path of a DCMTK tool (pynetdicom's venv scripts shadow the bare names)."""
    path = f"/usr/bin/{tool}"
    if not os.path.exists(path):
        sys.exit(f"{path} not found: apt-get install dcmtk")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def chest_pixels(rows: int, cols: int, count: int = 16) -> list[np.ndarray]:
    """Up to ``count`` real chest radiographs as (rows, cols) 12-bit uint16 arrays.

    Taken from the Kermany training images in ``../shared/data`` (or
    ``$DICOMNODE_SHARED_DATA``), half normal, half pneumonia, upsampled to the asked size,
    so that the model's input gate accepts them and the pipeline does its full work
    (findings, heatmaps). Without the shared data: smooth synthetic images, which the
    shipped models' input gate refuses (the benchmark then says so).
    """
    import cv2

    root = Path(os.environ.get("DICOMNODE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "kermany_224" / "train"
    files = sorted((root / "NORMAL").glob("*.jpeg"))[: count // 2] + sorted((root / "PNEUMONIA").glob("*.jpeg"))[: count - count // 2]
    images = []
    for file in files:
        gray = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if gray is not None:
            big = cv2.resize(gray.astype(np.float32), (cols, rows), interpolation=cv2.INTER_CUBIC)
            images.append(np.clip(big * (4095.0 / 255.0), 0, 4095).astype(np.uint16))
    if images:
        return images
    print("# no shared data: synthetic pixels, which the shipped models' input gate refuses", file=sys.stderr)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    lungs = np.exp(-(((xx - cols * 0.3) / (cols * 0.12)) ** 2 + ((yy - rows * 0.5) / (rows * 0.3)) ** 2))
    lungs += np.exp(-(((xx - cols * 0.7) / (cols * 0.12)) ** 2 + ((yy - rows * 0.5) / (rows * 0.3)) ** 2))
    return [np.clip((0.7 - 0.4 * lungs) * 4095, 0, 4095).astype(np.uint16)]


def write_dx_files(folder: Path, count: int, rows: int, cols: int, *, study_per_file: bool = True, seed: int = 0) -> list[Path]:
    """``count`` 16-bit DX chest images (rows x cols) as Part-10 files (see :func:`chest_pixels`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = chest_pixels(rows, cols)
    study = generate_uid()
    paths = []
    for n in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = DX_STORAGE
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = generate_uid() if study_per_file else study
        ds.SeriesInstanceUID = generate_uid()
        ds.PatientName = "Bench^Patient"
        ds.PatientID = "BENCH"
        ds.Modality = "DX"
        ds.BodyPartExamined = "CHEST"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        noise = rng.integers(0, 8, size=(rows, cols), dtype=np.uint16)  # every file's pixels differ
        ds.PixelData = np.minimum(bases[n % len(bases)] + noise, 4095).astype(np.uint16).tobytes()
        path = folder / f"img{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class Measurement:
    """One timed run."""

    label: str
    images: int
    seconds: float
    megabytes: float
    cpu_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_s / (self.megabytes / 1024)

    def line(self) -> str:
        return (f"{self.label:34s} {self.images_per_s:8.1f} img/s {self.mb_per_s:8.1f} MB/s "
                f"{self.cpu_s_per_gb:6.2f} CPU-s/GB  ({self.images} images, {self.seconds:.2f} s)")


def stop_and_cpu(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM a server, reap it (and so its reaped children) and return its CPU seconds."""
    process.terminate()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, _status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = 0
            return float(usage.ru_utime + usage.ru_stime)
        time.sleep(0.05)
    process.kill()
    _pid, _status, usage = os.wait4(process.pid, 0)
    return float(usage.ru_utime + usage.ru_stime)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its live children (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def fields(p: int) -> list[str]:
        text = Path(f"/proc/{p}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()

    total = 0.0
    try:
        own = fields(pid)
        total += sum(int(v) for v in own[11:15]) / ticks  # utime stime cutime cstime
    except OSError:
        return 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = fields(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(child[1]) == pid:
            total += sum(int(v) for v in child[11:13]) / ticks
    return total


def clean(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class GpuUtilisation:
    """Samples the GPU's utilisation with ``nvidia-smi`` while the ``with`` block runs.

    ``summary()`` says "GPU utilisation mean N % (max M %, K samples)", or why there is no
    figure (no CUDA device, no nvidia-smi). Device-wide: on a shared GPU it counts others too.
    """

    def __init__(self, device: str, interval_s: float = 0.1) -> None:
        self.enabled = device.startswith("cuda") and shutil.which("nvidia-smi") is not None
        self.device = device
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuUtilisation:
        if self.enabled:
            index = self.device.split(":", 1)[1] if ":" in self.device else "0"
            self._process = subprocess.Popen(
                ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", str(max(1, round(self.interval_s * 1000)))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        out, _ = self._process.communicate(timeout=10)
        self.samples = [float(v) for v in out.split() if v.strip().replace(".", "", 1).isdigit()]

    def summary(self) -> str:
        if not self.device.startswith("cuda"):
            return "GPU utilisation: n/a (CPU run)"
        if not self.enabled:
            return "GPU utilisation: n/a (nvidia-smi not found)"
        if not self.samples:
            return "GPU utilisation: no samples"
        return (f"GPU utilisation mean {sum(self.samples) / len(self.samples):.0f} % "
                f"(max {max(self.samples):.0f} %, {len(self.samples)} samples)")
