"""Images that are NOT frontal chest radiographs, built locally, for measuring the input gate.

Nothing is downloaded. Sources, one category each:

* ``tibia``: RG3_UNCR.dcm from the shared data folder (a CR of a tibia), when present;
* ``ct``, ``mr``, ``nm``, ``us``, ``other_dicom``: pixel data of the DICOM test files
  shipped with pydicom (``pydicom.data.get_testdata_files()``), one image per distinct
  picture (the same picture in several transfer syntaxes counts once);
* ``document``: rendered text pages and forms (lines, boxes, tick boxes) with PIL;
* ``chart``: matplotlib figures (line, bar, scatter, image plots);
* ``natural``: the raster sample data shipped with matplotlib (photo, logos, elevation maps);
* ``noise``, ``blank``, ``gradient``, ``pattern``: synthetic images (uniform/Gaussian
  noise, constant and nearly constant images, linear/radial gradients, checkerboards,
  stripes, random shapes).

Each image is a display-oriented gray ``(H, W)`` float32 array in [0, 1], the same
form :func:`dicomnode.inference.preprocess.dicom_to_gray` returns. Inverted chests are
made by the caller (``1 - gray`` of validation chests).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SYNTHETIC_CATEGORIES = ("noise", "blank", "gradient", "pattern")


@dataclass(frozen=True)
class NegativeImage:
    """One negative example.

    Attributes:
        category: e.g. ``"ct"``, ``"document"``, ``"noise"``.
        name: where it came from (file name or generator), no PHI.
        gray: ``(H, W)`` float32 in [0, 1].
    """

    category: str
    name: str
    gray: np.ndarray


def _to_unit(values: np.ndarray) -> np.ndarray:
    """Robust min-max (0.5 / 99.5 percentiles) to [0, 1] float32."""
    v = np.asarray(values, dtype=np.float32)
    low, high = np.percentile(v, (0.5, 99.5))
    if high <= low:
        low, high = float(v.min()), float(v.max())
    if high <= low:
        return np.zeros(v.shape, dtype=np.float32)
    out: np.ndarray = np.clip((v - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return out


def dicom_gray_any(path: Path) -> np.ndarray | None:
    """A gray image of any DICOM file with pixels (first frame, colour -> luminance), or None."""
    import pydicom

    from dicomnode.inference.preprocess import MIN_SIDE, dicom_to_gray

    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            return None
        try:
            return dicom_to_gray(ds)
        except Exception as exc:  # noqa: BLE001 - colour, multi-frame: fall back below
            logger.debug("%s: %s; decoding as colour/multi-frame", path.name, exc)
        arr = np.asarray(ds.pixel_array)
        photometric = str(ds.get("PhotometricInterpretation", "")).upper()
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if frames > 1:
            arr = arr[frames // 2]
        if samples > 1 or photometric == "PALETTE COLOR":
            if photometric == "PALETTE COLOR":
                from pydicom.pixels.processing import apply_color_lut

                arr = apply_color_lut(arr, ds)
            elif photometric.startswith("YBR"):
                from pydicom.pixels.processing import convert_color_space

                arr = convert_color_space(arr, photometric, "RGB")
            arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if arr.ndim != 2 or min(arr.shape) < MIN_SIDE:
            return None
        gray = _to_unit(arr)
        return 1.0 - gray if photometric == "MONOCHROME1" else gray
    except Exception as exc:  # noqa: BLE001 - test files include deliberately broken ones
        logger.debug("skipping %s: %s", path.name, exc)
        return None


def _fingerprint(gray: np.ndarray) -> str:
    import cv2

    small = cv2.resize(np.ascontiguousarray(gray, dtype=np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    return hashlib.sha1(np.round(small * 8).astype(np.uint8).tobytes()).hexdigest()


def pydicom_test_images() -> list[NegativeImage]:
    """One image per distinct picture among pydicom's DICOM test files (CT, MR, NM, US, other)."""
    import pydicom
    import pydicom.data

    categories = {"CT": "ct", "MR": "mr", "NM": "nm", "US": "us"}
    seen: set[str] = set()
    out: list[NegativeImage] = []
    for name in sorted(pydicom.data.get_testdata_files()):
        path = Path(name)
        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "") or "")
        except Exception as exc:  # noqa: BLE001 - test files include deliberately broken ones
            logger.debug("skipping %s: %s", path.name, exc)
            continue
        if modality in ("CR", "DX"):
            continue  # unknown body part; not a clean negative
        gray = dicom_gray_any(path)
        if gray is None:
            continue
        key = _fingerprint(gray)
        if key in seen:
            continue
        seen.add(key)
        out.append(NegativeImage(categories.get(modality, "other_dicom"), path.name, gray))
    return out


