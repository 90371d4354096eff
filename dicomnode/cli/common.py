"""What every CLI command shares: the root callback's context, settings loading, failing.

Its own module so that the command modules (``conformance``, ``db``, ``gate``,
``training``) need not import :mod:`dicomnode.cli.main`, which imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer

from dicomnode.config import Settings, load_settings
from dicomnode.errors import DicomNodeError

__all__ = ["CliContext", "fail", "settings_in_effect"]


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
