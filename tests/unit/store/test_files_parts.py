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
