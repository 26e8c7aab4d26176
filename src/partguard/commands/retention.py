"""Native retention, executed: the plan of ``plan/retention.py`` run child by child under locks.

``maintain`` calls ``apply_retention`` for every ``partguard.toml`` table with a
``retention``, after premaking. Each child is checked once more before it goes: its largest
key must lie before the window (its bound already says so; the read costs one index descent
and guards against a plan made from a stale picture). ``DETACH … CONCURRENTLY`` runs in
autocommit under a session ``lock_timeout`` with bounded retries; an interrupted one leaves
the child "detach pending", which the next run completes with ``FINALIZE``. A plain DETACH
(a DEFAULT partition exists, or PostgreSQL 13) runs under ``db.run_locked``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerrors
from psycopg import pq, sql

from ..config import Config, TableSpec
from ..db import Conn, blockers, run_locked
from ..errors import CRITICAL, OK, WARNING, LockNotAvailable, PartguardError
from ..humanize import display_name, fmt_key
from ..inspect.catalog import Child, Key, read_tables, relation_name, resolve
from ..inspect.grid import TimeGrid
from ..inspect.partman import config_for, find_partman, read_configs
from ..inspect.retention import le
from ..inspect.snapshot import Options, Server, TableState, read_server, table_state
from ..plan.premake import plan_premake
from ..plan.retention import RetentionPlan, plan_retention

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionOutcome:
    retired: tuple[str, ...] = ()  # children detached (and, mode 'drop', dropped), oldest first
    mode: str = "detach"
    kept: tuple[str, ...] = ()  # "<child>: <why>" for children out of the window that stay
    severity: int = OK  # Nagios
    message: str = ""


def plan_for(state: TableState, spec: TableSpec, server: Server, tz: str) -> RetentionPlan | None:
    """The retention plan of one configured table (None: it has no retention)."""
    window = spec.window
    if window is None:
        return None
    grid = state.grid.grid
    names = spec.naming_for(state.table, grid) if grid is not None else None
    return plan_retention(
        state, window, spec.retention_mode, server.now, tz, server.version_num, names
    )


def apply_retention(
    conn: Conn,
    state: TableState,
    spec: TableSpec,
    server: Server,
    tz: str,
    *,
    lock_timeout: float,
    retries: int,
    on_event: Callable[[str], None] | None = None,
) -> RetentionOutcome:
    """Retire what the window no longer holds; failures become the outcome, never an exception."""
    try:
        plan = plan_for(state, spec, server, tz)
    except PartguardError as exc:
        return RetentionOutcome(severity=CRITICAL, message=f"retention not applied: {exc}")
    if plan is None:
        return RetentionOutcome()
    grid = state.grid.grid
    zone = grid.tz if isinstance(grid, TimeGrid) else None
    kept = tuple(f"{k.child.name}: {k.reason}" for k in plan.kept)
    retired: list[str] = []
    problem, severity = "", OK
    for child in plan.retire:
        try:
            newest = _retire(conn, plan, child, lock_timeout, retries)
        except (PartguardError, psycopg.Error) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problem, severity = f"retention stopped at {child.name}: {first}", CRITICAL
            break
        if newest is not None:
            problem = (
                f"refusing to {plan.mode} {child.name}: it holds rows up to {fmt_key(newest, zone)}, "
                f"inside the retention window (from {fmt_key(plan.cutoff, zone)})"
            )
            severity = CRITICAL
            break
        retired.append(child.qualname)
        done = "dropped" if plan.mode == "drop" else "detached (kept as a plain table)"
        log.info("%s: retention: %s %s", plan.table.qualname, done, child.qualname)
        if on_event:
            on_event(f"{plan.table.qualname}: retention {plan.window}: {done} {child.qualname}")
    blocking = [k for k in plan.kept if k.blocks]
    behind = sum(1 for k in plan.kept if k.behind)
    if blocking and severity == OK:
        severity = WARNING
    parts = []
    if retired:
        verb = "dropped" if plan.mode == "drop" else "detached"
        parts.append(
            f"retention {plan.window}: {verb} {len(retired)} child{'ren' if len(retired) != 1 else ''}"
        )
    if blocking:
        parts.append(
            "retention stops at "
            + "; ".join(f"{k.child.name} ({k.reason})" for k in blocking)
            + (f", and keeps the {behind} children out of the window behind it" if behind else "")
        )
    if problem:
        parts.append(problem)
    return RetentionOutcome(tuple(retired), plan.mode, kept, severity, "; ".join(parts))


def _retire(
    conn: Conn, plan: RetentionPlan, child: Child, lock_timeout: float, retries: int
) -> Key | None:
    """Detach (and drop) one child; returns its largest key instead when that is inside the window."""
    relations = [plan.table.oid, child.oid]
    concurrently = (
        plan.concurrently
        and conn.autocommit
        and (conn.info.transaction_status == pq.TransactionStatus.IDLE)
    )

    def guarded(c: Conn) -> Key | None:
        row = c.execute(plan.guard(child)).fetchone()
        newest: Key | None = row[0] if row else None
        if newest is not None and plan.cutoff is not None and le(plan.cutoff, newest):
            return newest
        if concurrently:
            return None
        c.execute(
            plan.finalize(child) if _pending(c, child) else plan.detach(child, concurrently=False)
        )
        _drop(c, plan, child)
        return None

    what = f"{plan.table.qualname}: retention: {plan.mode} {child.name}"
    newest = run_locked(
        conn, guarded, lock_timeout=lock_timeout, retries=retries, relations=relations, what=what
    )
    if newest is not None or not concurrently:
        return newest
    _concurrently(conn, plan, child, lock_timeout, retries, what)
    if plan.mode == "drop":
        run_locked(
            conn,
            lambda c: _drop(c, plan, child),
            lock_timeout=lock_timeout,
            retries=retries,
            relations=[child.oid],
            what=what,
        )
    return None


def _drop(conn: Conn, plan: RetentionPlan, child: Child) -> None:
    stmt = plan.drop(child)
    if stmt is not None:
        conn.execute(stmt)


def _pending(conn: Conn, child: Child) -> bool:
    """A CONCURRENTLY detach of this child was interrupted (PostgreSQL 14+ only has them)."""
    row = conn.execute(
        "SELECT to_jsonb(i) ->> 'inhdetachpending' FROM pg_inherits i WHERE inhrelid = %s",
        (child.oid,),
    ).fetchone()
    return bool(row and row[0] == "true")


def _concurrently(
    conn: Conn, plan: RetentionPlan, child: Child, lock_timeout: float, retries: int, what: str
) -> None:
    """``DETACH … CONCURRENTLY`` (or ``FINALIZE``) outside a transaction block: the lock wait is
    bounded by a session lock_timeout, restored afterwards; retried with backoff."""
    before = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    conn.execute(
        "SELECT set_config('lock_timeout', %s, false)", (f"{max(1, int(lock_timeout * 1000))}ms",)
    )
    try:
        tries = retries + 1
        for attempt in range(1, tries + 1):
            stmt = plan.finalize(child) if _pending(conn, child) else plan.detach(child)
            try:
                conn.execute(stmt)
                return
            except pgerrors.LockNotAvailable:
                if attempt == tries:
                    held = "; ".join(
                        b.describe() for b in blockers(conn, [plan.table.oid, child.oid])
                    )
                    raise LockNotAvailable(
                        f"{what}: lock not granted within {lock_timeout:g}s after "
                        f"{tries} tries; blocked by {held or 'a session that has since let go'}"
                    ) from None
                log.warning("%s: lock_timeout (try %d/%d)", what, attempt, tries)
                time.sleep(min(10.0, 0.2 * 2**attempt) * (0.5 + random.random()))
    finally:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false)", (before[0] if before else "0",)
        )


def dry_run(conn: Conn, config: Config, tables: tuple[str, ...] = ()) -> str:
    """``maintain --dry-run``: the SQL maintain would run for each ``partguard.toml`` table
    (premaking, then retention) and the pg_partman call for each partman table. Reads only."""
    server = read_server(conn)
    partman = find_partman(conn)
    configs = read_configs(conn, partman)
    wanted = {resolve(conn, t) for t in tables}
    out = [
        f"-- partguard maintain --dry-run on {server.database} at {server.now.isoformat()}: nothing changed"
    ]
    for spec in config.tables:
        oid = resolve(conn, spec.name)
        if wanted and oid not in wanted:
            continue
        schema, name = relation_name(conn, oid)
        (table,) = read_tables(conn, [sql.Identifier(schema, name).as_string(conn)])
        cfg = config_for(configs, schema, name)
        if cfg is not None or spec.interval is None:
            continue  # a partman table: listed below
        state = table_state(conn, server, table, None, Options(interval=spec.interval, tz=spec.tz))
        tz = spec.tz or server.timezone
        grid = state.grid.grid
        names = spec.naming_for(table, grid) if grid is not None else None
        premake = plan_premake(state, spec.premake, server.now, tz, names)
        out.append(f"-- {display_name(table)}: premake {spec.premake}")
        out += [step.create.as_string(None) + ";" for step in premake.steps] or [
            "-- nothing to create"
        ]
        if premake.refused is not None:
            out.append(f"-- stops at {premake.refused.lower}: {premake.refused.reason}")
        plan = plan_for(state, spec, server, tz)
        if plan is not None:
            out.append(plan.script(grid.tz if isinstance(grid, TimeGrid) else None).rstrip("\n"))
    for cfg in sorted(configs.values(), key=lambda c: c.parent_table):
        if partman is None or not cfg.automatic_maintenance:
            continue
        try:
            oid = resolve(conn, cfg.parent_table)
        except PartguardError:
            continue
        if wanted and oid not in wanted:
            continue
        out.append(
            f"-- {cfg.parent_table}: pg_partman decides its own children and retention "
            f"({cfg.raw.get('retention') or 'no retention'})"
        )
        out.append(partman.run_maintenance_sql(cfg.parent_table).as_string(None) + ";")
    return "\n".join(out) + "\n"
