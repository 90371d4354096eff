"""Schema migrations: bring a queue database to the head revision (Alembic).

The queue schema changes only through the scripts in
``dicomnode/store/migrations/versions``; :func:`upgrade_to_head` runs at every
engine start-up (:func:`dicomnode.store.db.make_engine`):

- a new, empty database gets the schema from the migrations;
- a database made before migrations existed (tables, no ``alembic_version``) is
  stamped as :data:`BASELINE_REVISION` (today's schema), then upgraded;
- a database already at head is left alone.

All of it happens in one transaction. On PostgreSQL a transaction-scoped advisory
lock makes processes that start together (receiver, workers) migrate one after
the other; on SQLite ``BEGIN IMMEDIATE`` does the same. Alembic is configured in
code (no ``alembic.ini``).
"""

from __future__ import annotations

import logging
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from dicomnode.errors import StorageError
from dicomnode.store.models import Base

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision equal to the schema that ``Base.metadata.create_all`` made before migrations.
BASELINE_REVISION = "0001"
#: Key of the PostgreSQL advisory lock held while migrating (ASCII "dcmn").
_PG_LOCK_KEY = 0x64636D6E


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for our migrations, bound to ``connection`` (for env.py)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision of the migration scripts.

    Raises:
        StorageError: the scripts have several heads (two branches each added a
            migration; merge them with ``alembic merge`` before release).
    """
    heads = _scripts().get_heads()
    if len(heads) != 1:
        raise StorageError(f"the schema migrations have {len(heads)} heads {heads}; they need a merge revision")
    return heads[0]


def current_revision(connection: Connection) -> str | None:
    """The revision the database is stamped with (None: not under migrations yet)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> tuple[str | None, str]:
    """Bring the database of ``engine`` to the head revision (see the module docstring).

    Returns:
        (revision before, revision after); equal when nothing had to change.

    Raises:
        StorageError: the database carries a revision this dicomnode does not know
            (a newer dicomnode migrated it), or the scripts have several heads.
    """
    head = head_revision()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        current = current_revision(connection)
        if current == head:
            return current, head
        if current is not None and not _known(current):
            raise StorageError(
                f"the queue database is at schema revision {current}, which this dicomnode does not know "
                f"(its newest is {head}): a newer dicomnode migrated it; upgrade dicomnode here too"
            )
        config = alembic_config(connection)
        if current is None and inspect(connection).has_table("job"):
            logger.info("queue database predates migrations: stamping it as revision %s", BASELINE_REVISION)
            command.stamp(config, BASELINE_REVISION)
            current = BASELINE_REVISION
        command.upgrade(config, "head")
        logger.info("queue database schema upgraded from %s to %s", current or "empty", head)
    return current, head


def _known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def schema_diff(connection: Connection) -> list[Any]:
    """Differences between the database schema and the models (empty: in step).

    Each item is an Alembic autogenerate diff tuple such as ``("add_column", ...)``.
    """
    return list(compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                 Base.metadata))


def new_revision(message: str) -> Path:
    """Write a migration script for the model changes not yet covered by a migration.

    A scratch SQLite database is upgraded to head and compared with the models
    (Alembic autogenerate); the new script gets the next four-digit number.
    Review it (autogenerate misses renames and server defaults) before committing.

    Returns:
        the path of the new script.

    Raises:
        StorageError: the models already match the head revision (nothing to write).
    """
    numbers = [int(rev.revision) for rev in _scripts().walk_revisions() if rev.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory(prefix="dicomnode-revision-") as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'head.sqlite3'}")
        try:
            upgrade_to_head(engine)
            with engine.begin() as connection:
                if not schema_diff(connection):
                    raise StorageError("the models match the newest migration: nothing to write")
                script = command.revision(
                    alembic_config(connection), message=message, autogenerate=True, rev_id=rev_id
                )
        finally:
            engine.dispose()
    _scripts.cache_clear()
    if script is None or isinstance(script, list):
        raise StorageError("alembic wrote no single revision script")
    return Path(script.path)
