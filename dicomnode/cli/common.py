"""What every CLI command shares: the root callback's context, settings loading, failing.

Its own module so that the command modules (``conformance``, ``db``, ``gate``,
``training``) need not import :mod:`dicomnode.cli.main`, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from dicomnode.config import Settings, load_settings
from dicomnode.errors import DicomNodeError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dicomnode.store.pidfile import NodeProcess

__all__ = ["CliContext", "destination_in_effect", "fail", "open_queue", "processes", "settings_in_effect"]


@dataclass(frozen=True)
class CliContext:
    """What the root callback hands to every command."""

    config_file: Path | None


def fail(message: str) -> NoReturn:
    """Print a one-line error on stderr and exit with code 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def settings_in_effect(ctx: typer.Context, overrides: dict[str, Any]) -> Settings:
    """The merged settings (CLI overrides > env > TOML file > defaults); fails on a bad value."""
    cli: CliContext = ctx.obj
    try:
        return load_settings(cli.config_file, overrides)
    except DicomNodeError as exc:
        fail(str(exc))


def open_queue(settings: Settings) -> Engine:
    """The engine of an existing node database; creates nothing (``status``, ``retry``)."""
    from dicomnode.store.db import make_engine
    from dicomnode.store.files import check_data_dir

    store = settings.store
    try:
        exists = check_data_dir(store.data_dir, write=False)
        if store.db_url is None and not exists:
            fail(f"no node database in {store.data_dir} (give --data-dir of a node that has run)")
        return make_engine(store, create=False)
    except DicomNodeError as exc:
        missing = str(exc).startswith("no node database")
        hint = " (give --data-dir of a node that has run)" if missing and store.db_url is None else ""
        fail(f"{exc}{hint}")


def processes(settings: Settings) -> list[NodeProcess]:
    from dicomnode.store import pidfile

    return pidfile.running(settings.store.data_dir)


def destination_in_effect(settings: Settings, processes: list[NodeProcess]) -> str | None:
    """Where results go: as the running worker(s) say, else as these settings say."""
    workers = [p for p in processes if p.role != "receiver"]
    if workers:
        return next((p.destination for p in workers if p.destination), None)
    return settings.destination.spec()
