"""The ``dicomnode`` Typer app: serve, status, retry, results, reprocess, purge, predict, config show, training.

Each command is a thin adapter: parse options, call one library function, map
``DicomNodeError`` to a one-line message on stderr and exit code 1. Heavy
libraries are imported inside the commands, so ``dicomnode --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from dicomnode import __version__
from dicomnode.cli import conformance, gate, operations, training
from dicomnode.cli.choices import ExplainMode, LogLevel, Role
from dicomnode.cli.common import CliContext, fail, settings_in_effect
from dicomnode.cli.common import destination_in_effect as _destination_in_effect
from dicomnode.cli.common import open_queue as _open_queue
from dicomnode.cli.common import processes as _processes
from dicomnode.cli.db import db_app
from dicomnode.config import DestinationSettings, Settings
from dicomnode.errors import DicomNodeError

if TYPE_CHECKING:
    from dicomnode.store.pidfile import NodeProcess

#: Root options also accepted after the subcommand (``dicomnode serve --config node.toml``).
_ROOT_VALUE_OPTIONS = ("--config", "-c")


def hoist_root_options(args: list[str]) -> list[str]:
    """Move ``--config FILE`` / ``-c FILE`` / ``--config=FILE`` in front of the subcommand.

    Click parses a group's options only before the subcommand's name; users put
    ``--config`` where they put every other option. No subcommand has an option of
    these names. Arguments after ``--`` are left alone.
    """
    hoisted: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest.extend(args[index:])
            break
        if arg in _ROOT_VALUE_OPTIONS and index + 1 < len(args):
            hoisted.extend(args[index : index + 2])
            index += 2
            continue
        if arg.startswith("--config="):
            hoisted.append(arg)
        else:
            rest.append(arg)
        index += 1
    return hoisted + rest


class _RootGroup(TyperGroup):
    """The root command group; see :func:`hoist_root_options`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: the (vendored) click.Context
        return super().parse_args(ctx, hoist_root_options(args))


