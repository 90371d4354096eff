"""The ``dicomnode`` Typer app: serve, status, predict, config show, and the training commands.

Each command is a thin adapter: parse options, call one library function, map
``DicomNodeError`` to a one-line message on stderr and exit code 1. Heavy
libraries are imported inside the commands, so ``dicomnode --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from dicomnode.cli import conformance, gate, training
from dicomnode.config import DestinationSettings, Settings, load_settings
from dicomnode.errors import DicomNodeError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="DICOM-native AI node for chest X-rays (research use, not for diagnosis).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration in effect.")
app.add_typer(config_app, name="config")
app.command("train")(training.train)
app.command("evaluate")(training.evaluate)
app.command("pretrain")(training.pretrain)
app.command("conformance")(conformance.conformance)
app.add_typer(training.models_app, name="models")
app.add_typer(gate.gate_app, name="gate")


@dataclass(frozen=True)
class CliContext:
    """What the root callback hands to every command."""

    config_file: Path | None


def fail(message: str) -> NoReturn:
    """Print a one-line error on stderr and exit with code 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (default: $DICOMNODE_CONFIG).", envvar="DICOMNODE_CONFIG"),
    ] = None,
) -> None:
    """dicomnode: receive chest radiographs over DICOM, infer in batches, send SC + SR back."""
    ctx.obj = CliContext(config_file=config)


def _settings(ctx: typer.Context, overrides: dict[str, Any]) -> Settings:
    cli: CliContext = ctx.obj
    try:
        return load_settings(cli.config_file, overrides)
    except DicomNodeError as exc:
        fail(str(exc))


def _destination(spec: str | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    try:
        return DestinationSettings.parse(spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--destination") from exc


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (127.0.0.1, ::1, 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="DICOM port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Our AE title.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data folder (files + SQLite queue).")] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL (default: SQLite in the data folder).")] = None,
    destination: Annotated[
        str | None, typer.Option(help="Where results go: AET@HOST:PORT (none: results stay in the outbox).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (models/<name>) or path to a manifest.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    stable_after: Annotated[float | None, typer.Option("--stable-after", help="Seconds of quiet before a study is processed.")] = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between batch runs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Studies claimed per batch run.")] = None,
    explain: Annotated[str | None, typer.Option(help="Grad-CAM for 'all' images or only 'positive' ones.")] = None,
    allowed_calling_aets: Annotated[
        str | None, typer.Option("--allowed-calling-aets", help="Comma-separated calling AE titles allowed (empty: any).")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR.")] = None,
    role: Annotated[
        str, typer.Option(help="all | receiver (DICOM port only) | worker (batches and sending only).")
    ] = "all",
    receivers: Annotated[
        int | None,
        typer.Option("--receivers", min=0, help="Processes receiving on the DICOM port (0: CPU count, at most 4)."),
    ] = None,
) -> None:
    """Receive studies over DICOM, run batch inference, send results back. Stops on SIGTERM/SIGINT."""
    from dicomnode import logconfig
    from dicomnode.node import ROLES, serve_forever

    if role not in ROLES:
        raise typer.BadParameter(f"must be one of {', '.join(ROLES)}", param_hint="--role")
    settings = _settings(
        ctx,
        {
            "dicom": {"bind_address": host, "port": port, "ae_title": ae_title, "allowed_calling_aets": allowed_calling_aets,
                      "receiver_processes": receivers},
            "store": {"data_dir": data_dir, "db_url": db_url},
            "destination": _destination(destination),
            "model": {"name": model, "device": device, "explain": explain},
            "scheduler": {"stable_after_s": stable_after, "interval_s": interval, "batch_size": batch_size},
            "log_level": log_level.upper() if log_level else None,
        },
    )
    logconfig.configure(settings.log_level)
    try:
        serve_forever(settings, role)
    except DicomNodeError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {settings.dicom.bind_address}:{settings.dicom.port}: {exc.strerror or exc}")


@app.command()
def status(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data folder of the node.")] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL of the queue.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
) -> None:
    """Counts per state, results waiting to be sent (and why), recent failures and skips."""
    from dicomnode.store.db import make_engine, make_sessionmaker
    from dicomnode.store.queue import status_summary

    settings = _settings(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    if settings.store.db_url is None and not (settings.store.data_dir / "dicomnode.sqlite3").exists():
        fail(f"no node database in {settings.store.data_dir} (give --data-dir of a node that has run)")
    engine = make_engine(settings.store)
    try:
        with make_sessionmaker(engine)() as session:
            summary = status_summary(session)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(asdict(summary), default=str))
        return
    typer.echo("jobs:      " + _fmt_counts(summary.jobs))
    typer.echo("instances: " + _fmt_counts(summary.instances))
    typer.echo("results:   " + _fmt_counts(summary.results))
    if summary.pending_sends:
        typer.echo("waiting to be sent:")
        for item in summary.pending_sends:
            why = f" last error: {item['last_error']}" if item["last_error"] else ""
            typer.echo(f"  job {item['job_id']} {item['kind']} {item['sop_instance_uid']} attempts={item['attempts']} "
                       f"next={item['next_attempt_at']}{why}")
    if summary.recent_failures:
        typer.echo("recent failures:")
        for item in summary.recent_failures:
            typer.echo(f"  {item['what']} job {item['job_id']} attempts={item['attempts']}: {item['error']}")
    if summary.recent_skips:
        typer.echo("recently skipped instances:")
        for item in summary.recent_skips:
            typer.echo(f"  {item['sop_instance_uid']}: {item['reason']}")


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"


@app.command()
def predict(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="DICOM files of one or more studies.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for the SC and SR files.")],
    model: Annotated[str | None, typer.Option(help="Model name or manifest path.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    explain: Annotated[str | None, typer.Option(help="Grad-CAM for 'all' images or only 'positive' ones.")] = None,
) -> None:
    """Run the serving pipeline offline on files: writes one SC per image and one SR per study."""
    from dicomnode.node import load_runner
    from dicomnode.pipeline import PipelineOptions, analyse_files

    settings = _settings(ctx, {"model": {"name": model, "device": device, "explain": explain}})
    try:
        runner = load_runner(settings)
        options = PipelineOptions(settings.outputs, settings.model.batch_size, settings.model.explain)
        written = analyse_files(files, runner, options, out)
    except DicomNodeError as exc:
        fail(str(exc))
    for study_uid, paths in written.items():
        typer.echo(f"study {study_uid}:")
        for path in paths:
            typer.echo(f"  {path}")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the merged settings (file + environment + defaults) as JSON."""
    settings = _settings(ctx, {})
    typer.echo(settings.model_dump_json(indent=2))
