"""``fix``: give every row of a DEFAULT partition a proper child, under live writes.

Order of business: refuse what cannot work (before any change), take the per-table
advisory lock, resume an interrupted run from its journal or plan a new one, check every
privilege, lock and connection the run will need, then run the steps. Every step commits
together with its journal state, so running the same command again after a crash
continues where the last commit left off. A step that fails is never left half-done
silently: instant's helpers are undone before the swap, and after it the error says what
is left and the command that finishes it (``unfinished.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from .. import humanize, journal
from ..db import LOCK_ATTEMPT, Conn, ConnParams, scalar
from ..errors import (
    AlreadyRunning,
    PartguardError,
    PermissionDenied,
    UsageError,
)
from ..execute import CopyJob, Progress, Runner, open_workers, run_plan, table_lock, take_locks
from ..guards import refuse_pooler, refuse_standby
from ..inspect import catalog, privileges
from ..inspect.data import count_rows, probe
from ..inspect.locks import advisory_holders
from ..inspect.partman import Partman, config_for, read_configs
from ..inspect.snapshot import Options, TableState, read_server, resolve_zones, table_state
from ..journal import advisory_key
from ..partman_calls import SKIPPED_SET
from ..plan import steps as S
from ..plan.fix import FixOptions, FixParams, check_fixable, plan_fix
from . import unfinished

log = logging.getLogger(__name__)

__all__ = ["FixOutcome", "FixRequest", "abort", "advisory_key", "fix", "plan_steps"]


@dataclass(frozen=True)
class FixOutcome:
    table: str
    status: str  # planned | nothing_to_do | done | declined | rolled_back (--abort)
    strategy: str | None = None
    run_id: int | None = None
    resumed: bool = False
    params: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    rows_moved: int = 0
    rows_quarantined: int = 0
    per_child: dict[str, int] = field(default_factory=dict)
    children_created: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    rate_rows_s: float = (
        0.0  # copy rows_this_run / copy_s: this invocation's work, not a resumed run's total
    )
    rows_this_run: int = 0  # rows the copy step moved (copied or quarantined) in this invocation
    copy_s: float = 0.0  # time this invocation spent in the copy step
    longest_lock_s: float = 0.0
    locks_s: dict[str, float] = field(default_factory=dict)
    quarantine: str | None = None
    quarantine_rows: int = 0
    maintenance: str | None = None
    estimate_s: float | None = None  # dry-run: a rough duration, from the DEFAULT's size
    findings_after: list[dict[str, Any]] = field(
        default_factory=list
    )  # check, re-run after the fix
    recut: dict[str, Any] | None = (
        None  # auto after instant: the wide child's re-cut (commands/exact.py)
    )
    notes: list[str] = field(default_factory=list)
    shown: str = ""  # the table's name for humans (humanize.display_name: one line, always)
    # --dry-run of auto: the re-cut of what the swap leaves off the grid, planned on the
    # table as the swap will leave it (commands/exact.py), and its psql script
    recut_plans: list[dict[str, Any]] = field(default_factory=list)
    recut_script: str | None = None


@dataclass(frozen=True)
class FixRequest:
    table: str
    options: FixOptions = field(default_factory=FixOptions)
    interval: str | None = None
    tz: str | None = None
    tz_hint: str | None = None  # fix-partitioned-table's <timezone>: used where nothing else tells
    force_tz: bool = False  # use tz even where it contradicts a partman table's zone
    force_interval: bool = False  # use interval even where partman or the children differ
    lock_timeout: float = 2.0  # one try of a step's lock, in attempts of lock_attempt
    retries: int = 5
    dry_run: bool = False
    lock_attempt: float = LOCK_ATTEMPT
    # copy: how long a refused worker connection is retried before copying on fewer
    connect_retry_for: float = 5.0


def fix(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    *,
    confirm: Callable[[FixOutcome], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> FixOutcome:
    """Repair ``req.table``'s DEFAULT; see the module docstring for the guarantees."""
    refuse_standby(conn, "fix")  # even --dry-run: its plan is the primary's to run
    refuse_pooler(conn, params, "fix")  # the per-table advisory lock is a session lock
    zones = resolve_zones(conn, _options(req))
    req = replace(req, tz=zones.tz, tz_hint=zones.tz_hint)
    table = _read(conn, req.table)
    check_fixable(table, req.options.key)
    if not req.dry_run:
        _check_owner(conn, table)
    with _table_lock(conn, table):
        return _fix_locked(conn, params, req, table, confirm, on_progress)


