"""A throw-away PostgreSQL cluster on loopback for integration tests.

:func:`run_postgres` runs ``initdb`` into a temporary folder, starts the server with
``pg_ctl`` listening only on 127.0.0.1 (on a free port, its unix socket in the same
folder), and stops and removes it afterwards; every wait is bounded.
:meth:`Postgres.create_database` makes a fresh database and returns its
SQLAlchemy URL.

``initdb`` refuses to run as root: as root the cluster belongs to the ``postgres``
user (which Debian's ``postgresql`` package creates) and its commands run as that
user. TCP clients authenticate with a random password (scram-sha-256); the socket
in the private folder trusts local clients.

Binaries are looked up in ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``
(newest first) and ``$PATH``. Without them tests skip locally and fail under
``CI=true`` (see :func:`tests.helpers.require_tool`).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port

#: Bounded waits (seconds).
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 120
_SERVER_USER = "postgres"


def _has_initdb(folder: Path) -> bool:
    return (folder / "initdb").is_file() and (folder / "pg_ctl").is_file()


def _version_key(folder: Path) -> tuple[int, ...]:
    parts = folder.parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is absent."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=False)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    return next((folder for folder in candidates if _has_initdb(folder)), None)


def require_postgres() -> Path:
    """The PostgreSQL server binaries' folder and the psycopg driver; skips (fails in CI) when absent."""
    bindir = find_bindir()
    problem = None
    if bindir is None:
        problem = "PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "the PostgreSQL driver is not installed (pip install .[postgres])"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert bindir is not None
    return bindir


@dataclass
class Postgres:
    """A running throw-away cluster on ``127.0.0.1:port``."""

    bindir: Path
    folder: Path
    port: int
    password: str
    log: Path
    _counter: list[int] = field(default_factory=lambda: [0])

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database`` over TCP."""
        return f"postgresql+psycopg://{_SERVER_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "dicomnode") -> str:
        """Create an empty database; returns its SQLAlchemy URL."""
        self._counter[0] += 1
        name = f"{prefix}_{self._counter[0]}"
        _run([str(self.bindir / "createdb"), "-h", str(self.folder), "-p", str(self.port), "-U", _SERVER_USER, name],
             self.folder)  # fmt: skip
        return self.url(name)


def _server_user() -> pwd.struct_passwd | None:
    """The account the cluster runs as when we are root (initdb refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVER_USER)
    except KeyError:
        pytest.fail(f"running as root needs a '{_SERVER_USER}' user for initdb (apt-get install postgresql creates it)")


def _as_server_user() -> dict[str, Any]:
    """subprocess keywords that run a command as the server user (when we are root)."""
    entry = _server_user()
    if entry is None:
        return {}
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": dict(os.environ, HOME=entry.pw_dir)}


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False, **_as_server_user()
    )
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}): {result.stdout}{result.stderr}")


@contextmanager
def run_postgres() -> Iterator[Postgres]:
    """Start a private PostgreSQL cluster on 127.0.0.1 until the block ends, then remove it."""
    bindir = require_postgres()
    # Not under pytest's tmp_path: its root folder is private to us and the server user must enter.
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
    started = False
    try:
        password = secrets.token_hex(16)
        pwfile = folder / "pwfile"
        pwfile.write_text(password + "\n")
        data = folder / "data"
        log = folder / "server.log"
        entry = _server_user()
        if entry is not None:
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        _run([str(bindir / "initdb"), "-D", str(data), "-U", _SERVER_USER, f"--pwfile={pwfile}", "-E", "UTF8",
              "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"], folder)  # fmt: skip
        port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")  # fmt: skip
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(START_TIMEOUT_S),
              "start"], folder)  # fmt: skip
        started = True
        yield Postgres(bindir, folder, port, password, log)
    finally:
        if started:
            try:
                _run([str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S),
                      "stop"], folder)  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired):
                _run([str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "-t",
                      str(STOP_TIMEOUT_S), "stop"], folder)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
