"""``partguard fix``: parse, confirm, show progress, render the plan or the outcome."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

from ..commands.exact import fix_exact
from ..commands.fix import FixOutcome, FixRequest, abort
from ..commands.unfinished import runs_status
from ..db import ConnParams, connect, parse_duration
from ..errors import Aborted, UsageError
from ..execute import Progress
from ..humanize import quote_name
from ..plan.fix import FixOptions
from .common import (
    DECLINED,
    attempt_duration,
    confirm_plan,
    connection_options,
    echo_check_after,
    emit_json,
    force_interval_option,
    format_option,
    jsonable,
)

log = logging.getLogger(__name__)


@click.command("fix")
@connection_options
@click.argument("table", required=False)
@click.option(
    "--strategy",
    type=click.Choice(["auto", "instant", "copy"]),
    default="auto",
    show_default=True,
    help="instant: the DEFAULT becomes a child, no row moves; copy: exact per-interval children.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan as a SQL script (stdout) and change nothing."
)
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when not on a TTY)."
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Copy connections.",
)
@click.option(
    "--lock-timeout",
    default="2s",
    show_default=True,
    help="How long one try asks for a step's locks, in --lock-attempt waits.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=5,
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
    "--interval",
    help="Partition interval when neither partman nor the children tell it; one that "
    "contradicts them is refused.",
)
@click.option(
    "--tz",
    help="Time zone of the grid, any PostgreSQL accepts (default: partman's zone / the "
    "children's); on a partman table one that contradicts partman's is refused.",
)
@click.option("--force-tz", is_flag=True, help="Use --tz even where it contradicts partman's zone.")
@force_interval_option
@click.option(
    "--outliers",
    type=click.Choice(["quarantine", "keep"]),
    default="quarantine",
    show_default=True,
    help="NULL keys and far-off rows: keep them in partguard.<table>_quarantine, or in the DEFAULT.",
)
@click.option("--premake", type=click.IntRange(1, 1000), help="Future children to have afterwards.")
@click.option(
    "--keep-source", is_flag=True, help="copy: keep the detached DEFAULT instead of dropping it."
)
@click.option(
    "--chunk-pages",
    type=click.IntRange(16, 1_000_000),
    default=2048,
    show_default=True,
    help="copy: heap pages per transaction.",
)
@click.option("--key", help="Expected partition key column (checked against the table's).")
@click.option(
    "--default-tz",
    "tz_hint",
    help="Zone to use only when neither partman nor the children tell it (a hint: one that "
    "cannot be used is a warning).",
)
@click.option(
    "--status", is_flag=True, help="List fix runs from the journal (finished and interrupted)."
)
@click.option(
    "--abort",
    "abort_run",
    is_flag=True,
    help="Undo TABLE's interrupted instant run (before its swap): drop its trigger and CHECK, "
    "put the rows it set aside back.",
)
@format_option
def command(
    params: ConnParams,
    table: str | None,
    strategy: str,
    dry_run: bool,
    yes: bool,
    jobs: int,
    lock_timeout: str,
    retries: int,
    lock_attempt: str,
    interval: str | None,
    tz: str | None,
    force_tz: bool,
    force_interval: bool,
    outliers: str,
    premake: int | None,
    keep_source: bool,
    chunk_pages: int,
    key: str | None,
    tz_hint: str | None,
    status: bool,
    abort_run: bool,
    fmt: str,
) -> int:
    """Repair TABLE's DEFAULT partition under live writes: short locks, resumable, verified."""
    if status:
        return _status(params, fmt)
    if not table:
        raise UsageError("fix needs a TABLE (or --status)")
    if abort_run:
        return _abort(
            params,
            FixRequest(table=table, lock_timeout=parse_duration(lock_timeout), retries=retries),
            fmt,
        )
    req = FixRequest(
        table=table,
        options=FixOptions(
            strategy=strategy,
            outliers=outliers,
            premake=premake,
            keep_source=keep_source,
            jobs=jobs,
            chunk_pages=chunk_pages,
            key=key,
        ),
        interval=interval,
        tz=tz,
        tz_hint=tz_hint,
        force_tz=force_tz,
        force_interval=force_interval,
        lock_timeout=parse_duration(lock_timeout),
        retries=retries,
        dry_run=dry_run,
        lock_attempt=attempt_duration(lock_attempt),
    )
    if not dry_run and not yes and not sys.stdin.isatty():
        raise Aborted(
            "fix changes the database: pass --yes when not running on a terminal (or --dry-run)"
        )
    conn = connect(params)
    progress = _ProgressPrinter()
    try:
        outcome = fix_exact(
            conn, params, req, confirm=None if yes else _confirm, on_progress=progress
        )
    finally:
        progress.close()
        conn.close()
    left = _still_wrong(outcome)
    rc = (
        (2 if left else 0)
        if outcome.status == "done"
        else (0 if outcome.status in ("nothing_to_do", "planned") else DECLINED)
    )
    if fmt == "json":
        emit_json({**jsonable(outcome), "exit_code": rc, "still_wrong": left})
    elif outcome.status == "planned":
        _print_plan(outcome)
    else:
        _print_outcome(outcome)
    if left:
        click.echo(
            f"fix: every row is in place, but {outcome.table} is not healthy yet: "
            + " | ".join(left),
            err=True,
        )
    return rc