def _font(size: int) -> object:
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default()


def documents(rng: np.random.Generator, n: int = 12) -> list[NegativeImage]:
    """Rendered pages: text paragraphs, forms with lines and boxes, tables; some scanned-looking."""
    from PIL import Image, ImageDraw

    words = ("patient", "report", "form", "date", "signature", "clinic", "radiology", "request",
             "history", "consent", "name", "address", "please", "tick", "box", "examination")
    out: list[NegativeImage] = []
    for i in range(n):
        w, h = 850, 1100
        page = Image.new("L", (w, h), color=int(rng.integers(215, 256)))
        draw = ImageDraw.Draw(page)
        font = _font(int(rng.integers(14, 30)))
        kind = i % 3
        y = 60
        if kind == 0:  # text page
            while y < h - 80:
                line = " ".join(rng.choice(words, size=int(rng.integers(4, 10))))
                draw.text((60, y), line, fill=int(rng.integers(0, 60)), font=font)  # type: ignore[arg-type]
                y += int(rng.integers(28, 44))
        elif kind == 1:  # form: labels, underlines, tick boxes
            while y < h - 100:
                draw.text((60, y), str(rng.choice(words)).title() + ":", fill=0, font=font)  # type: ignore[arg-type]
                draw.line((260, y + 26, w - 60, y + 26), fill=0, width=2)
                if rng.random() < 0.4:
                    for bx in range(300, w - 100, 150):
                        draw.rectangle((bx, y, bx + 22, y + 22), outline=0, width=2)
                y += int(rng.integers(50, 80))
            draw.rectangle((40, 40, w - 40, h - 40), outline=0, width=3)
        else:  # table
            rows, cols = int(rng.integers(8, 20)), int(rng.integers(3, 7))
            for r in range(rows + 1):
                yy = 80 + r * (h - 160) // rows
                draw.line((60, yy, w - 60, yy), fill=0, width=2)
            for c in range(cols + 1):
                xx = 60 + c * (w - 120) // cols
                draw.line((xx, 80, xx, h - 80), fill=0, width=2)
            for r in range(rows):
                for c in range(cols):
                    draw.text((70 + c * (w - 120) // cols, 88 + r * (h - 160) // rows),
                              str(rng.choice(words))[:8], fill=0, font=font)  # type: ignore[arg-type]
        gray: np.ndarray = np.asarray(page, dtype=np.float32) / np.float32(255.0)
        if i % 2:  # scanned look: blur, noise, a gray cast
            import cv2

            gray = np.asarray(cv2.GaussianBlur(gray, (3, 3), 0.8), dtype=np.float32)
            gray = gray * np.float32(rng.uniform(0.75, 0.95)) + rng.normal(0, 0.03, gray.shape).astype(np.float32)
        out.append(NegativeImage("document", f"document-{['text', 'form', 'table'][kind]}-{i}", np.clip(gray, 0, 1).astype(np.float32)))
    return out


def charts(rng: np.random.Generator, n: int = 6) -> list[NegativeImage]:
    """Matplotlib figures rendered with the Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out: list[NegativeImage] = []
    for i in range(n):
        fig = Figure(figsize=(5, 5), dpi=80)
        ax = fig.add_subplot()
        kind = i % 4
        if kind == 0:
            ax.plot(np.cumsum(rng.normal(size=(200, 3)), axis=0))
        elif kind == 1:
            ax.bar(range(8), rng.uniform(1, 10, 8))
        elif kind == 2:
            points = rng.normal(size=(2, 300))
            ax.scatter(points[0], points[1], s=6)
        else:
            ax.imshow(rng.normal(size=(20, 20)).cumsum(axis=0), cmap="viridis")
        ax.set_title(f"chart {i}")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # type: ignore[no-untyped-call]
        buffer = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
        rgba = np.asarray(buffer, dtype=np.float32)[..., :3] / 255.0
        out.append(NegativeImage("chart", f"chart-{kind}-{i}", (rgba @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)))
    return out


def natural_images() -> list[NegativeImage]:
    """matplotlib's raster sample data: a photograph, logos, elevation and bathymetry maps."""
    import matplotlib
    from PIL import Image

    root = Path(matplotlib.get_data_path()) / "sample_data"
    out: list[NegativeImage] = []
    for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        path = root / name
        if path.is_file():
            with Image.open(path) as image:
                out.append(NegativeImage("natural", name, np.asarray(image.convert("L"), dtype=np.float32) / 255.0))
    for name, key in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
        path = root / name
        if path.is_file():
            with np.load(path) as npz:
                if key in npz.files:
                    out.append(NegativeImage("natural", name, _to_unit(np.asarray(npz[key], dtype=np.float32))))
    return out


def synthetic(rng: np.random.Generator, size: int = 512) -> list[NegativeImage]:
    """Noise, blank, gradient and pattern images, ``size`` pixels a side."""
    import cv2

    out: list[NegativeImage] = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size - 1)
    for i in range(4):
        out.append(NegativeImage("noise", f"uniform-noise-{i}", rng.random((size, size), dtype=np.float32)))
        out.append(NegativeImage("noise", f"gaussian-noise-{i}", np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1).astype(np.float32)))
        binary = (rng.random((size, size)) < 0.5).astype(np.float32)
        out.append(NegativeImage("noise", f"salt-pepper-{i}", binary))
    for value in (0.0, 0.5, 1.0):
        out.append(NegativeImage("blank", f"constant-{value}", np.full((size, size), value, dtype=np.float32)))
    out.append(NegativeImage("blank", "nearly-constant", np.clip(0.4 + rng.normal(0, 0.004, (size, size)), 0, 1).astype(np.float32)))
    for angle in (0, 45, 90, 135, 180):
        t = np.cos(np.radians(angle)) * xx + np.sin(np.radians(angle)) * yy
        out.append(NegativeImage("gradient", f"linear-{angle}", _to_unit(t)))
    r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    out.append(NegativeImage("gradient", "radial", _to_unit(r)))
    out.append(NegativeImage("gradient", "radial-inverted", _to_unit(-r)))
    for cells in (2, 8, 32):
        board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
        out.append(NegativeImage("pattern", f"checkerboard-{cells}", board))
    for period in (4, 16, 64):
        out.append(NegativeImage("pattern", f"stripes-{period}", (0.5 + 0.5 * np.sin(2 * np.pi * xx * size / period)).astype(np.float32)))
    for i in range(4):
        canvas = np.full((size, size), float(rng.uniform(0, 0.3)), dtype=np.float32)
        for _ in range(int(rng.integers(3, 12))):
            center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            if rng.random() < 0.5:
                cv2.circle(canvas, center, int(rng.integers(10, size // 4)), float(rng.uniform(0.3, 1)), -1)
            else:
                other = (int(rng.integers(0, size)), int(rng.integers(0, size)))
                cv2.rectangle(canvas, center, other, float(rng.uniform(0.3, 1)), -1)
        out.append(NegativeImage("pattern", f"shapes-{i}", canvas))
    return out


def build_negatives(shared_dicom_dir: Path | None = None, seed: int = 0) -> list[NegativeImage]:
    """Every negative category (see the module docstring).

    Args:
        shared_dicom_dir: folder holding RG3_UNCR.dcm (the tibia), or None to leave it out.
        seed: seed of the rendered and synthetic images.
    """
    rng = np.random.default_rng(seed)
    out: list[NegativeImage] = []
    if shared_dicom_dir is not None and (shared_dicom_dir / "RG3_UNCR.dcm").is_file():
        gray = dicom_gray_any(shared_dicom_dir / "RG3_UNCR.dcm")
        if gray is not None:
            out.append(NegativeImage("tibia", "RG3_UNCR.dcm", gray))
    out.extend(pydicom_test_images())
    out.extend(documents(rng))
    out.extend(charts(rng))
    out.extend(natural_images())
    out.extend(synthetic(rng))
    return out