def abort(conn: Conn, req: FixRequest) -> FixOutcome:
    """``fix --abort``: undo an unfinished instant run that has not swapped yet (drop its
    trigger and CHECK, put the rows it set aside back). A run past its swap cannot be
    undone, only finished (UsageError, naming the command)."""
    table = _read(conn, req.table)
    _check_owner(conn, table)
    with _table_lock(conn, table):
        run = journal.open_run(conn, table.oid) if journal.readable(conn) else None
        if run is not None and run.state == "started":
            journal.set_state(conn, run.run_id, "abandoned", finished=True)
            return FixOutcome(
                table.qualname,
                "nothing_to_do",
                run_id=run.run_id,
                notes=[f"run {run.run_id} had changed nothing; closed it"],
            )
        if run is None:
            return _abort_helpers(conn, req, table)
        p = FixParams.from_json(run.params, table.key_type)
        if p.strategy != "instant" or run.state not in journal.INSTANT_BEFORE_SWAP:
            raise UsageError(
                f"fix --abort undoes only an instant run before its swap; "
                f"{unfinished.left(conn, table, run.run_id)}"
            )
        done = unfinished.undo_instant(
            conn,
            table,
            p.source,
            p.quarantine,
            run,
            lock_timeout=req.lock_timeout,
            retries=req.retries,
            reason="fix --abort",
        )
        return FixOutcome(
            table.qualname,
            "rolled_back",
            p.strategy,
            run.run_id,
            rows_moved=done.rows_put_back,
            notes=[unfinished.describe_undone(done, table, p.source)],
        )


def _abort_helpers(conn: Conn, req: FixRequest, table: catalog.Table) -> FixOutcome:
    """No journal run, but instant's trigger or CHECK on the DEFAULT (a lost journal):
    drop them; quarantined rows stay, since nothing tells which run set them aside."""
    if table.default is not None:
        done = unfinished.undo_instant(
            conn,
            table,
            table.default.name,
            S.short_name(table.name, "_quarantine"),
            None,
            lock_timeout=req.lock_timeout,
            retries=req.retries,
            reason="fix --abort",
        )
        if done.dropped:
            return FixOutcome(
                table.qualname,
                "rolled_back",
                "instant",
                notes=[unfinished.describe_undone(done, table, table.default.name)],
            )
    return FixOutcome(table.qualname, "nothing_to_do", notes=["no unfinished fix run"])


def _table_lock(conn: Conn, table: catalog.Table) -> AbstractContextManager[None]:
    """The per-table advisory lock every fix (and --abort) holds for its whole run."""
    return table_lock(
        conn,
        advisory_key(table.oid),
        lambda: AlreadyRunning(
            f"another partguard fix is running on {humanize.display_name(table)} ({_holder(conn, table.oid)})"
        ),
    )


