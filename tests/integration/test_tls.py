"""DICOM TLS (PS3.15 BCP 195) with mutual authentication on the node's second port.

DCMTK storescu with a certificate from the trusted CA gets in; one with a
certificate from another CA, one without a certificate, and a plain-TCP client
all fail, and nothing of theirs is stored. A client that opens the TLS port and
never starts the handshake delays nobody (the handshake is not done in the
accept loop).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicomnode.config import DicomSettings
from dicomnode.errors import ConfigError
from dicomnode.receiving.handlers import ReceiveContext
from dicomnode.receiving.scp import stop_scp
from dicomnode.receiving.tls import server_context
from dicomnode.store.models import Instance
from tests.helpers import dcmtk, free_port, make_cxr_dataset, wait_for_port
from tests.integration.tlscerts import Certificates, make_certificates, storescu_tls_args
from tests.peers.scp import NODE_AE, RunningScp, run_scp

pytestmark = [pytest.mark.integration, pytest.mark.dcmtk]

HANDSHAKE_TIMEOUT_S = 30.0
NOT_DELAYED_S = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_scp(receive_context: ReceiveContext, certs: Certificates) -> Iterator[RunningScp]:
    running = run_scp(
        receive_context,
        tls_port=free_port(),
        tls_certificate=certs.server_cert,
        tls_private_key=certs.server_key,
        tls_ca_certificates=certs.ca,
        acse_timeout_s=HANDSHAKE_TIMEOUT_S,
        network_timeout_s=HANDSHAKE_TIMEOUT_S,
    )
    assert running.settings.tls_port is not None
    wait_for_port(running.settings.tls_port, timeout_s=10)
    yield running
    stop_scp(running.server, grace_s=1)


def _tls_port(scp: RunningScp) -> int:
    assert scp.settings.tls_port is not None
    return scp.settings.tls_port


def _file(tmp_path: Path, seed: int) -> tuple[Path, str]:
    ds = make_cxr_dataset(seed=seed)
    path = tmp_path / f"img{seed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def _storescu(port: int, file: Path, *tls: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(
        [dcmtk("storescu"), *tls, "-ta", "20", "-to", "20", "-aet", "MODALITY", "-aec", NODE_AE,
         "127.0.0.1", str(port), str(file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return result, time.monotonic() - start


def _stored(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.scalars(select(Instance.sop_instance_uid)))


def test_trusted_client_certificate_stores(
    tls_scp: RunningScp, store_engine: Engine, certs: Certificates, tmp_path: Path
) -> None:
    path, uid = _file(tmp_path, 1)
    result, _ = _storescu(
        _tls_port(tls_scp), path, *storescu_tls_args(certs.client_key, certs.client_cert, certs.ca)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _stored(store_engine) == {uid}


def test_python_client_negotiates_tls12_or_newer_with_a_bcp195_suite(
    tls_scp: RunningScp, certs: Certificates
) -> None:
    client = ssl.create_default_context(cafile=str(certs.ca))
    client.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", _tls_port(tls_scp)), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.2"
        cipher = tls.cipher()
        assert cipher is not None and "GCM" in cipher[0] and "DHE" in cipher[0]
    weak = ssl.create_default_context(cafile=str(certs.ca))
    weak.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    weak.minimum_version = ssl.TLSVersion.TLSv1
    weak.maximum_version = ssl.TLSVersion.TLSv1_1
    weak.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", _tls_port(tls_scp)), timeout=10) as raw,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        weak.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.parametrize("client", ["untrusted-certificate", "no-certificate", "plain-tcp"])
def test_other_clients_fail_and_store_nothing(
    tls_scp: RunningScp, store_engine: Engine, certs: Certificates, tmp_path: Path, client: str
) -> None:
    path, _ = _file(tmp_path, 2)
    tls = {
        "untrusted-certificate": storescu_tls_args(
            certs.rogue_client_key, certs.rogue_client_cert, certs.ca
        ),
        "no-certificate": ["+tla", "+cf", str(certs.ca), "+py"],
        "plain-tcp": [],
    }[client]
    result, took = _storescu(_tls_port(tls_scp), path, *tls)
    assert result.returncode != 0
    assert took < NOT_DELAYED_S  # refused at once, not after a timeout
    assert _stored(store_engine) == set()


def test_plain_port_still_speaks_plain_dicom(
    tls_scp: RunningScp, store_engine: Engine, tmp_path: Path
) -> None:
    path, uid = _file(tmp_path, 3)
    result, _ = _storescu(tls_scp.port, path)
    assert result.returncode == 0, result.stderr
    assert _stored(store_engine) == {uid}


def test_stalled_handshakes_do_not_delay_other_tls_senders(
    tls_scp: RunningScp, store_engine: Engine, certs: Certificates, tmp_path: Path
) -> None:
    port = _tls_port(tls_scp)
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
    stalled[0].sendall(b"\x16\x03\x01\x00\x40")  # the start of a ClientHello, then nothing
    try:
        time.sleep(0.3)
        path, uid = _file(tmp_path, 4)
        result, took = _storescu(
            port, path, *storescu_tls_args(certs.client_key, certs.client_cert, certs.ca)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert took < NOT_DELAYED_S, f"TLS storescu took {took:.1f} s"
        assert _stored(store_engine) == {uid}
    finally:
        for sock in stalled:
            sock.close()


def test_tls_settings_are_checked(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_ca_certificates is required"):
        DicomSettings(
            tls_port=2762, tls_certificate=certs.server_cert, tls_private_key=certs.server_key
        )
    with pytest.raises(ValueError, match="must differ"):
        DicomSettings(port=2762, tls_port=2762)
    mismatched = DicomSettings(
        tls_port=2762,
        tls_certificate=certs.server_cert,
        tls_private_key=certs.client_key,
        tls_ca_certificates=certs.ca,
    )
    with pytest.raises(ConfigError):
        server_context(mismatched)
