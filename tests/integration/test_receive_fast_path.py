"""The P-DATA fast path (guard.split_p_data + CheckedDIMSEProvider) with DCMTK storescu.

storescu sends each data set in many small P-DATA-TF PDUs (``--max-send-pdu``); the
node must store the data set bytes exactly as sent, whatever the PDU boundaries, and
keep every data set of one association apart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import Engine

from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.store.files import FileStore, part10_dataset
from tests.helpers import dcmtk, make_cxr_dataset
from tests.peers.node import instances
from tests.peers.scp import NODE_AE, RunningScp, run_scp

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]


@pytest.fixture
def node_scp(receive_context: ReceiveContext) -> Iterator[RunningScp]:
    running = run_scp(receive_context)
    yield running
    stop_scp(running.server, grace_s=5)


@pytest.mark.parametrize("max_send_pdu", [4096, 16384, 131072])
def test_data_sets_sent_in_many_pdus_are_stored_byte_for_byte(
    node_scp: RunningScp, store_engine: Engine, data_dir: Path, tmp_path: Path, max_send_pdu: int
) -> None:
    # Odd sizes, 8- and 16-bit, both little endian syntaxes: fragments end anywhere.
    datasets = [
        make_cxr_dataset(rows=301, cols=257, bits_stored=12, seed=1),
        make_cxr_dataset(rows=129, cols=131, bits_stored=8, seed=2),
        make_cxr_dataset(rows=512, cols=512, bits_stored=16, seed=3, transfer_syntax=ImplicitVRLittleEndian),
        make_cxr_dataset(rows=7, cols=9, bits_stored=8, seed=4),
    ]
    paths = []
    for n, ds in enumerate(datasets):
        path = tmp_path / f"in{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    result = subprocess.run(
        [
            dcmtk("storescu"), "-aet", "DCMTKSCU", "-aec", NODE_AE,
            "-ta", "30", "-td", "60", "-to", "30", "--max-send-pdu", str(max_send_pdu),
            "-R",  # propose only each file's own transfer syntax: sent as it is in the file
            "127.0.0.1", str(node_scp.port), *map(str, paths),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]

    files = FileStore(data_dir)
    assert len(instances(store_engine)) == len(datasets)
    for ds, path in zip(datasets, paths, strict=True):
        stored = files.incoming_path(ds.SOPInstanceUID).read_bytes()
        assert part10_dataset(stored) == part10_dataset(path.read_bytes()), ds.Rows
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    }
