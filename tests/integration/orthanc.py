"""A real Orthanc (Debian package, ``/usr/sbin/Orthanc``) on loopback for integration tests.

:func:`run_orthanc` writes a temporary JSON configuration, starts Orthanc, waits until
its REST API answers ``GET /system`` and stops it again (bounded waits). The returned
:class:`Orthanc` carries small REST helpers written with ``urllib`` only.

Binding: Orthanc 1.10 has no bind-address option; both servers listen on every
interface. ``"RemoteAccessAllowed": false`` makes the HTTP server refuse any client
that is not on loopback, and ``"DicomAlwaysAllowStore"`` / ``"DicomCheckModalityHost"``
restrict DICOM peers to the registered modalities when a test asks for it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port, require_tool

ORTHANC_BINARY = "/usr/sbin/Orthanc"
#: Bounded waits (seconds).
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Modality:
    """A DICOM peer registered in Orthanc's ``DicomModalities`` (e.g. the node).

    Attributes:
        ae_title: the peer's AE title.
        port: its DICOM port on 127.0.0.1.
        allow_store: False: Orthanc refuses C-STORE from this AE (with
            ``DicomAlwaysAllowStore`` false, which :func:`run_orthanc` then sets).
    """

    ae_title: str
    port: int
    allow_store: bool = True

    def config(self) -> dict[str, Any]:
        return {
            "AET": self.ae_title,
            "Host": "127.0.0.1",
            "Port": self.port,
            "AllowStore": self.allow_store,
            "AllowEcho": True,
        }


@dataclass
class Orthanc:
    """A running Orthanc and its REST API on ``http://127.0.0.1:<http_port>``."""

    ae_title: str
    dicom_port: int
    http_port: int
    folder: Path
    log: Path
    process: subprocess.Popen[bytes]
    modalities: dict[str, Modality] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def spec(self) -> str:
        """``AET@127.0.0.1:PORT``, the node's ``--destination`` for this Orthanc."""
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    # --- raw HTTP -------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> bytes:
        """One HTTP request to the REST API; returns the body.

        Raises:
            urllib.error.HTTPError: Orthanc answered 4xx/5xx (the error body is in the message).
        """
        headers = {"Content-Type": content_type} if body is not None else {}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise urllib.error.HTTPError(exc.url, exc.code, f"{exc.msg}: {detail}", exc.headers, None) from exc

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        answer = self.request("POST", path, json.dumps(payload).encode("utf-8"))
        return json.loads(answer) if answer.strip() else None

    # --- helpers the tests use ------------------------------------------------------

    def upload(self, path: Path) -> dict[str, Any]:
        """``POST /instances`` with a Part-10 file; returns Orthanc's answer (ID, ParentStudy, Status)."""
        answer = json.loads(self.request("POST", "/instances", path.read_bytes(), "application/dicom"))
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc did not store {path.name}: {answer}")
        return dict(answer)

    def store_to_modality(self, modality: str, resources: list[str]) -> Any:
        """``POST /modalities/<modality>/store`` (synchronous C-STORE of Orthanc resource IDs).

        Raises:
            urllib.error.HTTPError: the push failed (association refused, peer failure status).
        """
        return self.post_json(f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True})

    def find_study(self, study_instance_uid: str) -> str | None:
        """Orthanc's study ID for a StudyInstanceUID, or None when it holds no such study."""
        hits = json.loads(self.request("POST", "/tools/lookup", study_instance_uid.encode("ascii"), "text/plain"))
        for hit in hits or []:
            if hit.get("Type") == "Study":
                return str(hit["ID"])
        return None

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """Every instance of a study, each with its ``simplified-tags`` under ``"Tags"``."""
        instances = self.get_json(f"/studies/{study_id}/instances")
        for instance in instances:
            instance["Tags"] = self.get_json(f"/instances/{instance['ID']}/simplified-tags")
        return list(instances)

    def download(self, instance_id: str) -> bytes:
        """``GET /instances/<id>/file``: the stored Part-10 file."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])


def orthanc_config(
    folder: Path,
    *,
    ae_title: str,
    dicom_port: int,
    http_port: int,
    modalities: Mapping[str, Modality],
) -> dict[str, Any]:
    """The temporary JSON configuration (option names of Orthanc 1.10)."""
    restrict_store = any(not m.allow_store for m in modalities.values())
    return {
        "Name": "dicomnode-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "WebDavEnabled": False,
        "Plugins": [],
        "DicomModalities": {name: m.config() for name, m in modalities.items()},
        "DicomModalitiesInDatabase": False,
        "DicomAlwaysAllowEcho": True,
        # False only when a test registers a modality that must not store.
        "DicomAlwaysAllowStore": not restrict_store,
        "DicomCheckModalityHost": restrict_store,
        "DicomScuTimeout": 15,
        "DicomScpTimeout": 30,
        "SaveJobs": False,
        "StableAge": 2,
        "HttpTimeout": 30,
        "DeidentifyLogs": True,
    }


#: Options a test Orthanc always takes from :func:`orthanc_config`, whatever ``extra_config`` says.
_TEST_OWNED_OPTIONS = frozenset(
    {
        "DicomAet", "DicomPort", "HttpPort", "StorageDirectory", "IndexDirectory", "DicomModalities",
        "RemoteAccessAllowed", "AuthenticationEnabled", "SslEnabled", "Plugins", "Name",
    }
)


@contextmanager
def run_orthanc(
    folder: Path,
    *,
    ae_title: str = "ORTHANC",
    dicom_port: int | None = None,
    http_port: int | None = None,
    modalities: Mapping[str, Modality] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    log_name: str = "orthanc.log",
) -> Iterator[Orthanc]:
    """Run Orthanc on 127.0.0.1 until the block ends.

    The storage folder survives the block, so starting again with the same ``folder``
    and ports brings back the same Orthanc (used for "PACS down, then up again").

    Args:
        folder: working folder (configuration, storage, log).
        ae_title: Orthanc's AE title.
        dicom_port: DICOM port; None = a free one.
        http_port: REST port; None = a free one.
        modalities: registered DICOM peers by Orthanc name (``/modalities/<name>``).
        extra_config: further top-level options (e.g. ``"LuaScripts"``); they replace the
            generated ones of the same name, except ports, folders and modalities.
        log_name: log file name under ``folder``.

    Raises:
        TimeoutError: the REST API did not answer within :data:`START_TIMEOUT_S`.
        RuntimeError: Orthanc exited during start-up (the log is in the message).
    """
    binary = require_tool("Orthanc", ORTHANC_BINARY)
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    registered = dict(modalities or {})
    settings = {**dict(extra_config or {}), **orthanc_config(
        folder, ae_title=ae_title, dicom_port=dicom_port, http_port=http_port, modalities=registered
    )}
    for key, value in (extra_config or {}).items():
        if key not in _TEST_OWNED_OPTIONS:
            settings[key] = value
    config = folder / "orthanc.json"
    config.write_text(json.dumps(settings, indent=2))
    log = folder / log_name
    with log.open("ab") as handle:
        process = subprocess.Popen([binary, str(config)], stdout=handle, stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(ae_title, dicom_port, http_port, folder, log, process, registered)
    try:
        _wait_until_answers(server)
        yield server
    finally:
        stop_orthanc(server)


def _wait_until_answers(server: Orthanc) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            system = server.get_json("/system")
            if system.get("DicomPort") == server.dicom_port:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"Orthanc REST API did not answer within {START_TIMEOUT_S} s:\n{server.log.read_text()}")


def stop_orthanc(server: Orthanc) -> None:
    """SIGTERM, wait :data:`STOP_TIMEOUT_S`, then SIGKILL (idempotent)."""
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
