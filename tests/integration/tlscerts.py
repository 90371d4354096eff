"""Throwaway certificates for DICOM TLS tests, made with the openssl command line.

Two independent CAs: ``ca`` signs the node's server certificate and a trusted
client certificate; ``rogue_ca`` signs a client certificate the node must refuse.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_tool


@dataclass(frozen=True)
class Certificates:
    """PEM files: CA, node (server) and client certificates with their keys."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-subj", f"/CN=dicomnode test {name}", "-keyout", str(key), "-out", str(cert),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return cert, key


def _make_leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
             cwd=folder)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-sha256", "-days", "2", "-extfile", str(ext), "-out", str(cert),
        cwd=folder,
    )  # fmt: skip
    return cert, key


def make_certificates(folder: Path) -> Certificates:
    """Create the CAs, the node's certificate and two client certificates in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(folder, "ca")
    rogue = _make_ca(folder, "rogue-ca")
    server = _make_leaf(folder, "dicomnode", ca, "serverAuth")
    client = _make_leaf(folder, "modality", ca, "clientAuth")
    rogue_client = _make_leaf(folder, "intruder", rogue, "clientAuth")
    return Certificates(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        rogue_client_cert=rogue_client[0],
        rogue_client_key=rogue_client[1],
    )


def storescu_tls_args(key: Path, cert: Path, ca: Path) -> list[str]:
    """DCMTK storescu/echoscu options for mutual TLS (BCP 195 non-downgrading profile)."""
    return ["+tls", str(key), str(cert), "-pw", "+cf", str(ca), "+py"]