app = typer.Typer(
    cls=_RootGroup,
    no_args_is_help=True,
    add_completion=False,
    help="DICOM-native AI node for chest X-rays (research use, not for diagnosis).",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration in effect.")
app.add_typer(config_app, name="config")
app.command("train")(training.train)
app.command("evaluate")(training.evaluate)
app.command("pretrain")(training.pretrain)
app.command("calibrate")(training.calibrate)
app.command("site-threshold")(training.site_threshold)
app.command("conformance")(conformance.conformance)
app.command("results")(operations.results)
app.command("reprocess")(operations.reprocess)
app.command("purge")(operations.purge)
app.add_typer(training.models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(gate.gate_app, name="gate")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dicomnode {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML settings file (default: $DICOMNODE_CONFIG); also accepted after the command.",
            envvar="DICOMNODE_CONFIG",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """dicomnode: receive chest radiographs over DICOM, infer in batches, send SC + SR back."""
    ctx.obj = CliContext(config_file=config)


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
    explain: Annotated[
        ExplainMode | None, typer.Option(help="Grad-CAM for all images or only positive ones.", case_sensitive=False)
    ] = None,
    allowed_calling_aets: Annotated[
        str | None, typer.Option("--allowed-calling-aets", help="Comma-separated calling AE titles allowed (empty: any).")
    ] = None,
    log_level: Annotated[LogLevel | None, typer.Option("--log-level", case_sensitive=False)] = None,
    role: Annotated[
        Role, typer.Option(help="all (both), receiver (DICOM port only) or worker (batches and sending only).")
    ] = Role.ALL,
    receivers: Annotated[
        int | None,
        typer.Option("--receivers", min=0, help="Processes receiving on the DICOM port (0: CPU count, at most 4)."),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option("--http-port", help="Serve the web page, /api and /metrics on this port (same --host)."),
    ] = None,
) -> None:
    """Receive studies over DICOM, run batch inference, send results back. Stops on SIGTERM/SIGINT."""
    from dicomnode import logconfig
    from dicomnode.node import preflight, serve_forever

    settings = settings_in_effect(
        ctx,
        {
            "dicom": {"bind_address": host, "port": port, "ae_title": ae_title, "allowed_calling_aets": allowed_calling_aets,
                      "receiver_processes": receivers},
            "store": {"data_dir": data_dir, "db_url": db_url},
            "destination": _destination(destination),
            "model": {"name": model, "device": device, "explain": explain.value if explain else None},
            "scheduler": {"stable_after_s": stable_after, "interval_s": interval, "batch_size": batch_size},
            "http": {"port": http_port},
            "log_level": log_level.value if log_level else None,
        },
    )
    try:
        preflight(settings, role.value)
    except DicomNodeError as exc:
        fail(str(exc))
    logconfig.configure(settings.log_level)
    try:
        serve_forever(settings, role.value)
    except DicomNodeError as exc:
        fail(str(exc))
    except OSError as exc:
        where = getattr(exc, "filename", None) or f"{settings.dicom.bind_address}:{settings.dicom.port}"
        fail(f"cannot listen on {where}: {exc.strerror or exc}")


def _describe_processes(settings: Settings, processes: list[NodeProcess]) -> str:
    if not processes:
        return f"not running on {settings.store.data_dir}"
    parts = []
    for proc in processes:
        sends = f", sends to {proc.destination}" if proc.destination else ""
        parts.append(f"pid {proc.pid} role {proc.role} since {proc.started_at}{sends}")
    return "running (" + "; ".join(parts) + ")"


@app.command()
def status(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data folder of the node.")] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL of the queue.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
) -> None:
    """Whether a node runs, low disk, counts per state, results waiting to be sent (and why), failures, skips.

    Reads the database only: a missing one is reported, not created.
    """
    from dicomnode.store.db import make_sessionmaker
    from dicomnode.store.duplicates import read_duplicates
    from dicomnode.store.files import RESULTS_AREA
    from dicomnode.store.queue import status_summary
    from dicomnode.store.space import low_disk

    settings = settings_in_effect(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    engine = _open_queue(settings)
    try:
        with make_sessionmaker(engine)() as session:
            summary = status_summary(session)
    finally:
        engine.dispose()
    processes = _processes(settings)
    destination = _destination_in_effect(settings, processes)
    duplicates = read_duplicates(settings.store.data_dir)
    summary = replace(summary, duplicates=asdict(duplicates))
    disk = low_disk(settings.store.data_dir, settings.store.min_free_bytes)
    if as_json:
        node = {"running": bool(processes), "processes": [asdict(p) for p in processes]}
        typer.echo(json.dumps({**asdict(summary), "node": node, "destination": destination, "disk_problem": disk},
                              default=str))
        return
    typer.echo("node:      " + _describe_processes(settings, processes))
    if disk is not None:
        typer.echo("disk:      " + disk)
    typer.echo("jobs:      " + _fmt_counts(summary.jobs))
    typer.echo("instances: " + _fmt_counts(summary.instances))
    typer.echo("results:   " + _fmt_counts(summary.results))
    unsent = summary.results.get("pending", 0)
    if unsent and destination is None:
        whose = "the running node has" if any(p.role != "receiver" for p in processes) else "these settings have"
        typer.echo(f"not sent: {whose} no destination; {unsent} result(s) stay in "
                   f"{settings.store.data_dir / RESULTS_AREA}/ (serve --destination AET@HOST:PORT sends them)")
    elif summary.pending_sends:
        typer.echo(f"waiting to be sent to {destination}:")
        for item in summary.pending_sends:
            why = f" last error: {item['last_error']}" if item["last_error"] else ""
            typer.echo(f"  job {item['job_id']} {item['kind']} {item['sop_instance_uid']} attempts={item['attempts']} "
                       f"next={item['next_attempt_at']}{why}")
    if summary.recent_failures:
        typer.echo("recent failures (dicomnode retry re-queues them):")
        for item in summary.recent_failures:
            typer.echo(f"  {item['what']} job {item['job_id']} attempts={item['attempts']}: {item['error']}")
    if duplicates.identical or duplicates.conflicting:
        last = f" (last {duplicates.last_conflicting_at} UTC)" if duplicates.conflicting else ""
        typer.echo(f"duplicates: {duplicates.identical} identical, "
                   f"{duplicates.conflicting} with DIFFERENT content{last}; the first copy was kept")
    if summary.skipped_studies:
        typer.echo("recently skipped studies (no result):")
        for item in summary.skipped_studies:
            typer.echo(f"  job {item['job_id']} {item['study_instance_uid']}: {item['reason']}")
    if summary.recent_skips:
        typer.echo("recently skipped instances:")
        for item in summary.recent_skips:
            typer.echo(f"  {item['sop_instance_uid']}: {item['reason']}")


@app.command()
def retry(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data folder of the node.")] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="SQLAlchemy URL of the queue.")] = None,
) -> None:
    """Failed jobs back to ready, failed or backed-off sends due now. Safe while a node runs."""
    from dicomnode.store.db import make_sessionmaker
    from dicomnode.store.files import RESULTS_AREA
    from dicomnode.store.queue import retry_failed, utcnow

    settings = settings_in_effect(ctx, {"store": {"data_dir": data_dir, "db_url": db_url}})
    engine = _open_queue(settings)
    try:
        with make_sessionmaker(engine).begin() as session:
            report = retry_failed(session, now=utcnow())
    finally:
        engine.dispose()
    sends = report.failed_sends + report.pending_sends
    if not report.jobs and not sends:
        typer.echo("nothing to retry: no failed job, no failed or waiting send")
        return
    if report.jobs:
        typer.echo(f"re-queued {len(report.jobs)} failed job(s):")
        for job_id, study_uid in report.jobs:
            typer.echo(f"  job {job_id} study {study_uid}")
    if sends:
        typer.echo(f"{sends} send(s) due now ({report.failed_sends} failed, {report.pending_sends} waiting for a retry)")
    processes = _processes(settings)
    if sends and _destination_in_effect(settings, processes) is None:
        typer.echo(f"note: no destination configured; results stay in {settings.store.data_dir / RESULTS_AREA}/")
    if not any(p.role != "receiver" for p in processes):
        typer.echo(f"note: no node worker is running on {settings.store.data_dir}; "
                   "the re-queued work starts when dicomnode serve runs")


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"


@app.command()
def predict(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="DICOM files of one or more studies.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder for the SC and SR files.")],
    model: Annotated[str | None, typer.Option(help="Model name or manifest path.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    explain: Annotated[
        ExplainMode | None, typer.Option(help="Grad-CAM for all images or only positive ones.", case_sensitive=False)
    ] = None,
) -> None:
    """Run serve's pipeline offline on files: same acceptance rules, one line per file, SC + SR into --out.

    Each line: the file name, then the decision and probability per finding, or
    "not assessed: <reason>". Exit code 1 only when no file could be read as DICOM.
    """
    from dicomnode import logconfig
    from dicomnode.inference.loading import load_runner
    from dicomnode.pipeline import PipelineOptions, analyse_files

    settings = settings_in_effect(
        ctx, {"model": {"name": model, "device": device, "explain": explain.value if explain else None}}
    )
    # Library warnings pass the PHI guard; the per-file lines are the output, so INFO
    # chatter (model loaded, ...) is left out unless DEBUG is asked for.
    logconfig.configure(settings.log_level if settings.log_level == "DEBUG" else "WARNING")
    try:
        runner = load_runner(settings.model)
        options = PipelineOptions(
            settings.outputs, settings.model.batch_size, settings.model.explain, settings.model.out_of_population
        )
        report = analyse_files(files, runner, options, out)
    except DicomNodeError as exc:
        fail(str(exc))
    for line in report.lines:
        typer.echo(f"{line.name}: {line.text}")
    written = sum(len(paths) for paths in report.written.values())
    typer.echo(f"{written} result file(s) written to {out}")
    if report.processed == 0:
        fail("no input file could be read as DICOM")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the merged settings (file + environment + defaults) as JSON; secrets redacted."""
    settings = settings_in_effect(ctx, {})
    shown = settings.model_dump(mode="json")
    if settings.http.token is not None:
        shown["http"]["token"] = "<redacted>"
    typer.echo(json.dumps(shown, indent=2))
