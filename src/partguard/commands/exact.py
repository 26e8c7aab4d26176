"""``fix`` (strategy ``auto``) ends with exact children: the instant swap, then the re-cut.

``instant`` gives live writes real children within seconds (the DEFAULT becomes one wide child,
no row moves); but a wide child is not a finished repair for pg_partman, whose arithmetic
assumes one interval per child (5.x premakes too few next to it; its retention drops it while
later days of it are still inside the window). So, unless ``--strategy instant`` was asked
for, the wide child is then re-cut onto the grid by the engine (``partguard split``): every
row stays visible and every write succeeds throughout, and the table ends with exact
children named by its convention.

A failure of the re-cut never undoes the repair: every row is already in a child; the error
says so and ``partguard split`` finishes (or ``--abort`` undoes) the re-cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from .. import journal
from ..db import Conn, ConnParams, error_line
from ..errors import PartguardError, UnknownGrid, UnsupportedTable
from ..execute import Progress, fault, partman_maintenance
from ..humanize import quote_name
from ..inspect import catalog, leftovers
from ..inspect.partman import find_partman
from ..inspect.split_source import source_facts
from ..partman_calls import SKIPPED_SET
from ..plan import split_steps
from ..plan.after_fix import after_fix, facts_after, renames_of
from ..plan.fix import FixParams
from .fix import FixOutcome, FixRequest, _recheck, fix
from .split import SplitRequest, plan_groups, split, state_for

log = logging.getLogger(__name__)


def fix_exact(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    *,
    confirm: Callable[[FixOutcome], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> FixOutcome:
    """``fix``, then (strategy auto, after an instant swap) the re-cut of the wide child."""
    started = time.monotonic()
    outcome = fix(conn, params, req, confirm=confirm, on_progress=on_progress)
    if req.options.strategy == "auto" and outcome.status == "nothing_to_do" and not req.dry_run:
        # An earlier auto run may have been stopped between its swap and its re-cut.
        outcome = _owed(conn, req, outcome)
    wide = (outcome.params or {}).get("span_child")
    if req.options.strategy != "auto" or outcome.strategy not in ("instant", "copy"):
        return outcome
    if req.dry_run:
        return _with_recut_plan(conn, req, outcome)
    if outcome.status != "done" or not (wide or _needs_recut(outcome)):
        return outcome
    live = time.monotonic() - started
    log.info("fix %s: live writes have real children after %.2fs; re-cutting", outcome.table, live)
    fault("auto:before-recut")  # crash tests: the swap is done, the re-cut owed
    # Every child the grid disowns is re-cut, not only the wide one: an off-grid child (the old
    # script's UTC day on a Berlin grid) would keep partman failing. In the zone the fix used.
    zone = (outcome.params or {}).get("zone") or req.tz
    sreq = SplitRequest(
        table=req.table,
        children=(),
        jobs=req.options.jobs,
        lock_timeout=req.lock_timeout,
        retries=req.retries,
        interval=req.interval,
        tz=zone,
        force_tz=req.force_tz,
        force_interval=req.force_interval,
    )
    what = quote_name(wide) if wide else "the off-grid children"
    try:
        recut = split(conn, params, sreq, on_progress=on_progress)
    except (UnsupportedTable, UnknownGrid) as exc:  # refused before any change: it stands
        note = f"{what} stays as it is: the re-cut cannot run on this table ({exc})"
        log.warning("fix %s: %s", outcome.table, note)
        _settle(conn, outcome, f"refused: {exc}")
        return replace(outcome, notes=[*outcome.notes, note])
    except (PartguardError, psycopg.Error) as exc:
        cls = type(exc) if isinstance(exc, PartguardError) else PartguardError
        raise cls(
            f"every row is in a child (the repair committed after {live:.2f}s), but the "
            f"re-cut of {what} failed: {error_line(exc)}; "
            "finish it with partguard split "
            "(or undo it with partguard split --abort)"
        ) from exc
    _settle(conn, outcome, recut.status)
    summary: dict[str, Any] = {
        "status": recut.status,
        "live_children_after_s": round(live, 3),
        "duration_s": recut.duration_s,
        "recuts": [
            {
                "sources": r.sources,
                "targets": r.targets,
                "rows_copied": r.rows_copied,
                "changes_replayed": r.changes_replayed,
                "swap_lock_s": r.swap_lock_s,
            }
            for r in recut.recuts
        ],
    }
    maintenance, findings = (
        outcome.maintenance,
        recut.findings_after if recut.status == "done" else None,
    )
    if recut.status == "done" and (outcome.params or {}).get("managed"):
        # partman ran inside the fix, before the re-cut: off-grid children may have made it
        # fail then. Run it again on the exact children, and judge the table afterwards.
        maintenance = _partman_again(conn, outcome, req)
        findings = _recheck(
            conn, str((outcome.params or {}).get("table") or req.table), req, params
        )
    longest = max([outcome.longest_lock_s, *(r.swap_lock_s for r in recut.recuts)])
    return replace(
        outcome,
        strategy=f"{outcome.strategy}+recut",
        recut=summary,
        findings_after=outcome.findings_after if findings is None else findings,
        maintenance=maintenance,
        duration_s=round(time.monotonic() - started, 3),
        longest_lock_s=round(longest, 4),
        notes=[*outcome.notes, *recut.notes],
    )


def _owed(conn: Conn, req: FixRequest, outcome: FixOutcome) -> FixOutcome:
    """``fix`` found nothing to do, but an auto run of this table is done with its swap and
    still owes the re-cut of its wide child (killed in between): that run's outcome, so the
    re-cut runs as it would have, then partman once more."""
    if not journal.readable(conn):
        return outcome
    (table,) = catalog.read_tables(conn, [req.table])
    run = next(
        (
            r
            for r in reversed(journal.recut_candidates(conn))
            if r.parent_oid == table.oid and leftovers.wide_child_of(table, r)
        ),
        None,
    )
    if run is None:
        return outcome
    p = run.params
    log.warning(
        "fix %s: run %d swapped the DEFAULT into %s but never re-cut it; re-cutting now",
        outcome.table,
        run.run_id,
        p.get("span_child"),
    )
    return replace(
        outcome,
        status="done",
        strategy=run.strategy,
        run_id=run.run_id,
        resumed=True,
        params=p,
        maintenance=None,  # not run by this invocation: partman runs after the re-cut
        notes=[
            *outcome.notes,
            f"run {run.run_id} owed the re-cut of {quote_name(str(p.get('span_child')))}",
        ],
    )


def _settle(conn: Conn, outcome: FixOutcome, how: str) -> None:
    """The auto run's re-cut ran (or was refused): no longer owed by this run."""
    if outcome.run_id is not None and journal.readable(conn):
        journal.note_run(conn, outcome.run_id, {"recut": how})