def _fix_locked(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    table: catalog.Table,
    confirm: Callable[[FixOutcome], bool] | None,
    on_progress: Callable[[Progress], None] | None,
) -> FixOutcome:
    server = read_server(conn)
    partman = server.partman
    source, adopted = _source(conn, table)
    journal.ensure_trusted(conn)
    # partman's part_config tells whether it manages the table: needed even for a native one.
    lacking = privileges.missing(
        conn, privileges.Needs(table.schema, table.owner, source or "", partman)
    )
    if lacking and not req.dry_run:
        raise PermissionDenied(
            f"fix needs privileges this role lacks (nothing changed): {'; '.join(lacking)}"
        )
    notes = (
        [f"this role could not run the repair: it lacks {'; '.join(lacking)}"] if lacking else []
    )
    state = _state(conn, server, table, req)
    readable = journal.readable(conn)
    if not readable and journal.schema_exists(conn):  # a dry run by a role that may not read it
        notes.append(
            "this role may not read partguard.fix_run: an interrupted run would go unseen here"
        )
    run = journal.open_run(conn, table.oid) if readable else None
    if run is not None and run.state == "started":
        # Nothing had committed: plan afresh rather than trust a plan for an older picture.
        if not req.dry_run:
            journal.set_state(conn, run.run_id, "abandoned", finished=True)
        run = None
    if run is not None:
        p = FixParams.from_json(run.detail["params"], table.key_type)
        log.warning(
            "resuming fix run %d on %s (%s, after step %s)",
            run.run_id,
            table.qualname,
            p.strategy,
            run.state,
        )
        outcome = _outcome(
            p,
            table,
            partman,
            req.options.keep_source,
            status="planned",
            run_id=run.run_id,
            resumed=True,
        )
        if req.dry_run:
            return replace(outcome, notes=outcome.notes + notes)
        return _execute(
            conn, params, req, table, partman, p, run.run_id, run.state, outcome, on_progress
        )

    if source is None:
        return FixOutcome(
            table.qualname, "nothing_to_do", notes=["the table has no DEFAULT partition"]
        )
    pr = (
        state.default_probe
        if not adopted and state.default_probe is not None
        else probe(
            conn,
            sql.Identifier(table.schema, source),
            table.key,
            state.grid.grid,
            has_index=catalog.has_key_index(conn, table.schema, source, table.key),
        )
    )
    if pr.empty and not adopted:
        return FixOutcome(table.qualname, "nothing_to_do", notes=[f"{source} holds no rows"])
    taken = frozenset(
        n
        for oid, names in journal.quarantine_names(conn).items()
        if oid != table.oid
        for n in names
    )
    p = plan_fix(
        state,
        pr,
        server.now,
        partman,
        req.options,
        adopted=source if adopted else None,
        quarantines_taken=taken,
    )
    outcome = _outcome(
        p,
        table,
        partman,
        req.options.keep_source,
        status="planned",
        estimate_s=_estimate(conn, table.schema, source, p, req.options.jobs),
    )
    if req.dry_run:
        return replace(outcome, notes=outcome.notes + notes)
    if confirm is not None and not confirm(outcome):
        return replace(outcome, status="declined")
    if p.strategy == "instant":
        if not privileges.may_divert(conn):
            raise PermissionDenied(
                "fix needs EXECUTE on partguard.divert(), instant's trigger function (its owner "
                "revoked it from PUBLIC; nothing changed): GRANT EXECUTE ON FUNCTION "
                f"partguard.divert() TO {humanize.quote_name(str(scalar(conn, 'SELECT current_user')))}, or run "
                "--strategy copy"
            )
        _lock_check(conn, req, table, p)  # before the first commit: the swap's locks can be had
    journal.ensure_schema(conn)
    run = journal.start_run(
        conn,
        table.oid,
        table.qualname,
        p.strategy,
        {
            "params": p.as_json(),
            "chunk_pages": req.options.chunk_pages,
            # auto owes the re-cut of the wide child once this run is done (commands/exact.py)
            "auto": req.options.strategy == "auto",
        },
    )
    return _execute(
        conn,
        params,
        req,
        table,
        partman,
        p,
        run.run_id,
        "started",
        replace(outcome, run_id=run.run_id),
        on_progress,
    )


def _read(conn: Conn, name: str) -> catalog.Table:
    (table,) = catalog.read_tables(conn, [name])
    return table


def _state(conn: Conn, server: Any, table: catalog.Table, req: FixRequest) -> TableState:
    configs = read_configs(conn, server.partman)
    return table_state(
        conn, server, table, config_for(configs, table.schema, table.name), _options(req)
    )


def _options(req: FixRequest, tables: tuple[str, ...] = ()) -> Options:
    return Options(
        tables=tables,
        interval=req.interval,
        tz=req.tz,
        tz_hint=req.tz_hint,
        force_tz=req.force_tz,
        force_interval=req.force_interval,
    )


def _check_owner(conn: Conn, table: catalog.Table) -> None:
    """The first refusal, before anything is read: the rest of the privileges are asked
    together once the plan says what the run will touch (``privileges.missing``)."""
    is_owner, _ = catalog.privileges(conn, table)
    if not is_owner:
        raise PermissionDenied(
            f"{table.qualname} is owned by {table.owner}; fix must run as its owner (or a member)"
        )


def _lock_check(conn: Conn, req: FixRequest, table: catalog.Table, p: FixParams) -> None:
    """Take, and let go at once, every lock instant's swap will take (the parent, the
    DEFAULT, children it renames), so a session that holds one of them (a long
    transaction that read only recent children) fails the run before its first step,
    not at the swap with the DEFAULT already diverting inserts. A lock taken later is
    still undone by the failure path."""
    rels = [
        table.ident,
        sql.Identifier(table.schema, p.source),
        *(sql.Identifier(table.schema, old) for old, _ in p.renames),
    ]
    relations = [table.oid] + catalog.relation_oids(
        conn, table.schema, [p.source, *(o for o, _ in p.renames)]
    )
    take_locks(
        conn,
        rels,
        lock_timeout=req.lock_timeout,
        retries=req.retries,
        relations=relations,
        what="lock check (the swap's locks)",
    )


