"""``partguard check``: render a CheckReport as a table (text) or a stable JSON document.

The exit code is the report's Nagios status, so the command doubles as a monitoring plugin.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from ..commands.check import CheckReport, TableSummary, check
from ..db import ConnParams, connect
from ..guards import warn_if_pooled
from ..humanize import fmt_delta
from ..inspect.snapshot import Options, zone_label
from .common import connection_options, emit_json, force_interval_option, format_option, jsonable

# A check waits at most this long behind a DDL lock instead of queueing forever (each
# table's own rows: 1 s, then that table is reported `locked`, see inspect.snapshot).
LOCK_TIMEOUT = "10s"

_STYLE = {
    "ok": "green",
    "info": "cyan",
    "warning": "yellow",
    "critical": "bold red",
    "unknown": "magenta",
}


@click.command("check")
@connection_options
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    metavar="TABLE",
    help="Check only this table (schema.table; repeatable). Default: every "
    "range-partitioned table.",
)
@click.option("--exact", is_flag=True, help="Count the DEFAULT's rows exactly (a full scan).")
@click.option(
    "--interval",
    help="Partition interval where partman and the children do not tell it (e.g. '1 day', "
    "'monthly', 100000); one that contradicts them is refused.",
)
@click.option(
    "--tz",
    help="Time zone of the grid, overriding the session's (e.g. Europe/Berlin); "
    "on a partman table one that contradicts partman's is refused.",
)
@click.option(
    "--force-tz", is_flag=True, help="Judge a partman table in --tz even where partman's differs."
)
@force_interval_option
@format_option
def command(
    params: ConnParams,
    tables: tuple[str, ...],
    exact: bool,
    interval: str | None,
    tz: str | None,
    force_tz: bool,
    force_interval: bool,
    fmt: str,
) -> int:
    """Find what is wrong with range-partitioned tables, read-only.

    Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios).
    """
    options = Options(
        tables=tables,
        interval=interval,
        tz=tz,
        exact=exact,
        force_tz=force_tz,
        force_interval=force_interval,
        connection=params,
    )
    with connect(params) as conn:
        warn_if_pooled(conn, params, "check")
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
        result = check(conn, options)
    if fmt == "json":
        emit_json(as_json(result))
    else:
        render_text(result, Console(file=sys.stdout, highlight=False))
    return result.status


def as_json(result: CheckReport) -> dict[str, Any]:
    """The JSON document documented in the README; keys are only ever added, never
    renamed or removed, so monitoring scripts keep working."""
    return {
        "status": result.status_name,
        "exit_code": result.status,
        "server": jsonable(result.server),
        "tables": [jsonable(t) for t in result.tables],
        "findings": [
            {
                "code": f.code,
                "severity": f.severity.value,
                "table": f.table,
                "message": f.message,
                "detail": jsonable(f.detail),
            }
            for f in result.findings
        ],
    }


def headline(result: CheckReport) -> str:
    counts: dict[str, int] = {}
    for f in result.findings:
        counts[f.severity.value] = counts.get(f.severity.value, 0) + 1
    tally = ", ".join(
        f"{n} {sev}" for sev in ("critical", "unknown", "warning", "info") if (n := counts.get(sev))
    )
    s = result.server
    partman = f", pg_partman {s.partman_version}" if s.partman_version else ", no pg_partman"
    standby = "; a hot standby (in recovery, read-only)" if s.in_recovery else ""
    n = len(result.tables)
    return (
        f"partguard check {result.status_name.upper()}: {n} table{'' if n == 1 else 's'}"
        f"{'; ' + tally if tally else ''} (database {s.database}, PostgreSQL {s.version}"
        f"{partman}; connections {s.used}/{s.available}{standby})"
    )


_COLUMNS = ("table", "key", "interval", "zone", "children", "default rows", "runway", "status")


def _row(t: TableSummary) -> tuple[str, ...]:
    if t.runway_seconds is not None:
        runway = fmt_delta(timedelta(seconds=round(t.runway_seconds)))
    elif t.runway_ids is not None:
        runway = f"{t.runway_ids} ids"
    else:
        runway = "-"
    return (
        f"{t.schema}.{t.table}",
        f"{t.key or '-'} ({t.key_type or t.strategy})",
        t.interval or "?",
        zone_label(t.zone) if t.zone else "-",
        str(t.children),
        "-" if t.default_rows is None else str(t.default_rows),
        runway,
        t.status,
    )


def render_text(result: CheckReport, console: Console) -> None:
    """A rich table on a terminal; plain aligned columns when piped (logs, Nagios)."""
    rows = [_row(t) for t in result.tables]
    if console.is_terminal:
        console.print(headline(result), style=_STYLE[result.status_name], markup=False)
        grid = RichTable(*_COLUMNS)
        for r in rows:  # Text, not markup: names and messages may contain brackets
            grid.add_row(*(Text(v) for v in r[:-1]), Text(r[-1], style=_STYLE[r[-1]]))
        if rows:
            console.print(grid)
        for f in result.findings:
            console.print(
                Text.assemble(
                    (f"{f.severity.value.upper():8} ", _STYLE[f.severity.value]),
                    (f.code, "bold"),
                    f" {f.table or '(server)'}: {f.message}",
                )
            )
        return
    out = [headline(result)]
    if rows:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
        for r in [tuple(c.upper() for c in _COLUMNS), *rows]:
            out.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    for f in result.findings:
        out.append(f"{f.severity.value.upper()} {f.code} {f.table or '(server)'}: {f.message}")
    console.file.write("\n".join(out) + "\n")
