"""FileStore.write_atomic with data in parts, written in bounded pieces, with and without fsync."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from dicomnode.store import files
from dicomnode.store.files import FileStore


@pytest.mark.parametrize("fsync", [True, False])
def test_parts_are_written_in_order_in_small_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    monkeypatch.setattr(files, "WRITE_CHUNK_BYTES", 7)  # many pieces, one short last one
    store = FileStore(tmp_path, fsync=fsync)
    buffer = io.BytesIO(bytes(range(256)) * 3)
    header = b"\x00" * 128 + b"DICM"
    path = store.incoming_path("1.2.3")
    view = buffer.getbuffer()
    assert store.write_atomic(path, [header, view], overwrite=False)
    view.release()
    assert path.read_bytes() == header + bytes(range(256)) * 3
    buffer.write(b"more")  # the received buffer is not held by the store
    assert not list(path.parent.glob(".partial-*"))


def test_default_store_flushes_to_disk(tmp_path: Path) -> None:
    assert FileStore(tmp_path).fsync is True


def test_part10_parts_make_a_file_pydicom_reads_with_the_data_set_bytes_unchanged(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.dsutils import encode

    from tests.helpers import make_cxr_dataset

    ds = make_cxr_dataset()
    payload = encode(ds, False, True)
    assert payload is not None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid()
    store = FileStore(tmp_path)
    path = store.incoming_path(str(ds.SOPInstanceUID))
    assert store.write_atomic(path, files.part10_parts(meta, payload), overwrite=False)
    raw = path.read_bytes()
    assert raw[:132] == files.PART10_PREAMBLE
    assert files.part10_dataset(raw) == payload
    assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert files.part10_dataset(b"not a part 10 file") is None


def test_one_uid_always_takes_the_same_lock_and_locks_are_files_in_the_data_folder(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    locks = files.UidLocks(tmp_path / files.LOCK_FOLDER)
    assert locks.for_uid("1.2.3") is locks.for_uid("1.2.3")
    with store.lock_instance("1.2.3"):
        held = list((tmp_path / files.LOCK_FOLDER).glob("*.lock"))
    assert len(held) == 1
    with store.lock_instance("1.2.3"):  # released: can be taken again
        pass


@pytest.mark.parametrize(
    ("sop_instance_uid", "version"),
    [("1.2.3.4", "DICOMNODE_1"), ("1.2.3.45", "DN1"), ("1." + "2" * 62, "SIXTEEN_CHARS_16")],
)
def test_part10_header_is_what_pydicom_writes(sop_instance_uid: str, version: str) -> None:
    """The hand-encoded File Meta (the receiver's per-instance path) is byte for byte the
    one pydicom's write_file_meta_info writes for the same elements, odd and even lengths."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        meta = FileMetaDataset()
        meta.FileMetaInformationGroupLength = 0
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = sop_instance_uid
        meta.TransferSyntaxUID = syntax
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1234"
        meta.ImplementationVersionName = version
        expected = files.part10_parts(meta, b"")[0]
        assert files.part10_header(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=syntax,
            implementation_class_uid="1.2.826.0.1.3680043.10.1234",
            implementation_version_name=version,
        ) == expected
