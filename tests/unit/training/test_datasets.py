"""Dataset formats, detection and the stratified seeded split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.errors import DataError
from dicomnode.training.datasets import (
    DataFormat,
    Split,
    detect_format,
    group_key_for_file,
    load_dataset,
    load_image_folder,
    select_split,
    split_indices,
)
from tests.helpers import make_cxr_dataset, require_shared_data


def test_image_folder_labels_the_non_normal_class(synthetic_folder: Path) -> None:
    assert detect_format(synthetic_folder) is DataFormat.FOLDER
    data, own = load_image_folder(synthetic_folder)
    assert not own
    assert data.labels == ("pneumonia",)
    assert len(data) == 48 and data.targets.shape == (48, 1)
    assert data.targets.sum() == 24
    assert data.paths is not None
    for path, target in zip(data.paths, data.targets[:, 0]):
        assert (path.parent.name == "PNEUMONIA") == (target == 1)
    gray = data.gray(0)
    assert gray.shape == (48, 48) and gray.dtype == np.float32


def test_split_is_stratified_disjoint_and_seeded() -> None:
    targets = np.r_[np.zeros(100), np.ones(300)].astype(np.float32)[:, None]
    train, val = split_indices(targets, 0.15, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert train.size + val.size == 400
    assert targets[val].sum() == 45 and (targets[val] == 0).sum() == 15
    again = split_indices(targets, 0.15, seed=3)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_indices(targets, 0.15, seed=4)[1])
    with pytest.raises(DataError):
        split_indices(targets, 1.5, seed=0)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person1_virus_6_2.jpeg", "person1"),
        ("IM-0115-0001.jpeg", "im-0115"),
        ("IM-0117-0001-0002.jpeg", "im-0117"),
        ("NORMAL2-IM-0381-0001.jpeg", "normal2-im-0381"),
        ("scan.png", None),
    ],
)
def test_kermany_file_names_give_the_patient(name: str, key: str | None) -> None:
    assert group_key_for_file(Path(name)) == key


def test_grouped_split_never_separates_a_patient() -> None:
    rng = np.random.default_rng(0)
    groups = [f"p{int(g)}" for g in rng.integers(0, 60, size=400)]
    targets = np.array([[float(int(g[1:]) % 3 == 0)] for g in groups], dtype=np.float32)
    train, val = split_indices(targets, 0.2, seed=1, groups=groups)
    assert train.size + val.size == 400 and np.intersect1d(train, val).size == 0
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    # Stratified at patient level: both classes reach validation.
    assert 0 < targets[val].sum() < val.size


def test_kermany_validation_split_is_grouped_by_patient() -> None:
    """The real training folder: no child sits in both train and validation."""
    data_dir = require_shared_data("kermany_224/train")
    data, _ = load_image_folder(data_dir)
    assert data.groups is not None and data.paths is not None
    train, val = split_indices(data.targets, 0.15, seed=0, groups=data.groups)
    train_groups = {data.groups[i] for i in train}
    val_groups = {data.groups[i] for i in val}
    assert not train_groups & val_groups
    # person1000 has a bacterial and a viral image: both land on one side.
    sides = {("val" if i in set(val.tolist()) else "train") for i, p in enumerate(data.paths) if p.name.startswith("person1000_")}
    assert len(sides) == 1
    assert 0.12 < val.size / len(data) < 0.18


def test_select_split_recarves_the_same_validation(synthetic_folder: Path) -> None:
    val = select_split(synthetic_folder, Split.VAL, val_fraction=0.25, seed=5)
    train = select_split(synthetic_folder, Split.TRAIN, val_fraction=0.25, seed=5)
    assert len(val) == 12 and len(train) == 36
    assert val.paths is not None and train.paths is not None
    assert not set(val.paths) & set(train.paths)
    assert val.targets.sum() == 6
    assert select_split(synthetic_folder, Split.VAL, val_fraction=0.25, seed=5).paths == val.paths


def test_medmnist_npz_binary_and_chestmnist(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    binary = tmp_path / "pneumoniamnist.npz"
    np.savez(
        binary,
        train_images=rng.integers(0, 255, (20, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 2, (20, 1)),
        val_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
        val_labels=np.array([[0], [1], [0], [1], [1], [0]]),
    )
    assert detect_format(binary) is DataFormat.MEDMNIST
    train, val = load_dataset(binary)
    assert train.labels == ("pneumonia",) and len(train) == 20
    assert val is not None and len(val) == 6 and val.targets.sum() == 3
    assert train.gray(0).shape == (28, 28)
    chest = tmp_path / "chestmnist.npz"
    np.savez(
        chest,
        train_images=rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 2, (10, 14)),
    )
    train, val = load_dataset(chest)
    assert len(train.labels) == 14 and train.labels[0] == "atelectasis" and val is None
    with pytest.raises(DataError, match="test_images"):
        select_split(chest, Split.TEST)


def test_rsna_csv_collapses_box_rows(tmp_path: Path) -> None:
    images = tmp_path / "stage_2_train_images"
    images.mkdir()
    for i, pid in enumerate(["p1", "p2", "p3"]):
        make_cxr_dataset(seed=i).save_as(images / f"{pid}.dcm", enforce_file_format=True)
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n"
        "p1,,,,,0\n"
        "p2,10,10,5,5,1\n"
        "p2,20,20,5,5,1\n"
        "p3,,,,,0\n"
        "p4,,,,,1\n",  # no DICOM file: left out
        encoding="utf-8",
    )
    assert detect_format(tmp_path) is DataFormat.RSNA
    data, val = load_dataset(tmp_path)
    assert val is None and len(data) == 3
    assert data.targets[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert data.gray(1).shape == (64, 64)


def test_nih_csv_multilabel(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ["a.png", "b.png", "c.png"]:
        Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(images / name)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient ID\n"
        "a.png,No Finding,1\n"
        "b.png,Effusion|Pneumonia,2\n"
        "c.png,Hernia,3\n",
        encoding="utf-8",
    )
    assert detect_format(tmp_path) is DataFormat.NIH
    data, _ = load_dataset(tmp_path)
    assert len(data.labels) == 14
    assert data.targets.sum(axis=1).tolist() == [0.0, 2.0, 1.0]
    assert data.targets[1, data.labels.index("pneumonia")] == 1.0
    assert data.targets[2, data.labels.index("hernia")] == 1.0


def test_unknown_layout_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        detect_format(tmp_path / "absent")
    (tmp_path / "x.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell"):
        detect_format(tmp_path)


@pytest.mark.shared_data
def test_kermany_folder_is_detected() -> None:
    root = require_shared_data("kermany_224", "train")
    data, _own = load_image_folder(root)
    assert data.labels == ("pneumonia",)
    assert len(data) == 5216 and int(data.targets.sum()) == 3875
