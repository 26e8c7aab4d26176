"""``fix``: give every row of a DEFAULT partition a proper child, under live writes.

Order of business: refuse what cannot work (before any change), take the per-table
advisory lock, resume an interrupted run from its journal or plan a new one, then run the
steps. Every step commits together with its journal state, so running the same command
again after a crash continues where the last commit left off.
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
from ..db import LOCK_ATTEMPT, Conn, ConnParams, error_line, run_locked
from ..errors import AlreadyRunning, PermissionDenied, VerificationFailed
from ..execute import Progress, Runner, chunks, copy_chunks, fault
from ..inspect import catalog
from ..inspect.data import count_rows, probe
from ..inspect.locks import advisory_holders
from ..inspect.partman import Partman, config_for, read_configs
from ..inspect.snapshot import Options, TableState, read_server, table_state
from ..plan import steps as S
from ..plan.children import free_spans, naming, partman_warmup
from ..plan.fix import ChildSpec, FixOptions, FixParams, check_fixable, plan_fix

log = logging.getLogger(__name__)

_LOCK_SPACE = 0x70617274  # 'part': our half of the advisory-lock key


@dataclass(frozen=True)
class FixOutcome:
    table: str
    status: str  # planned | nothing_to_do | done | declined
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
    rate_rows_s: float = 0.0
    longest_lock_s: float = 0.0
    locks_s: dict[str, float] = field(default_factory=dict)
    quarantine: str | None = None
    quarantine_rows: int = 0
    maintenance: str | None = None
    estimate_s: float | None = None  # dry-run: a rough duration, from the DEFAULT's size
    findings_after: list[dict[str, Any]] = field(default_factory=list)  # check, re-run after the fix
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FixRequest:
    table: str
    options: FixOptions = field(default_factory=FixOptions)
    interval: str | None = None
    tz: str | None = None
    tz_hint: str | None = None  # fix-partitioned-table's <timezone>: used where nothing else tells
    lock_timeout: float = 2.0  # one try of a step's lock, in attempts of lock_attempt
    retries: int = 5
    dry_run: bool = False
    lock_attempt: float = LOCK_ATTEMPT


def advisory_key(oid: int) -> int:
    return (_LOCK_SPACE << 32) | (oid & 0xFFFFFFFF)


def fix(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    *,
    confirm: Callable[[FixOutcome], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> FixOutcome:
    """Repair ``req.table``'s DEFAULT; see the module docstring for the guarantees."""
    table = _read(conn, req.table)
    check_fixable(table, req.options.key)
    _check_privileges(conn, table)
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(table.oid),)).fetchone()
    if not (got and got[0]):
        raise AlreadyRunning(f"another partguard fix is running on {table.qualname} ({_holder(conn, table.oid)})")
    try:
        return _fix_locked(conn, params, req, table, confirm, on_progress)
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(table.oid),))


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
    run = journal.open_run(conn, table.oid) if journal.schema_exists(conn) else None
    if run is not None and run.state == "started":
        # Nothing had committed: plan afresh rather than trust a plan for an older picture.
        if not req.dry_run:
            journal.set_state(conn, run.run_id, "abandoned", finished=True)
        run = None
    state = _state(conn, server, table, req)
    if run is not None:
        p = FixParams.from_json(run.detail["params"], table.key_type)
        log.warning("resuming fix run %d on %s (%s, after step %s)", run.run_id, table.qualname, p.strategy, run.state)
        outcome = _outcome(p, table, partman, status="planned", run_id=run.run_id, resumed=True)
        if req.dry_run:
            return outcome
        return _execute(conn, params, req, table, state, partman, p, run.run_id, run.state, outcome, on_progress)

    source, adopted = _source(conn, table)
    if source is None:
        return FixOutcome(table.qualname, "nothing_to_do", notes=["the table has no DEFAULT partition"])
    pr = state.default_probe if not adopted and state.default_probe is not None else probe(
        conn, sql.Identifier(table.schema, source), table.key, state.grid.grid,
        has_index=catalog.has_key_index(conn, table.schema, source, table.key))
    if pr.empty and not adopted:
        return FixOutcome(table.qualname, "nothing_to_do", notes=[f"{source} holds no rows"])
    tag = datetime.now().strftime("%Y%m%d%H%M%S")
    p = plan_fix(state, pr, server.now, partman, req.options, adopted=source if adopted else None, run_tag=tag)
    outcome = _outcome(p, table, partman, status="planned",
                       estimate_s=_estimate(conn, table.schema, source, p, req.options.jobs))
    if req.dry_run:
        return outcome
    if confirm is not None and not confirm(outcome):
        return replace(outcome, status="declined")
    journal.ensure_schema(conn)
    run = journal.start_run(conn, table.oid, table.qualname, p.strategy,
                            {"params": p.as_json(), "chunk_pages": req.options.chunk_pages})
    return _execute(conn, params, req, table, state, partman, p, run.run_id, "started",
                    replace(outcome, run_id=run.run_id), on_progress)


