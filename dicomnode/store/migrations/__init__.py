"""Alembic migrations of the queue schema (``env.py``, ``versions/``).

Run through :mod:`dicomnode.store.migrate` (engine start-up, ``dicomnode db``),
never through an ``alembic.ini``: the connection is handed over in
``config.attributes["connection"]``.
"""
