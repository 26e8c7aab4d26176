"""``split``: re-cut children onto the grid while every row stays visible and every write
succeeds (pg_repack's method, applied to a partition layout).

Order of business: refuse what cannot work (before any change), take the table's advisory
lock (the one ``fix`` takes: the two never run on a table at once), finish or abort an
interrupted run from its journal, then plan every group and run its steps. A step commits
together with its journal state, so the same command after a crash continues where the
last commit left off; before the swap, ``--abort`` leaves the table exactly as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import sql

from .. import journal
from ..db import Conn, ConnParams, advisory_lock
from ..errors import (
    AlreadyRunning,
    LockNotAvailable,
    PermissionDenied,
    UnsupportedTable,
    UsageError,
)
from ..execute import Progress
from ..execute_split import Executor
from ..humanize import display_ident, display_name, iso
from ..inspect import catalog
from ..inspect.catalog import Child
from ..inspect.locks import advisory_holders
from ..inspect.partman import config_for, read_configs
from ..inspect.snapshot import Options, TableState, read_server, table_state
from ..inspect.split_source import SourceFacts, parent_facts, source_facts
from ..plan import split_steps as steps
from ..plan.children import naming
from ..plan.split import SplitPlan, check_size, groups, plan_split
from .fix import advisory_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitRequest:
    table: str
    children: tuple[str, ...] = ()  # none: every child wider than an interval or off the grid
    jobs: int = 1
    lock_timeout: float = 2.0
    retries: int = 5
    keep_source: bool = False
    chunk_pages: int = 2048
    interval: str | None = None
    tz: str | None = None
    force_tz: bool = False  # fix --force-tz: the re-cut lays the grid of the zone fix used
    force_interval: bool = False  # use interval even where partman or the children differ
    dry_run: bool = False
    abort: bool = False


@dataclass(frozen=True)
class Recut:
    """One group's re-cut, as it went."""

    tag: str
    sources: list[str]
    targets: list[dict[str, Any]]  # name, lower, upper
    resumed: bool = False
    rows_copied: int = 0
    changes_replayed: int = 0
    locks_s: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def swap_lock_s(self) -> float:
        return self.locks_s.get("swapped", 0.0)


@dataclass(frozen=True)
class SplitOutcome:
    table: str  # as display_name quotes it
    status: str  # planned | done | nothing_to_do | aborted | declined
    recuts: list[Recut] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    script: str | None = None  # --dry-run: the SQL script
    notes: list[str] = field(default_factory=list)
    findings_after: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0