def _read(conn: Conn, name: str) -> catalog.Table:
    (table,) = catalog.read_tables(conn, [name])
    return table


def _state(conn: Conn, server: Any, table: catalog.Table, req: FixRequest) -> TableState:
    configs = read_configs(conn, server.partman)
    return table_state(conn, server, table, config_for(configs, table.schema, table.name),
                       Options(interval=req.interval, tz=req.tz, tz_hint=req.tz_hint))


def _check_privileges(conn: Conn, table: catalog.Table) -> None:
    is_owner, can_create = catalog.privileges(conn, table)
    if not is_owner:
        raise PermissionDenied(f"{table.qualname} is owned by {table.owner}; fix must run as its owner (or a member)")
    if not can_create and not journal.schema_exists(conn):
        raise PermissionDenied("fix needs CREATE on the database once, for its journal schema \"partguard\"")


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


def plan_steps(p: FixParams, table: catalog.Table, partman: Partman | None) -> list[S.Step]:
    return S.instant_steps(p, table, partman) if p.strategy == "instant" else S.copy_steps(p, table, partman)


def _outcome(p: FixParams, table: catalog.Table, partman: Partman | None, **kw: Any) -> FixOutcome:
    steps = [
        {"name": s.name, "kind": s.kind, "locks": s.locks, "note": s.note, "extra": list(s.extra),
         "sql": [st.as_string(None) for st in s.statements]}
        for s in plan_steps(p, table, partman)
    ]
    return FixOutcome(table.qualname, strategy=p.strategy, params=p.as_json(), steps=steps,
                      quarantine=f"partguard.{p.quarantine}", notes=list(p.notes), **kw)


# --- execution ---------------------------------------------------------------------