def _with_recut_plan(conn: Conn, req: FixRequest, outcome: FixOutcome) -> FixOutcome:
    """The dry run's second part: the re-cut ``fix_exact`` runs after the swap, planned on
    the table as the swap will leave it (plan/after_fix.py), then partman once more."""
    if outcome.status != "planned" or outcome.params is None:
        return outcome
    if outcome.resumed:
        note = (
            "then every child off the grid is re-cut online (partguard split: see its "
            "--dry-run once this run has finished)"
        )
        return replace(outcome, notes=[*outcome.notes, note])
    (table,) = catalog.read_tables(conn, [req.table])
    p = FixParams.from_json(outcome.params, table.key_type)
    zone = p.zone or req.tz
    sreq = SplitRequest(
        table=req.table,
        jobs=req.options.jobs,
        lock_timeout=req.lock_timeout,
        retries=req.retries,
        interval=req.interval,
        tz=zone,
        force_tz=req.force_tz,
        force_interval=req.force_interval,
    )
    after = replace(state_for(conn, table, sreq), table=after_fix(table, p))
    old = renames_of(table, p)
    notes: list[str] = []
    try:
        plans = plan_groups(
            conn,
            after,
            (),
            sreq,
            notes,
            facts_of=lambda c: facts_after(source_facts(conn, c), old.get(c.oid)),
        )
    except UnsupportedTable as exc:
        note = f"the children off the grid stay as they are: the re-cut cannot run ({exc})"
        return replace(outcome, notes=[*outcome.notes, note])
    if not plans:
        return replace(outcome, notes=[*outcome.notes, *notes])
    script = split_steps.script(plans, req.lock_timeout)
    partman = find_partman(conn)
    if partman is not None and p.managed:
        script += "\n".join(
            [
                "\n-- partman's maintenance again, on the exact children, in the grid's zone",
                "BEGIN;",
                sql.SQL("SET LOCAL TimeZone = {};")
                .format(sql.Literal(p.zone or "UTC"))
                .as_string(None),
                partman.run_maintenance_sql(p.table).as_string(None).rstrip(";") + ";",
                "COMMIT;\n",
            ]
        )
    return replace(
        outcome,
        recut_plans=[pl.as_json() for pl in plans],
        recut_script=script,
        notes=[*outcome.notes, *notes, *(n for pl in plans for n in pl.notes)],
    )


def _partman_again(conn: Conn, outcome: FixOutcome, req: FixRequest) -> str:
    """partman's maintenance for the table, in the grid's zone; a skip WARNING (5.5) or an error
    is a failure, as everywhere (the rows are safe either way)."""
    partman = find_partman(conn)
    p = outcome.params or {}
    if partman is None or not p.get("managed"):
        return outcome.maintenance or "ok"
    return partman_maintenance(
        conn,
        partman.run_maintenance_sql(str(p["table"])),
        str(p.get("zone") or "UTC"),
        SKIPPED_SET,
        lock_timeout=req.lock_timeout,
        retries=req.retries,
        lock_attempt=req.lock_attempt,
    )


def _needs_recut(outcome: FixOutcome) -> bool:
    """After copy: children off the grid, or wider than an interval, are left (the old script's)."""
    return any(
        f["code"] in ("misaligned", "wide_child", "partman_next_overlaps")
        for f in outcome.findings_after
    )
