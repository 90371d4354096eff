"""Alembic environment: migrate the connection that dicomnode hands over.

:mod:`dicomnode.store.migrate` opens the transaction (and on PostgreSQL takes an
advisory lock) and puts the connection in ``config.attributes["connection"]``;
every migration then runs inside that one transaction.
"""

from __future__ import annotations

from alembic import context

from dicomnode.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "dicomnode migrations run on a live connection: use `dicomnode db upgrade` "
        "(or start the node), not the alembic command line"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # ALTERs that SQLite lacks become table rebuilds
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
