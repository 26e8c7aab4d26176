"""``partguard split``: parse, confirm, render; the work is ``commands.split.split``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..commands.split import SplitOutcome, SplitRequest, split, status
from ..db import ConnParams, connect, parse_duration
from ..errors import Aborted, UsageError
from ..humanize import display_ident
from .common import (
    confirm_plan,
    connection_options,
    echo_check_after,
    emit_json,
    force_interval_option,
    format_option,
    jsonable,
)
from .fix import _ProgressPrinter


@click.command("split")
@connection_options
@click.argument("table", required=False)
@click.option(
    "--child",
    "children",
    multiple=True,
    help="Re-cut this child (repeatable). Default: every child wider than one interval or off "
    "the grid.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Connections for the copy and the index builds.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the re-cut as a SQL script (stdout) and change nothing."
)
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when not on a TTY)."
)
@click.option(
    "--abort", is_flag=True, help="Undo an unfinished split: the table is left exactly as it was."
)
@click.option("--status", "show_status", is_flag=True, help="List split runs from the journal.")
@click.option("--lock-timeout", default="2s", show_default=True, help="Longest wait for any lock.")
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="Tries after a lock timeout.",
)
@click.option(
    "--keep-source",
    is_flag=True,
    help="Keep the replaced children in schema partguard instead of dropping them.",
)
@click.option(
    "--chunk-pages",
    type=click.IntRange(1, 1_000_000),
    default=2048,
    show_default=True,
    help="Heap pages per copy statement.",
)
@click.option(
    "--interval",
    help="Partition interval when neither partman nor the children tell it; one that "
    "contradicts them is refused.",
)
@click.option(
    "--tz", help="Time zone of the grid (default: partman's session zone / the children's)."
)
@force_interval_option
@format_option
def command(
    params: ConnParams,
    table: str | None,
    children: tuple[str, ...],
    jobs: int,
    dry_run: bool,
    yes: bool,
    abort: bool,
    show_status: bool,
    lock_timeout: str,
    retries: int,
    keep_source: bool,
    chunk_pages: int,
    interval: str | None,
    tz: str | None,
    force_interval: bool,
    fmt: str,
) -> int:
    """Re-cut TABLE's children onto the grid, online: every row stays visible, every write succeeds."""
    if show_status:
        return _status(params, fmt)
    if not table:
        raise UsageError("split needs a TABLE (or --status)")
    req = SplitRequest(
        table=table,
        children=children,
        jobs=jobs,
        lock_timeout=parse_duration(lock_timeout),
        retries=retries,
        keep_source=keep_source,
        chunk_pages=chunk_pages,
        interval=interval,
        tz=tz,
        force_interval=force_interval,
        dry_run=dry_run,
        abort=abort,
    )
    if not dry_run and not yes and not sys.stdin.isatty():
        raise Aborted(
            "split changes the database: pass --yes when not running on a terminal (or --dry-run)"
        )
    conn = connect(params)
    progress = _ProgressPrinter()
    try:
        outcome = split(conn, params, req, confirm=None if yes else _confirm, on_progress=progress)
    finally:
        progress.close()
        conn.close()
    if fmt == "json":
        emit_json(outcome)
    elif outcome.status == "planned":
        for line in _summary(outcome):
            click.echo(line, err=True)
        click.echo(outcome.script or "", nl=False)
    else:
        _print(outcome)
    return 1 if outcome.status == "declined" else 0


def _status(params: Any, fmt: str) -> int:
    conn = connect(params)
    try:
        runs = status(conn)
    finally:
        conn.close()
    if fmt == "json":
        emit_json({"runs": [{k: v for k, v in jsonable(r).items() if k != "detail"} for r in runs]})
        return 0
    if not runs:
        click.echo("no split runs recorded")
    for r in runs:
        state = (
            "finished"
            if r.finished_at
            else "INTERRUPTED (rerun the same split to finish, or --abort)"
        )
        click.echo(
            f"run {r.run_id}: {r.parent_name} [{', '.join(map(display_ident, r.sources))}] "
            f"state={r.state} "
            f"started={r.started_at:%Y-%m-%d %H:%M:%S} {state}"
        )
    return 0


def _summary(o: SplitOutcome) -> list[str]:
    lines = [f"{o.table}: {len(o.plans)} re-cut(s)"]
    for p in o.plans:
        kids = p["targets"]
        lines.append(
            f"  {', '.join(display_ident(s['name']) for s in p['sources'])} -> {len(kids)} "
            "children "
            f"({display_ident(kids[0]['name'])} … {display_ident(kids[-1]['name'])})"
        )
    lines += [f"  note: {n}" for n in o.notes]
    return lines


def _print(o: SplitOutcome) -> None:
    if o.status != "done":
        click.echo(
            f"{o.table}: {o.status.replace('_', ' ')}"
            + (f" ({'; '.join(o.notes)})" if o.notes else "")
        )
        return
    click.echo(f"{o.table}: re-cut in {o.duration_s:.2f}s")
    for r in o.recuts:
        click.echo(
            f"  {', '.join(map(display_ident, r.sources))} -> "
            f"{', '.join(display_ident(t['name']) for t in r.targets)}"
            + (" (resumed)" if r.resumed else "")
        )
        click.echo(
            f"    rows copied {r.rows_copied}, changes replayed {r.changes_replayed}, "
            f"swap lock {r.swap_lock_s * 1000:.0f} ms"
        )
    for note in o.notes:
        click.echo(f"  note: {note}")
    echo_check_after(o.findings_after)


def _confirm(o: SplitOutcome) -> bool:
    return confirm_plan(_summary(o))