def _execute(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    table: catalog.Table,
    state: TableState,
    partman: Partman | None,
    p: FixParams,
    run_id: int,
    done: str,
    outcome: FixOutcome,
    on_progress: Callable[[Progress], None] | None,
) -> FixOutcome:
    started = time.monotonic()
    relations = [table.oid] + catalog.relation_oids(conn, table.schema, [p.source, p.holding or ""])
    runner = Runner(conn, run_id, req.lock_timeout, req.retries, relations, lock_attempt=req.lock_attempt)
    plan = plan_steps(p, table, partman)
    names = [s.name for s in plan]
    todo = plan[names.index(done) + 1:] if done in names else plan
    created: list[str] = []
    maintenance = None
    try:
        for step in todo:
            log.info("fix %s: %s", table.qualname, step.name)
            if step.name == "swap":
                created = _swap(conn, runner, step, p, table, state, partman)
            elif step.name == "copy":
                _copy(conn, params, runner, step, p, table, req, on_progress)
            elif step.name == "verify":
                _verify(conn, runner, p, table)
            elif step.name == "drop" and req.options.keep_source:
                runner.step(S.Step("drop", (), "none"))
                outcome.notes.append(f"kept {table.schema}.{p.holding} (--keep-source)")
            elif step.name == "drop":
                fault("before-drop")
                runner.step(step)
            elif step.name == "maintenance":
                maintenance = _maintenance(runner, step)
            else:
                runner.step(step, scan=step.kind == "scan")
    except BaseException:
        # Nothing committed yet (the first step takes the first lock): the table is as it
        # was, so close the run instead of leaving it to be resumed.
        if (done == "started" and not conn.closed and not conn.broken
                and journal.run_state(conn, run_id) == "started"):
            journal.set_state(conn, run_id, "failed", finished=True)
        raise
    journal.set_state(conn, run_id, "done", finished=True)
    copied, quarantined, per_child = journal.chunk_totals(conn, run_id)
    findings = _recheck(conn, table.qualname, req)
    elapsed = time.monotonic() - started
    return replace(
        outcome, status="done", rows_moved=copied, rows_quarantined=quarantined, per_child=per_child,
        children_created=created, duration_s=round(elapsed, 3),
        rate_rows_s=round(copied / elapsed, 1) if elapsed and copied else 0.0,
        longest_lock_s=round(runner.timings.longest, 4),
        locks_s={k: round(v, 4) for k, v in runner.timings.locked.items()},
        quarantine_rows=count_rows(conn, sql.Identifier(S.SCHEMA, p.quarantine)), maintenance=maintenance,
        findings_after=findings,
    )


def _recheck(conn: Conn, name: str, req: FixRequest) -> list[dict[str, Any]]:
    """check's verdict on the repaired table: the repair is judged by the same rules."""
    from ..diagnose import diagnose
    from ..inspect import snapshot

    snap = snapshot.take(conn, Options(tables=(name,), interval=req.interval, tz=req.tz, tz_hint=req.tz_hint))
    return [{"code": f.code, "severity": f.severity.value, "message": f.message}
            for f in diagnose(snap) if f.table == name]


# Rough rates measured on a 2-core machine (benchmarks/bench_fix.py): a VALIDATE reads the
# heap sequentially; a copy inserts through tuple routing and index maintenance.
_SCAN_BYTES_S = 400e6
_COPY_ROWS_S_PER_JOB = 120e3


def _estimate(conn: Conn, schema: str, source: str, p: FixParams, jobs: int) -> float:
    size = float(catalog.relation_pages(conn, schema, source) * 8192)
    if p.strategy == "instant":
        return round(size / _SCAN_BYTES_S + 0.1, 1)
    return round(p.rows_estimate / (_COPY_ROWS_S_PER_JOB * min(jobs, 2)) + size / _SCAN_BYTES_S + 0.2, 1)


def _swap(
    conn: Conn, runner: Runner, step: S.Step, p: FixParams, table: catalog.Table,
    state: TableState, partman: Partman | None,
) -> list[str]:
    """The short transaction. Under its lock we look again: rows may have reached the
    DEFAULT since the analysis (copy needs children for their buckets), and the former
    DEFAULT's indexes get a child's names before the fresh DEFAULT claims the old ones."""
    extra: list[ChildSpec] = []
    stmts = list(step.statements)
    if partman is not None and any(c.via_partman for c in p.children):
        warmup = [*S.set_zone(p), partman_warmup(partman, table)]
        run_locked(conn, lambda c: [c.execute(s) for s in warmup], lock_timeout=runner.lock_timeout,
                   retries=runner.retries, relations=runner.relations, what="partman warm-up",
                   attempt_timeout=runner.lock_attempt)
    create_default = stmts.pop() if p.new_default else None

    # Every renamed table's indexes follow its new name: the former DEFAULT's (as the span
    # child or the holding table) and misnamed children's. Index names are read here, under
    # the lock, because only the server knows them.
    renamed = [*p.renames, (p.source, p.span_child if p.strategy == "instant" else p.holding)]

    def after(c: Conn) -> None:
        for old, new in renamed:
            assert new
            for stmt in S.index_renames(table.schema, catalog.child_indexes(c, _oid(c, table.schema, new)), old, new):
                c.execute(stmt)
        if p.strategy == "copy":
            extra.extend(_late_children(c, p, table, state, partman))
            for stmt in S.make_children(tuple(extra), table, partman):
                c.execute(stmt)
        fault("swap")
        if create_default is not None:
            c.execute(create_default)

    runner.step(S.Step(step.name, tuple(stmts), step.locks), after=after,
                detail={"late_children": [c.as_json() for c in extra]} if extra else None)
    return [c.name for c in p.children + tuple(extra)]


