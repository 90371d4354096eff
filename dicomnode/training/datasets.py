"""Training and evaluation datasets: image folders, MedMNIST npz, RSNA DICOM+CSV, NIH-14 CSV.

Every format becomes a :class:`LabeledImages`: a list of sources (an image file, a
DICOM file or an in-memory array) with a ``(N, L)`` float32 target matrix, one column
per label (the positive findings). Pixels go through the serving pipeline
(:func:`dicomnode.inference.preprocess.image_file_to_gray` / ``dicom_to_gray``), so a
model is trained on exactly what it will see when serving.

A stratified, seeded validation split is carved out when the data has none
(:func:`split_indices`); it is grouped by patient whenever the format carries a patient
key (:func:`group_key_for_file`, NIH ``Patient ID``, RSNA ``patientId``, DICOM PatientID),
so no patient sits in both parts. ``evaluate --split val --seed S --val-fraction F``
re-carves the same split.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicomnode.errors import DataError, InferenceError
from dicomnode.training.formats import DataFormat as DataFormat  # noqa: PLC0414 - re-export
from dicomnode.training.formats import Split as Split  # noqa: PLC0414 - re-export

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
NEGATIVE_CLASS_NAMES = frozenset({"normal", "negative", "no_finding", "no finding", "0", "healthy"})
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The 14 NIH ChestX-ray14 findings, in ChestMNIST label order."""