def _holder(conn: Conn, oid: int) -> str:
    holders = advisory_holders(conn, sql.Literal(advisory_key(oid)))
    return holders[0].describe() if holders else "holder unknown"


def _source(conn: Conn, table: catalog.Table) -> tuple[str | None, bool]:
    """The attached DEFAULT, or a ``<table>_default`` an interrupted old script detached."""
    if table.default is not None:
        return table.default.name, False
    name = S.short_name(table.name, "_default")
    if not catalog.is_detached_copy(conn, table, name):
        return None, False
    log.warning("adopting %s.%s, a DEFAULT detached by an earlier repair", table.schema, name)
    return name, True


def plan_steps(
    p: FixParams, table: catalog.Table, partman: Partman | None, *, keep_source: bool = False
) -> list[S.Step]:
    return S.fix_steps(p, table, partman, keep_source=keep_source)


def _outcome(
    p: FixParams,
    table: catalog.Table,
    partman: Partman | None,
    keep_source: bool = False,
    **kw: Any,
) -> FixOutcome:
    """The plan as the dry run shows it: each step's statements as psql runs them (a
    copy_ranges step as one range over the whole heap, ``per_range`` as the executor
    binds it per range)."""
    steps = []
    for s in plan_steps(p, table, partman, keep_source=keep_source):
        script = S.whole_heap(s, p, table) if s.kind == "copy_ranges" else s.statements
        steps.append(
            {
                "name": s.name,
                "kind": s.kind,
                "locks": s.locks,
                "note": s.note,
                "sql": [st.as_string(None) for st in script],
                **(
                    {"per_range": [st.as_string(None) for st in s.statements]}
                    if s.kind == "copy_ranges"
                    else {}
                ),
            }
        )
    return FixOutcome(
        table.qualname,
        strategy=p.strategy,
        params=p.as_json(),
        steps=steps,
        quarantine=f"partguard.{p.quarantine}",
        notes=list(p.notes),
        shown=humanize.display_name(table),
        **kw,
    )


# --- execution ---------------------------------------------------------------------


def _execute(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    table: catalog.Table,
    partman: Partman | None,
    p: FixParams,
    run_id: int,
    done: str,
    outcome: FixOutcome,
    on_progress: Callable[[Progress], None] | None,
) -> FixOutcome:
    started = time.monotonic()
    relations = [table.oid] + catalog.relation_oids(conn, table.schema, [p.source, p.holding or ""])
    runner = Runner(
        conn, run_id, req.lock_timeout, req.retries, relations, lock_attempt=req.lock_attempt
    )
    plan = S.fix_steps(p, table, partman, keep_source=req.options.keep_source)
    names = [s.name for s in plan]
    todo = plan[names.index(done) + 1 :] if done in names else plan
    workers: list[Conn] = []
    try:
        if p.strategy == "instant" and done in journal.INSTANT_BEFORE_SWAP:
            _lock_check(conn, req, table, p)  # resuming: the swap is still ahead
        copying = any(s.kind == "copy_ranges" for s in todo)
        if copying and req.options.jobs > 1:
            # Before the swap: once it commits, rows are out of sight until copied.
            workers, why = open_workers(params, req.options.jobs, retry_for=req.connect_retry_for)
            if why:
                outcome.notes.append(
                    f"copy ran on {len(workers) + 1} of {req.options.jobs} connections "
                    f"(more were refused: {why})"
                )
        job = (
            CopyJob(
                [conn, *workers],
                table.schema,
                p.holding or "",
                _chunk_pages(conn, table, req),
                on_progress,
            )
            if copying
            else None
        )
        result = run_plan(runner, todo, copy=job, failed_set_marker=SKIPPED_SET)
    except (Exception, KeyboardInterrupt) as exc:
        _failed(conn, params, req, table, p, run_id, done, exc)
        raise
    finally:
        for w in workers:
            w.close()
    if req.options.keep_source and any(s.name == "drop" for s in todo):
        outcome.notes.append(f"kept {S.shown(table.schema, p.holding or '')} (--keep-source)")
    created = _created(p, result.rows["swap"]) if "swap" in result.rows else []
    journal.set_state(conn, run_id, "done", finished=True)
    copied, quarantined, per_child = journal.chunk_totals(conn, run_id)
    # Judged in the zone the repair used: the hint's warnings were said once, when deciding.
    findings = _recheck(
        conn, table.qualname, replace(req, tz=p.zone or req.tz, tz_hint=None), params
    )
    elapsed = time.monotonic() - started
    copied_now, copy_s = result.rows_copied_now, result.copy_s
    return replace(
        outcome,
        status="done",
        rows_moved=copied,
        rows_quarantined=quarantined,
        per_child=per_child,
        children_created=created,
        duration_s=round(elapsed, 3),
        rate_rows_s=round(copied_now / copy_s, 1) if copy_s and copied_now else 0.0,
        rows_this_run=copied_now,
        copy_s=round(copy_s, 3),
        longest_lock_s=round(runner.timings.longest, 4),
        locks_s={k: round(v, 4) for k, v in runner.timings.locked.items()},
        quarantine_rows=count_rows(conn, sql.Identifier(S.SCHEMA, p.quarantine)),
        maintenance=result.maintenance,
        findings_after=findings,
    )