def split(
    conn: Conn,
    params: ConnParams | str,
    req: SplitRequest,
    *,
    confirm: Callable[[SplitOutcome], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> SplitOutcome:
    """Re-cut ``req.table``'s children onto its grid; see the module docstring."""
    table = _read(conn, req.table)
    reason = table.unsupported_reason()
    if reason:
        raise UnsupportedTable(reason)
    _check_privileges(conn, table)
    with advisory_lock(conn, advisory_key(table.oid)) as got:
        if not got:
            holders = advisory_holders(conn, sql.Literal(advisory_key(table.oid)))
            who = holders[0].describe() if holders else "holder unknown"
            raise AlreadyRunning(
                f"another partguard fix or split is running on {display_name(table)} ({who})"
            )
        return _locked(conn, params, req, table, confirm, on_progress)


def _locked(
    conn: Conn,
    params: ConnParams | str,
    req: SplitRequest,
    table: catalog.Table,
    confirm: Callable[[SplitOutcome], bool] | None,
    on_progress: Callable[[Progress], None] | None,
) -> SplitOutcome:
    started = time.monotonic()
    name = display_name(table)
    run = journal.open_split(conn, table.oid)
    if req.abort:
        if run is None:
            return SplitOutcome(name, "nothing_to_do", notes=["no unfinished split of this table"])
        plan = SplitPlan.from_json(run.detail["plan"])
        if run.state == "swapped":
            raise UsageError(
                f"split run {run.run_id} already put its new children in place; run partguard "
                "split "
                "again to finish its clean-up"
            )
        _executor(conn, params, req, plan, table).run(steps.abort(plan))
        return SplitOutcome(
            name, "aborted", notes=[f"run {run.run_id} aborted: the table is as it was"]
        )
    done: list[Recut] = []
    if run is not None:
        if req.dry_run:
            raise UsageError(
                f"an interrupted split of {name} (run {run.run_id}, after {run.state}) exists: "
                "run partguard split without --dry-run to finish it, or with --abort"
            )
        plan = SplitPlan.from_json(run.detail["plan"])
        log.warning("resuming split run %d on %s (after %s)", run.run_id, name, run.state)
        done.append(_execute(conn, params, req, table, plan, run.state, on_progress))
        table = _read(conn, req.table)
    state = state_for(conn, table, req)
    wanted = req.children
    if done:  # children the resumed run replaced are gone (or are its targets now)
        wanted = tuple(w for w in wanted if w in {c.name for c in table.children})
        if req.children and not wanted:
            return _finish(conn, req, table, done, started)
    notes: list[str] = []
    plans = plan_groups(conn, state, wanted, req, notes)
    notes += [n for p in plans for n in p.notes]
    if not plans:
        if done:
            return _finish(conn, req, table, done, started)
        return SplitOutcome(
            name,
            "nothing_to_do",
            notes=notes or ["every child spans exactly one interval of the grid"],
        )
    outcome = SplitOutcome(
        name,
        "planned",
        plans=[p.as_json() for p in plans],
        script=steps.script(plans, req.lock_timeout),
        notes=notes,
    )
    if req.dry_run:
        return outcome
    if confirm is not None and not confirm(outcome):
        return replace(outcome, status="declined")
    for plan in plans:
        done.append(_execute(conn, params, req, table, plan, "", on_progress))
    return replace(_finish(conn, req, table, done, started), plans=outcome.plans, notes=notes)


def _read(conn: Conn, name: str) -> catalog.Table:
    (table,) = catalog.read_tables(conn, [name])
    return table


def state_for(conn: Conn, table: catalog.Table, req: SplitRequest) -> TableState:
    """The table as a re-cut with ``req`` judges it (its grid in ``req``'s zone and interval)."""
    server = read_server(conn)
    configs = read_configs(conn, server.partman)
    return table_state(
        conn,
        server,
        table,
        config_for(configs, table.schema, table.name),
        Options(
            interval=req.interval,
            tz=req.tz,
            force_tz=req.force_tz,
            force_interval=req.force_interval,
        ),
    )


def _check_privileges(conn: Conn, table: catalog.Table) -> None:
    journal.ensure_trusted(conn)
    is_owner, can_create = catalog.privileges(conn, table)
    if not is_owner:
        raise PermissionDenied(
            f"{display_name(table)} is owned by {display_ident(table.owner)}; split must run as "
            "its owner "
            "(or a member)"
        )
    if not can_create and not journal.schema_exists(conn):
        raise PermissionDenied(
            'split needs CREATE on the database once, for its journal schema "partguard"'
        )


def plan_groups(
    conn: Conn,
    state: TableState,
    wanted: tuple[str, ...],
    req: SplitRequest,
    notes: list[str],
    facts_of: Callable[[Child], SourceFacts] | None = None,
) -> list[SplitPlan]:
    """The re-cut of every group of ``state`` (see :func:`groups`). ``facts_of`` reads a
    source's facts (``fix --dry-run`` predicts them for children its swap renames)."""
    table, grid = state.table, state.grid.grid
    found = groups(state, wanted)
    if not found:
        return []
    assert grid is not None
    check_size(table, grid, found)
    server = read_server(conn)
    nm = naming(table, state.config, server.partman, grid)
    parent = parent_facts(conn, table)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    taken: set[str] = set()
    out = []
    for n, group in enumerate(found, 1):
        facts = tuple((facts_of or (lambda c: source_facts(conn, c)))(c) for c in group)
        plan = plan_split(
            state,
            group,
            facts,
            parent,
            nm,
            f"{stamp}_{table.oid}_{n}",
            keep_source=req.keep_source,
            taken=taken,
        )
        if plan is not None:
            out.append(plan)
        else:
            notes.append(
                f"{display_ident(group[0].name)} lies between gaps off the grid: it cannot be "
                "laid on the "
                "grid alone (fill the gaps with partguard fix first)"
            )
    return out


def _executor(
    conn: Conn,
    params: ConnParams | str,
    req: SplitRequest,
    plan: SplitPlan,
    table: catalog.Table,
    on_progress: Callable[[Progress], None] | None = None,
) -> Executor:
    rels = [table.oid] + catalog.relation_oids(conn, plan.schema, [s.name for s in plan.sources])
    if table.default is not None:
        rels.append(table.default.oid)
    return Executor(
        conn,
        params,
        plan,
        rels,
        lock_timeout=req.lock_timeout,
        retries=req.retries,
        jobs=req.jobs,
        chunk_pages=req.chunk_pages,
        on_progress=on_progress,
    )


def _execute(
    conn: Conn,
    params: ConnParams | str,
    req: SplitRequest,
    table: catalog.Table,
    plan: SplitPlan,
    after: str,
    on_progress: Callable[[Progress], None] | None,
) -> Recut:
    """Run the plan's steps after the journal state ``after`` ('' for a new run)."""
    started = time.monotonic()
    if after and after != "swapped":
        _check_unchanged(table, plan)
    todo = steps.steps(plan)
    names = [s.name for s in todo]
    if after:
        todo = todo[names.index(after) + 1 :]
    ex = _executor(conn, params, req, plan, table, on_progress)
    for step in todo:
        try:
            ex.run(step)
        except LockNotAvailable as exc:
            if step.name == "captured":
                raise LockNotAvailable(f"{exc}; nothing changed") from None
            raise LockNotAvailable(
                f"{exc}; the table is as it was but for partguard's change-log trigger: run the "
                "same command "
                "again to finish, or partguard split --abort"
            ) from None
        if step.name in ("copied", "indexed", "swapped"):
            journal.split_detail(
                conn,
                plan.tag,
                {
                    "rows_copied": ex.tally.rows_copied,
                    "changes_replayed": ex.tally.changes_replayed,
                    "locks_s": ex.tally.locks,
                    "seconds": ex.tally.seconds,
                },
            )
    t = ex.tally
    return Recut(
        plan.tag,
        [s.name for s in plan.sources],
        [{"name": x.name, "lower": iso(x.lower), "upper": iso(x.upper)} for x in plan.targets],
        resumed=bool(after),
        rows_copied=t.rows_copied,
        changes_replayed=t.changes_replayed,
        locks_s=dict(t.locks),
        seconds=dict(t.seconds),
        duration_s=round(time.monotonic() - started, 3),
    )


def _check_unchanged(table: catalog.Table, plan: SplitPlan) -> None:
    """A resumed run must find its sources where it left them, attached with the same bounds."""
    kids = {(c.schema, c.name): c for c in table.children}
    for s in plan.sources:
        c = kids.get((s.schema, s.name))
        if c is None or c.lower != s.lower or c.upper != s.upper:
            raise UsageError(
                f"{display_ident(s.name)} is no longer the child split run {plan.tag} started "
                "with: "
                "run partguard split --abort"
            )


def _finish(
    conn: Conn, req: SplitRequest, table: catalog.Table, done: list[Recut], started: float
) -> SplitOutcome:
    return SplitOutcome(
        display_name(table),
        "done",
        recuts=done,
        findings_after=_recheck(conn, table.qualname, req),
        duration_s=round(time.monotonic() - started, 3),
    )


def _recheck(conn: Conn, name: str, req: SplitRequest) -> list[dict[str, Any]]:
    """check's verdict on the table afterwards: the re-cut is judged by the same rules."""
    from ..diagnose import diagnose
    from ..inspect import snapshot

    snap = snapshot.take(
        conn,
        Options(
            tables=(name,), interval=req.interval, tz=req.tz, force_interval=req.force_interval
        ),
    )
    return [
        {"code": f.code, "severity": f.severity.value, "message": f.message}
        for f in diagnose(snap)
        if f.table == name
    ]


def status(conn: Conn) -> list[journal.SplitRun]:
    return journal.split_runs(conn)
