"""``dicomnode conformance``: print or write the DICOM Conformance Statement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicomnode.cli.choices import ConformanceFormat
from dicomnode.cli.common import fail, settings_in_effect
from dicomnode.errors import DicomNodeError


def conformance(
    ctx: typer.Context,
    format: Annotated[
        ConformanceFormat, typer.Option("--format", "-f", help="Output format.", case_sensitive=False)
    ] = ConformanceFormat.MD,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file instead of standard output.", dir_okay=False)
    ] = None,
) -> None:
    """Generate the node's DICOM Conformance Statement from the configuration in effect."""
    from dicomnode.conformance import OutputFormat, generate

    settings = settings_in_effect(ctx, {})
    try:
        text = generate(settings, OutputFormat(format.value))
    except DicomNodeError as exc:
        fail(str(exc))
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(f"wrote {out}", err=True)