def _still_wrong(o: FixOutcome) -> list[str]:
    """A repair that committed is not "fixed" while partman's own maintenance fails or check
    still finds the table CRITICAL: that is exit 2 (Nagios CRITICAL), saying what is left."""
    if o.status != "done":
        return []
    left = (
        [f"partman maintenance {o.maintenance}"] if o.maintenance and o.maintenance != "ok" else []
    )
    left += [
        f"{f['code']}: {f['message']}" for f in o.findings_after if f["severity"] == "critical"
    ]
    return [" ".join(x.split()) for x in left]


def _status(params: Any, fmt: str) -> int:
    conn = connect(params)
    try:
        runs = runs_status(conn)
    finally:
        conn.close()
    if fmt == "json":
        emit_json(
            {
                "runs": [
                    {
                        **{k: v for k, v in jsonable(s.run).items() if k != "detail"},
                        "holding": s.holding,
                        "rows_not_visible": s.rows_not_visible,
                        "rows_exact": s.rows_exact,
                        "left": s.left,
                        "recut_owed": s.recut_owed,
                    }
                    for s in runs
                ]
            }
        )
        return 0
    if not runs:
        click.echo("no fix runs recorded")
    for s in runs:
        r = s.run
        state = (
            "finished its swap, RE-CUT OWED"
            if s.recut_owed
            else ("finished" if r.finished_at else "INTERRUPTED")
        )
        hold = f" holding={s.holding}" if s.holding else ""
        if s.rows_not_visible is not None:
            hold += f" ({s.rows_not_visible}{'' if s.rows_exact else ' (estimate)'} rows not visible yet)"
        click.echo(
            f"run {r.run_id}: {r.parent_name} {r.strategy} state={r.state} "
            f"started={r.started_at:%Y-%m-%d %H:%M:%S}{hold} {state}"
        )
        if s.left:
            click.echo(f"  {s.left}")
    return 0


def _abort(params: Any, req: FixRequest, fmt: str) -> int:
    conn = connect(params)
    try:
        outcome = abort(conn, req)
    finally:
        conn.close()
    if fmt == "json":
        emit_json(outcome)
    elif outcome.status == "rolled_back":
        click.echo(
            f"{outcome.table}: rolled back"
            + (f" run {outcome.run_id}" if outcome.run_id else "")
            + f": {'; '.join(outcome.notes)}"
        )
    else:
        _print_outcome(outcome)
    return 0


def _summary(o: FixOutcome) -> list[str]:
    p = o.params or {}
    resumed = f" (resuming run {o.run_id})" if o.resumed else ""
    lines = [
        f"{_name(o)}: {o.strategy} repair{resumed}",
        f"  rows in the DEFAULT (estimate): {p.get('rows_estimate', 0)}, buckets: {len(p.get('buckets', []))}",
    ]
    if p.get("span_child"):
        lines.append(
            f"  the DEFAULT becomes {quote_name(p['span_child'])} "
            f"FOR VALUES FROM ({p['span_lo']}) TO ({p['span_hi']})"
        )
    kids = p.get("children", [])
    if kids:
        lines.append(
            f"  children to create: {len(kids)} "
            f"({quote_name(kids[0]['name'])} … {quote_name(kids[-1]['name'])})"
        )
    if o.estimate_s is not None:
        lines.append(
            f"  estimated duration: ~{o.estimate_s:g}s (rough; the parent is locked only for milliseconds)"
        )
    lines += [f"  note: {n}" for n in o.notes]
    return [_one_line(ln) for ln in lines]


def _name(o: FixOutcome) -> str:
    return o.shown or _one_line(o.table)