def _oid(conn: Conn, schema: str, name: str) -> int:
    return catalog.relation_oids(conn, schema, [name])[0]


def _late_children(
    conn: Conn, p: FixParams, table: catalog.Table, state: TableState, partman: Partman | None
) -> list[ChildSpec]:
    """Buckets the holding table gained after the analysis and nothing covers yet."""
    grid = state.grid.grid
    assert grid is not None and p.holding
    fresh = catalog.read_tables(conn, [table.qualname])[0]
    pr = probe(conn, sql.Identifier(table.schema, p.holding), table.key, grid,
               has_index=catalog.has_key_index(conn, table.schema, p.holding, table.key))
    nm = naming(fresh, state.config, partman, grid)
    taken = set(fresh.schema_names)
    out = []
    for b in pr.buckets:
        if (p.plausible_lo is None or b >= p.plausible_lo) and (p.plausible_hi is None or b < p.plausible_hi):  # type: ignore[operator]
            for lo, hi in free_spans(fresh, b, grid.next(b)):  # type: ignore[arg-type]
                name = nm.unique(lo, taken)
                taken.add(name)
                out.append(ChildSpec(name, lo, hi, False))
    return out


def _copy(
    conn: Conn, params: ConnParams | str, runner: Runner, step: S.Step, p: FixParams, table: catalog.Table,
    req: FixRequest, on_progress: Callable[[Progress], None] | None,
) -> None:
    assert p.holding
    total = catalog.relation_pages(conn, table.schema, p.holding)
    run = journal.open_run(conn, table.oid)
    chunk_pages = int((run.detail if run else {}).get("chunk_pages", req.options.chunk_pages))
    done = journal.done_chunks(conn, runner.run_id)
    all_chunks = chunks(total, chunk_pages)
    todo = [c for c in all_chunks if c[0] not in done]
    done_pages = sum(min(e, total) - f for f, e in all_chunks if f in done)
    copy_chunks(params, step.statements, runner.run_id, todo, total, jobs=req.options.jobs,
                lock_timeout=req.lock_timeout, retries=req.retries, relations=runner.relations,
                lock_attempt=req.lock_attempt,
                on_progress=on_progress, done_pages=done_pages)
    journal.set_state(conn, runner.run_id, "copy")


def _verify(conn: Conn, runner: Runner, p: FixParams, table: catalog.Table) -> None:
    """Every row of the holding table is accounted for by a committed chunk, or we stop
    with the holding table intact."""
    assert p.holding
    copied, quarantined, _ = journal.chunk_totals(conn, runner.run_id)
    source_rows = count_rows(conn, sql.Identifier(table.schema, p.holding))
    if source_rows != copied + quarantined:
        raise VerificationFailed(
            f"{table.schema}.{p.holding} holds {source_rows} rows but the journal accounts for "
            f"{copied} copied + {quarantined} quarantined; nothing dropped, rerun to resume"
        )
    runner.step(S.Step("verify", (), "none", kind="check"))


def _maintenance(runner: Runner, step: S.Step) -> str:
    """partman's maintenance for this table; a failure is reported, not fatal: the rows
    are already safe, and ``maintain`` will say it again loudly."""
    try:
        runner.step(step)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - surfaced in the outcome
        log.warning("partman maintenance after fix failed: %s", error_line(exc))
        journal.set_state(runner.conn, runner.run_id, "maintenance")
        return f"failed: {error_line(exc)}"
