"""The ``dicomnode`` command line (Typer)."""

from dicomnode.cli.main import app as app

__all__ = ["app"]
