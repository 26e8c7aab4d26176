"""``partguard maintain``: one line per table on stdout (journald keeps them), Nagios exit code."""

from __future__ import annotations

import click

from ..commands import retention
from ..commands.maintain import MaintainOptions, MaintainReport, maintain
from ..config import load
from ..db import ConnParams, connect, parse_duration
from .common import attempt_duration, connection_options, emit_json, format_option


@click.command("maintain")
@connection_options
@click.option(
    "--table",
    "-t",
    "tables",
    multiple=True,
    help="Maintain only this table (repeatable). Default: every pg_partman table with "
    "automatic_maintenance on, and every table in --config.",
)
@click.option(
    "--retry-for",
    default="10m",
    show_default=True,
    help="Keep retrying refused connections (too many clients, starting up) this long.",
)
@click.option(
    "--lock-timeout",
    default="5s",
    show_default=True,
    help="How long one try asks for a table's locks, in --lock-attempt waits; the table "
    "is then retried, then skipped.",
)
@click.option(
    "--lock-retries",
    type=click.IntRange(0, 100),
    default=2,
    show_default=True,
    help="Tries after one that could not get its locks, each after a longer pause.",
)
@click.option(
    "--lock-attempt",
    default="50ms",
    show_default=True,
    help="Longest single lock wait: what the application's queries can queue behind partguard.",
)
@click.option(
    "--statement-timeout",
    default="10m",
    show_default=True,
    help="Longest a table's maintenance may run.",
)
@click.option(
    "--fix-default",
    is_flag=True,
    help="When a DEFAULT partition holds rows, repair it with partguard fix (moves rows).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="PARTGUARD_CONFIG",
    help="partguard.toml: premaking for tables without pg_partman [env: PARTGUARD_CONFIG].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the SQL maintain would run (premaking, retention, partman calls); change nothing.",
)
@format_option
def command(
    params: ConnParams,
    tables: tuple[str, ...],
    retry_for: str,
    lock_timeout: str,
    lock_retries: int,
    lock_attempt: str,
    statement_timeout: str,
    fix_default: bool,
    config_path: str | None,
    dry_run: bool,
    fmt: str,
) -> int:
    """Run partition maintenance table by table, verify it, and record the run.

    Exit status (Nagios): 0 all tables maintained and healthy (or a hot standby: nothing to
    do), 1 warning, 2 a table failed or a DEFAULT partition holds rows, 3 unknown; 78 through
    a transaction-mode pooler.
    """
    options = MaintainOptions(
        tables=tables,
        retry_for=parse_duration(retry_for),
        lock_timeout=parse_duration(lock_timeout),
        lock_retries=lock_retries,
        lock_attempt=attempt_duration(lock_attempt),
        statement_timeout=parse_duration(statement_timeout),
        fix_default=fix_default,
        config=load(config_path),
    )
    if dry_run:
        with connect(params) as conn:
            click.echo(retention.dry_run(conn, options.config, tables), nl=False)
        return 0
    report = maintain(params, options)
    if fmt == "json":
        emit_json(report)
    else:
        render_text(report)
    return report.status


def render_text(report: MaintainReport) -> None:
    if report.skipped:  # one line: a timer on each node of an HA pair logs it hourly
        click.echo(f"partguard maintain: {report.skipped}")
        return
    for outcome in report.tables:
        click.echo(outcome.line())
    for message in report.messages:
        click.echo(f"partguard: {message}", err=True)
    if not report.tables:
        click.echo(
            "partguard: no table to maintain (no pg_partman config, nothing in --config)", err=True
        )
