"""``dicomnode db``: the queue database's schema revision, upgrade, and new migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.common import fail, settings_in_effect
from dicomnode.errors import DicomNodeError

db_app = typer.Typer(no_args_is_help=True, help="Queue database schema (Alembic migrations).")


@db_app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data folder (SQLite queue).")] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL of the queue.")] = None,
) -> None:
    """Bring the queue database to the newest schema revision (every node start does the same)."""
    from dicomnode.store.db import make_engine
    from dicomnode.store.migrate import current_revision

    settings = settings_in_effect(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    try:
        engine = make_engine(settings.store)  # upgrades on start-up
    except DicomNodeError as exc:
        fail(str(exc))
    try:
        with engine.connect() as connection:
            revision = current_revision(connection)
    finally:
        engine.dispose()
    typer.echo(f"schema revision: {revision}")


@db_app.command("revision")
def revision(
    message: Annotated[str, typer.Argument(help="What the schema change does, e.g. 'add job.priority'.")],
) -> None:
    """(Developers) write a migration for the model changes in dicomnode/store/models.py."""
    from dicomnode.store.migrate import new_revision

    try:
        path = new_revision(message)
    except DicomNodeError as exc:
        fail(str(exc))
    typer.echo(f"wrote {path}: review it, then commit it with the model change")