def _chunk_pages(conn: Conn, table: catalog.Table, req: FixRequest) -> int:
    """The run's block-range size, as journalled when it started (a resume keeps it)."""
    run = journal.open_run(conn, table.oid)
    return int((run.detail if run else {}).get("chunk_pages", req.options.chunk_pages))


def _created(p: FixParams, swap_rows: list[Any]) -> list[str]:
    """The children the swap made: the planned ones, and those of ``p.late`` the holding
    table had rows for (``partguard.add_children_with_rows`` returns their names, the one
    text[] among the swap's results)."""
    late = next((list(r[0]) for r in swap_rows if r and isinstance(r[0], list)), [])
    return [c.name for c in p.children] + [str(n) for n in late]


def _failed(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    table: catalog.Table,
    p: FixParams,
    run_id: int,
    done: str,
    exc: BaseException,
) -> None:
    """A step failed: close a run that changed nothing, undo instant's helpers, or say what
    is left. Raises the same kind of error (same exit code) with that said, in one line."""
    if (
        done == "started"
        and not conn.closed
        and not conn.broken
        and journal.run_state(conn, run_id) == "started"
    ):
        # Nothing committed yet (the first step takes the first lock): the table is as it
        # was, so close the run instead of leaving it to be resumed.
        journal.set_state(conn, run_id, "failed", finished=True)
        return
    try:
        said = unfinished.after_failure(
            conn,
            params,
            table,
            p,
            run_id,
            exc,
            lock_timeout=req.lock_timeout,
            retries=req.retries,
            lock_key=advisory_key(table.oid),
        )
    except (PartguardError, psycopg.Error) as later:
        said = f"partguard could not tell what is left ({later}); see `partguard fix --status`"
    if said is None:
        return
    if isinstance(exc, KeyboardInterrupt):
        log.warning("fix %s interrupted: %s", table.qualname, said)
        return
    head = str(exc) if isinstance(exc, PartguardError) else _server_error(exc)
    cls = type(exc) if isinstance(exc, PartguardError) else PartguardError
    raise cls(f"{head}; {said}") from exc


def _server_error(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg.Error):
        return f"server error ({exc.sqlstate or 'no SQLSTATE'}): {first}"
    return f"{type(exc).__name__}: {first}"


def _recheck(
    conn: Conn, name: str, req: FixRequest, params: ConnParams | str
) -> list[dict[str, Any]]:
    """check's verdict on the repaired table: the repair is judged by the same rules."""
    from ..diagnose import diagnose
    from ..inspect import snapshot

    snap = snapshot.take(
        conn,
        replace(
            _options(req, (name,)), connection=params if isinstance(params, ConnParams) else None
        ),
    )
    return [
        {"code": f.code, "severity": f.severity.value, "message": f.message}
        for f in diagnose(snap)
        if f.table == name
    ]


# Rough rates measured on a 2-core machine (benchmarks/bench_fix.py): a VALIDATE reads the
# heap sequentially; a copy inserts through tuple routing and index maintenance.
_SCAN_BYTES_S = 400e6
_COPY_ROWS_S_PER_JOB = 120e3


def _estimate(conn: Conn, schema: str, source: str, p: FixParams, jobs: int) -> float:
    size = float(catalog.relation_pages(conn, schema, source) * 8192)
    if p.strategy == "instant":
        return round(size / _SCAN_BYTES_S + 0.1, 1)
    return round(
        p.rows_estimate / (_COPY_ROWS_S_PER_JOB * min(jobs, 2)) + size / _SCAN_BYTES_S + 0.2, 1
    )