@dataclass
class LabeledImages:
    """Images with binary or multi-label targets.

    Attributes:
        labels: label names, one per target column (binary: one positive finding).
        targets: (N, L) float32 in {0, 1}.
        paths: N image or DICOM files (None for in-memory arrays).
        arrays: (N, H, W) uint8 in-memory gray images (MedMNIST), or None.
        description: where the data came from (for the manifest).
        groups: N patient keys (images of one patient share a key), or None when the
            format has no patient key (MedMNIST); the carved split never separates a group.
        group_source: what the keys are, e.g. ``"Kermany file name (personN / IM-NNNN)"``.
    """

    labels: tuple[str, ...]
    targets: np.ndarray
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    description: str = ""
    groups: list[str] | None = None
    group_source: str = "none"
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    cache_images: bool = False

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def gray(self, index: int) -> np.ndarray:
        """The display-oriented gray image ``index``, (H, W) float32 in [0, 1].

        Raises:
            DataError: the file cannot be read or decoded.
        """
        if self.arrays is not None:
            return np.asarray(self.arrays[index], dtype=np.float32) / np.float32(255.0)
        if self.paths is None:
            raise DataError("dataset has neither paths nor arrays")
        cached = self._cache.get(index)
        if cached is not None:
            return cached.astype(np.float32) / np.float32(255.0)
        gray = load_gray(self.paths[index])
        if self.cache_images and self.paths[index].suffix.lower() in IMAGE_SUFFIXES:
            # 8-bit image files round-trip exactly through uint8.
            self._cache[index] = np.round(gray * 255.0).astype(np.uint8)
        return gray

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledImages:
        """A new dataset holding only ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabeledImages(
            labels=self.labels,
            targets=self.targets[idx],
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            arrays=self.arrays[idx] if self.arrays is not None else None,
            description=self.description,
            cache_images=self.cache_images,
            groups=[self.groups[i] for i in idx] if self.groups is not None else None,
            group_source=self.group_source,
        )

    def positives(self) -> np.ndarray:
        """(L,) number of positive samples per label."""
        return np.asarray(self.targets.sum(axis=0))


def load_gray(path: Path) -> np.ndarray:
    """Gray image of a JPEG/PNG or DICOM file through the serving pipeline.

    Raises:
        DataError: unreadable file.
    """
    from dicomnode.inference.preprocess import dicom_to_gray, image_file_to_gray

    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return image_file_to_gray(path)
        import pydicom

        ds = pydicom.dcmread(path)
        return dicom_to_gray(ds)
    except InferenceError as exc:
        raise DataError(f"{path}: {exc}") from exc
    except Exception as exc:  # pydicom raises several types for broken files
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


_KERMANY_GROUP = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1000_bacteria_2931 -> person1000
    re.compile(r"^((?:NORMAL\d+-)?IM-\d+)-", re.IGNORECASE),  # NORMAL2-IM-0381-0001 -> NORMAL2-IM-0381
)
KERMANY_GROUP_SOURCE = "Kermany file name (personN_..., IM-NNNN-..., NORMAL2-IM-NNNN-...)"


def group_key_for_file(path: Path) -> str | None:
    """The patient key a Kermany-style file name carries, or None when it carries none.

    ``person1000_bacteria_2931.jpeg`` and ``person1000_virus_1681.jpeg`` are one child
    (``person1000``); ``IM-0115-0001.jpeg`` is patient ``IM-0115``;
    ``NORMAL2-IM-0381-0001.jpeg`` is ``NORMAL2-IM-0381`` (a separate numbering series).
    """
    for pattern in _KERMANY_GROUP:
        match = pattern.match(path.stem)
        if match is not None:
            return match.group(1).lower()
    return None


def _dicom_patient_id(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - an unreadable header just has no key; reading pixels reports it
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def folder_groups(paths: Sequence[Path]) -> tuple[list[str] | None, str]:
    """Patient keys for the files of an image folder, and where they came from.

    Kermany-style names give the key from the name; DICOM files give their PatientID.
    A file with no key is its own group (``file:<name>``); when no file has a key the
    dataset is ungrouped (None).
    """
    keys: list[str | None] = []
    sources: set[str] = set()
    for path in paths:
        key = group_key_for_file(path)
        if key is not None:
            sources.add(KERMANY_GROUP_SOURCE)
        elif path.suffix.lower() in DICOM_SUFFIXES:
            patient = _dicom_patient_id(path)
            if patient is not None:
                key = f"patient:{patient}"
                sources.add("DICOM PatientID")
        keys.append(key)
    if not sources:
        return None, "none (file names carry no patient key): split by image"
    return [k if k is not None else f"file:{p.name}" for k, p in zip(keys, paths)], " + ".join(sorted(sources))


def split_indices(
    targets: np.ndarray, val_fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/validation split, grouped by patient when ``groups`` is given.

    Strata are the label combinations of ``targets`` (binary: the class; multi-label:
    "any finding" vs "none"); with groups, a patient's stratum is that of its most
    positive image and whole patients move. Each stratum's units (images, or patients)
    are shuffled with ``numpy.random.default_rng(seed)`` and ``round(val_fraction * n)``
    of them go to validation.

    Args:
        targets: (N, L) float32 targets.
        val_fraction: in (0, 1).
        seed: RNG seed.
        groups: N patient keys, or None to split images independently.

    Returns:
        (train_indices, val_indices), sorted int64 arrays; no group has members in both.

    Raises:
        DataError: the fraction is out of range, ``groups`` has the wrong length, or the
            split leaves a part empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must lie in (0, 1), got {val_fraction}")
    n = targets.shape[0]
    strata = targets[:, 0] if targets.shape[1] == 1 else (targets.sum(axis=1) > 0)
    if groups is None:
        unit_of = np.arange(n)
    else:
        if len(groups) != n:
            raise DataError(f"{len(groups)} group keys for {n} samples")
        _, unit_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_units = int(unit_of.max()) + 1 if n else 0
    unit_stratum = np.zeros(n_units, dtype=np.float64)
    np.maximum.at(unit_stratum, unit_of, strata.astype(np.float64))
    rng = np.random.default_rng(seed)
    val_units: list[np.ndarray] = []
    for value in np.unique(unit_stratum):
        members = np.flatnonzero(unit_stratum == value)
        members = members[rng.permutation(members.size)]
        val_units.append(members[: round(val_fraction * members.size)])
    chosen = np.concatenate(val_units) if val_units else np.empty(0, dtype=np.int64)
    val_idx = np.flatnonzero(np.isin(unit_of, chosen))
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    if val_idx.size == 0 or train_idx.size == 0:
        raise DataError(f"a {val_fraction:.2f} validation split of {n} samples leaves a split empty")
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def split_summary(data: LabeledImages, train_idx: np.ndarray, val_idx: np.ndarray, val_fraction: float, seed: int) -> dict[str, object]:
    """How a carved split was made, for the manifest: method, seed, fraction, group counts."""
    grouped = data.groups is not None
    summary: dict[str, object] = {
        "method": "stratified, grouped by patient" if grouped else "stratified by image (no patient key)",
        "group_key": data.group_source,
        "seed": seed,
        "val_fraction": val_fraction,
        "n_train_images": int(train_idx.size),
        "n_val_images": int(val_idx.size),
    }
    if data.groups is not None:
        summary["n_train_groups"] = len({data.groups[i] for i in train_idx})
        summary["n_val_groups"] = len({data.groups[i] for i in val_idx})
    return summary


def detect_format(path: Path) -> DataFormat:
    """Guess the layout of ``path``.

    Raises:
        DataError: the path does not exist or matches no known layout.
    """
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return DataFormat.MEDMNIST
        if path.suffix.lower() == ".csv":
            header = _csv_header(path)
            if "Image Index" in header and "Finding Labels" in header:
                return DataFormat.NIH
            if "patientId" in header and "Target" in header:
                return DataFormat.RSNA
        raise DataError(f"cannot tell the dataset format of {path} (use --format)")
    for csv_path in sorted(path.glob("*.csv")):
        header = _csv_header(csv_path)
        if "Image Index" in header and "Finding Labels" in header:
            return DataFormat.NIH
        if "patientId" in header and "Target" in header:
            return DataFormat.RSNA
    if list(path.glob("*.npz")):
        return DataFormat.MEDMNIST
    if _class_folders(path) or (path / "train").is_dir():
        return DataFormat.FOLDER
    raise DataError(f"cannot tell the dataset format of {path} (use --format)")


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _class_folders(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and any(f.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES for f in p.iterdir())
    )


def load_image_folder(path: Path, split: Split = Split.ALL) -> tuple[LabeledImages, bool]:
    """One subfolder per class (``NORMAL/``, ``PNEUMONIA/``).

    Two classes give a binary head whose label is the non-normal class (lower case,
    e.g. ``pneumonia``); more classes give one label per non-normal class (multi-label,
    one-hot). A root holding ``train/``/``val/``/``test/`` folders picks the one for ``split``.

    Returns:
        (dataset, has_own_split): ``has_own_split`` is True when ``split`` selected a subfolder.

    Raises:
        DataError: no class folders, or a single class.
    """
    own_split = False
    if split is not Split.ALL and (path / split.value).is_dir():
        path, own_split = path / split.value, True
    elif split is Split.ALL and not _class_folders(path) and (path / "train").is_dir():
        path = path / "train"
    folders = _class_folders(path)
    if len(folders) < 2:
        raise DataError(f"{path}: need at least two class subfolders with images")
    negatives = [f for f in folders if f.name.lower() in NEGATIVE_CLASS_NAMES]
    negative = negatives[0] if negatives else folders[0]
    positive = [f for f in folders if f != negative]
    labels = tuple(f.name.lower() for f in positive)
    paths: list[Path] = []
    rows: list[np.ndarray] = []
    for folder in folders:
        row = np.array([1.0 if folder == p else 0.0 for p in positive], dtype=np.float32)
        files = sorted(
            f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES
        )
        paths.extend(files)
        rows.extend([row] * len(files))
    targets = np.stack(rows).astype(np.float32)
    description = f"image folder {path} ({len(paths)} images, classes {[f.name for f in folders]})"
    groups, group_source = folder_groups(paths)
    data = LabeledImages(
        labels=labels, targets=targets, paths=paths, description=description, groups=groups, group_source=group_source
    )
    return data, own_split


def load_medmnist(path: Path, split: Split = Split.ALL) -> tuple[LabeledImages, bool]:
    """MedMNIST ``.npz`` (``train_images``/``train_labels``, ``val_*``, ``test_*``).

    One label column gives a binary head (``pneumonia`` for PneumoniaMNIST); 14 columns
    give the ChestMNIST/NIH findings. ``split=all`` returns train (+ val is used as the
    validation split when present).

    Raises:
        DataError: the file lacks the expected arrays.
    """
    file = path if path.is_file() else min(path.glob("*.npz"))
    try:
        npz = np.load(file)
        keys = set(npz.files)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc
    part = "train" if split in (Split.ALL, Split.TRAIN) else split.value
    if f"{part}_images" not in keys:
        raise DataError(f"{file} has no {part}_images (keys: {sorted(keys)})")
    images = np.asarray(npz[f"{part}_images"])
    labels_arr = np.asarray(npz[f"{part}_labels"]).astype(np.float32)
    if images.ndim == 4:  # colour MedMNIST: convert to gray
        images = np.round(images.astype(np.float32).mean(axis=-1)).astype(np.uint8)
    if labels_arr.ndim == 1:
        labels_arr = labels_arr[:, None]
    n_labels = labels_arr.shape[1]
    if n_labels == 1:
        if labels_arr.max() > 1:
            raise DataError(f"{file}: multi-class single-column labels are not supported")
        names: tuple[str, ...] = ("pneumonia",)
    elif n_labels == len(NIH_FINDINGS):
        names = tuple(f.lower() for f in NIH_FINDINGS)
    else:
        names = tuple(f"label_{i}" for i in range(n_labels))
    own = split is not Split.ALL or "val_images" in keys
    description = f"MedMNIST {file.name} {part} ({images.shape[0]} images {images.shape[1:]})"
    return (
        LabeledImages(
            labels=names,
            targets=labels_arr,
            arrays=images.astype(np.uint8),
            description=description,
            group_source="none (MedMNIST carries no patient key; use its own train/val split)",
        ),
        own and split is not Split.ALL,
    )


def load_rsna(path: Path, images_dir: Path | None = None) -> LabeledImages:
    """RSNA Pneumonia Detection CSV (``patientId,...,Target``) + ``<patientId>.dcm`` files.

    Several box rows per patient collapse to one label (any ``Target == 1``).

    Raises:
        DataError: missing CSV, columns or DICOM files.
    """
    csv_path = path if path.is_file() else _find_csv(path, ("patientId", "Target"))
    root = csv_path.parent
    if images_dir is None:
        candidates = [root / "stage_2_train_images", root / "stage_1_train_images", root / "images", root]
        images_dir = next((c for c in candidates if c.is_dir() and list(c.glob("*.dcm"))[:1]), root)
    labels: dict[str, float] = {}
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                pid = row["patientId"].strip()
                labels[pid] = max(labels.get(pid, 0.0), float(row["Target"] or 0))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read RSNA labels {csv_path}: {exc}") from exc
    paths, targets = [], []
    for pid in sorted(labels):
        file = images_dir / f"{pid}.dcm"
        if file.is_file():
            paths.append(file)
            targets.append([labels[pid]])
    if not paths:
        raise DataError(f"no <patientId>.dcm file of {csv_path} found in {images_dir}")
    if len(paths) < len(labels):
        logger.warning("%d of %d RSNA patients have no DICOM file", len(labels) - len(paths), len(labels))
    return LabeledImages(
        labels=("pneumonia",),
        targets=np.asarray(targets, dtype=np.float32),
        paths=paths,
        description=f"RSNA pneumonia {csv_path.name} ({len(paths)} DICOM images)",
        groups=[p.stem for p in paths],
        group_source="RSNA patientId",
    )


def load_nih(path: Path, images_dir: Path | None = None) -> LabeledImages:
    """NIH ChestX-ray14 ``Data_Entry`` CSV (``Image Index``, ``Finding Labels`` with ``|``).

    Gives a 14-label multi-label dataset (``No Finding`` = all zeros). Images are looked up
    in ``images_dir`` (default: ``images/`` beside the CSV, recursively).

    Raises:
        DataError: missing CSV, columns or images.
    """
    csv_path = path if path.is_file() else _find_csv(path, ("Image Index", "Finding Labels"))
    root = images_dir or (csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent)
    index = {p.name: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES}
    order = {name: i for i, name in enumerate(NIH_FINDINGS)}
    paths, targets, patients = [], [], []
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                file = index.get(row["Image Index"].strip())
                if file is None:
                    continue
                patients.append(str(row.get("Patient ID") or "").strip() or f"file:{file.name}")
                vector = np.zeros(len(NIH_FINDINGS), dtype=np.float32)
                for finding in row["Finding Labels"].split("|"):
                    if finding.strip() in order:
                        vector[order[finding.strip()]] = 1.0
                paths.append(file)
                targets.append(vector)
    except (OSError, KeyError) as exc:
        raise DataError(f"cannot read NIH labels {csv_path}: {exc}") from exc
    if not paths:
        raise DataError(f"no image of {csv_path} found under {root}")
    return LabeledImages(
        labels=tuple(f.lower() for f in NIH_FINDINGS),
        targets=np.stack(targets),
        paths=paths,
        description=f"NIH ChestX-ray14 {csv_path.name} ({len(paths)} images)",
        groups=patients,
        group_source="NIH Patient ID",
    )


def _find_csv(folder: Path, columns: tuple[str, ...]) -> Path:
    for csv_path in sorted(folder.glob("*.csv")):
        if all(c in _csv_header(csv_path) for c in columns):
            return csv_path
    raise DataError(f"no CSV with columns {columns} in {folder}")


def load_dataset(
    path: Path,
    fmt: DataFormat = DataFormat.AUTO,
    *,
    images_dir: Path | None = None,
) -> tuple[LabeledImages, LabeledImages | None]:
    """Read a dataset and its own validation split when it has one.

    Args:
        path: dataset file or folder.
        fmt: layout, or ``auto`` to detect it.
        images_dir: image folder for CSV formats (RSNA, NIH), default beside the CSV.

    Returns:
        (train_or_all, own_validation_or_None).

    Raises:
        DataError: unknown layout or unreadable data.
    """
    fmt = detect_format(path) if fmt is DataFormat.AUTO else fmt
    if fmt is DataFormat.FOLDER:
        if (path / "train").is_dir() and (path / "val").is_dir():
            return load_image_folder(path, Split.TRAIN)[0], load_image_folder(path, Split.VAL)[0]
        return load_image_folder(path)[0], None
    if fmt is DataFormat.MEDMNIST:
        train, _ = load_medmnist(path, Split.TRAIN)
        try:
            val, _ = load_medmnist(path, Split.VAL)
        except DataError:
            val = None
        return train, val
    if fmt is DataFormat.RSNA:
        return load_rsna(path, images_dir), None
    return load_nih(path, images_dir), None


def select_split(
    path: Path,
    split: Split,
    *,
    fmt: DataFormat = DataFormat.AUTO,
    val_fraction: float = 0.15,
    seed: int = 0,
    images_dir: Path | None = None,
) -> LabeledImages:
    """The part of a dataset that ``train`` used for ``split``.

    ``train``/``val`` re-carve the stratified seeded split that training made (same
    ``seed`` and ``val_fraction``) unless the dataset has its own validation part;
    ``test`` needs a dataset with its own test part; ``all`` is everything.

    Raises:
        DataError: the split cannot be made.
    """
    fmt = detect_format(path) if fmt is DataFormat.AUTO else fmt
    if split is Split.TEST:
        if fmt is DataFormat.FOLDER:
            data, own = load_image_folder(path, Split.TEST)
            if not own:
                raise DataError(f"{path} has no test/ folder")
            return data
        if fmt is DataFormat.MEDMNIST:
            return load_medmnist(path, Split.TEST)[0]
        raise DataError(f"{fmt} data has no test split")
    train, own_val = load_dataset(path, fmt, images_dir=images_dir)
    if split is Split.ALL:
        return train
    if own_val is not None:
        return own_val if split is Split.VAL else train
    train_idx, val_idx = split_indices(train.targets, val_fraction, seed, train.groups)
    return train.subset(val_idx if split is Split.VAL else train_idx)