def _one_line(text: str) -> str:
    """Names reach here through ``humanize.quote_name``; this is the second fence: no
    control character (a newline would end a ``--`` comment of the script) survives."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _print_plan(o: FixOutcome) -> None:
    """The plan as a psql script (``psql -v ON_ERROR_STOP=1 -f plan.sql`` runs the repair):
    one BEGIN … COMMIT per step, exactly the statements ``fix`` runs; only comments outside."""
    for line in _summary(o):
        click.echo(line, err=True)
    click.echo(
        _one_line(
            f"-- partguard fix plan for {_name(o)} ({o.strategy}); review, then run it with "
            "psql -v ON_ERROR_STOP=1, or run partguard fix without --dry-run"
        )
    )
    for step in o.steps:
        click.echo(
            "\n"
            + _one_line(
                f"-- step {step['name']} ({step['kind']}): locks {step['locks']}"
                + (f"; {step['note']}" if step["note"] else "")
            )
        )
        if step["kind"] == "copy_ranges":
            click.echo(
                "-- partguard runs this per block range of the holding table, journalling each; "
                "here one range covers the whole heap"
            )
        if not step["sql"]:
            click.echo("-- nothing to run")
            continue
        click.echo("BEGIN;")
        for stmt in step["sql"]:
            click.echo(stmt.rstrip(";") + ";")
        click.echo("COMMIT;")
    if o.recut_script:
        click.echo(
            "\n-- then (strategy auto) the re-cut of what the swap leaves off the grid, planned "
            "on the table as the swap leaves it"
        )
        click.echo(o.recut_script, nl=False)


def _print_outcome(o: FixOutcome) -> None:
    if o.status != "done":
        click.echo(
            f"{_name(o)}: {o.status.replace('_', ' ')}"
            + (f" ({'; '.join(o.notes)})" if o.notes else "")
        )
        return
    click.echo(
        f"{_name(o)}: fixed with {o.strategy} in {o.duration_s:.2f}s, longest lock {o.longest_lock_s * 1000:.0f} ms"
    )
    if o.recut:
        r = o.recut
        made = sum(len(x["targets"]) for x in r["recuts"])
        click.echo(
            f"  live writes had real children after {r['live_children_after_s']:.2f}s (the instant swap); "
            f"then the wide child was re-cut online into {made} exact children in {r['duration_s']:.2f}s "
            f"({sum(x['rows_copied'] for x in r['recuts'])} rows, "
            f"{sum(x['changes_replayed'] for x in r['recuts'])} concurrent changes replayed)"
        )
    if o.rows_moved:
        now = f"{o.rows_this_run} of them in this run, " if o.resumed else ""
        click.echo(f"  rows copied: {o.rows_moved} ({now}{o.rate_rows_s:.0f} rows/s)")
        for child, rows in sorted(o.per_child.items()):
            click.echo(f"    {child}: {rows}")
    if o.children_created:
        click.echo(f"  children created: {len(o.children_created)}")
    if o.quarantine_rows:
        click.echo(f"  quarantined rows kept in {o.quarantine}: {o.quarantine_rows}")
    if o.maintenance:
        click.echo(f"  partman maintenance: {o.maintenance}")
    for note in o.notes:
        click.echo(f"  note: {note}")
    echo_check_after(o.findings_after)


def _confirm(o: FixOutcome) -> bool:
    return confirm_plan(_summary(o))


class _ProgressPrinter:
    """A rich progress bar on a terminal; a log line every few seconds otherwise
    (journald, CI), so a long copy never looks hung."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, pr: Progress) -> None:
        if self.tty:
            self._bar(pr)
            return
        now = time.monotonic()
        if now - self.last < 5.0 and pr.done_pages < pr.total_pages:
            return
        self.last = now
        pct = 100.0 * pr.done_pages / pr.total_pages if pr.total_pages else 100.0
        eta = f", ETA {pr.eta:.0f}s" if pr.eta else ""
        click.echo(
            f"copy: {pr.rows} rows, {pct:.0f}% of {pr.total_pages} pages, {pr.rate:.0f} rows/s{eta}",
            err=True,
        )

    def _bar(self, pr: Progress) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        if self.bar is None:
            self.bar = Bar(
                TextColumn("copy"),
                BarColumn(),
                TextColumn("{task.fields[rows]} rows"),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("copy", total=max(pr.total_pages, 1), rows=0, rate=0)
        self.bar.update(self.task, completed=pr.done_pages, rows=pr.rows, rate=f"{pr.rate:.0f}")
        if pr.done_pages >= pr.total_pages:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
