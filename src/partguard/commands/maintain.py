"""``partguard maintain``: partition maintenance that cannot fail silently.

The incident's timer ran ``CALL partman.run_maintenance_proc()`` and failed for days
("too many clients") without anyone noticing. Here every table is maintained in its own
transaction under ``lock_timeout``/``statement_timeout`` (one stuck table does not stop the
others), connection refusals are retried for a bounded time, partman's silent no-ops and
packed errors are turned into named failures, the result is verified with ``check``'s logic,
and each run is recorded in ``partguard.maintenance_run``/``maintenance_table``.

Like ``check`` and ``fix``, this module only orchestrates: read (``inspect/``), decide
(``plan/maintain.py``: targets, verdicts), act (``execute_maintain.py``: every transaction
and lock of the run), then read and decide again (verification).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ..config import Config
from ..db import LOCK_ATTEMPT, Conn, ConnParams, error_line, scalar, session_timezone
from ..errors import CRITICAL, OK, WARNING, ConnectionFailed, PartguardError, PermissionDenied
from ..execute_maintain import (
    Event,
    Limits,
    Session,
    call_partman,
    premake,
    read_state,
    record,
    retire,
    start_journal,
)
from ..guards import STANDBY_NOTE, in_recovery, refuse_pooler
from ..inspect.catalog import relation_name, resolve
from ..inspect.partman import Partman, find_partman, read_configs
from ..inspect.snapshot import TableState, read_server
from ..partman_calls import server_message, stuck_partman_locks
from ..plan.maintain import (
    STATUS_TEXT,
    VERIFY_CODES,
    Context,
    MaintainReport,
    Resolved,
    TableOutcome,
    Target,
    after_repair,
    blocked,
    confirms,
    early_drops,
    held_back,
    join,
    judge,
    native_verdict,
    partman_verdict,
    plan_targets,
    premake_plan,
    refuse_partman,
    repair_note,
    run_status,
    stuck_lock_problems,
    target_names,
    wants_repair,
    with_retention,
)
from . import exact, fix

__all__ = [
    "STATUS_TEXT",
    "VERIFY_CODES",
    "MaintainOptions",
    "MaintainReport",
    "MaintenanceFailed",
    "TableOutcome",
    "maintain",
]

log = logging.getLogger(__name__)


class MaintenanceFailed(PartguardError):
    """Maintenance could not run at all (e.g. no connection within --retry-for)."""

    exit_code = CRITICAL


@dataclass(frozen=True)
class MaintainOptions:
    tables: tuple[
        str, ...
    ] = ()  # empty: every partman table with automatic_maintenance + the config's
    retry_for: float = 600.0  # seconds to keep retrying refused connections
    lock_timeout: float = 5.0  # one try of a table's locks, in attempts of lock_attempt
    lock_retries: int = 2
    lock_attempt: float = LOCK_ATTEMPT
    statement_timeout: float = 600.0
    fix_default: bool = False
    config: Config = field(default_factory=Config)


def maintain(
    params: ConnParams, options: MaintainOptions, *, on_event: Callable[[str], None] | None = None
) -> MaintainReport:
    """Maintain every managed table (or the named ones), verify, and record the run."""

    def event(msg: str, level: int = logging.INFO) -> None:
        log.log(level, "%s", msg)
        if on_event:
            on_event(msg)

    started = datetime.now(UTC)
    limits = Limits(
        options.lock_timeout, options.lock_retries, options.lock_attempt, options.statement_timeout
    )
    session = Session(params.conninfo("partguard maintain"), options.retry_for, limits, event)
    try:
        session.connect()
    except ConnectionFailed as exc:
        raise MaintenanceFailed(f"maintenance not run: {exc}") from exc
    try:
        return _run(params, options, session, started, event)
    finally:
        session.close()


@dataclass(frozen=True)
class _Job:
    """What the tables of one run share. Only the session (its connection) and ``first``
    (each table's first picture in this run, to tell what was created) change."""

    session: Session
    options: MaintainOptions
    ctx: Context
    partman: Partman | None
    event: Event
    first: dict[str, TableState] = field(default_factory=dict)


def _run(
    params: ConnParams, options: MaintainOptions, session: Session, started: datetime, event: Event
) -> MaintainReport:
    conn = session.conn
    database = str(scalar(conn, "SELECT current_database()"))
    if in_recovery(conn):  # an HA pair's timer on the standby: not a failure
        why = f"nothing to do: {STANDBY_NOTE}; maintenance runs on the primary"
        event(why, logging.INFO)
        return MaintainReport(
            database,
            started,
            datetime.now(UTC),
            OK,
            STATUS_TEXT[OK],
            None,
            session.attempts,
            (),
            skipped=why,
        )
    refuse_pooler(conn, params.conninfo("partguard maintain"), "maintain")
    ctx = Context(params.command_args(database), session_timezone(conn))
    try:
        partman, targets = _targets(conn, options)  # usage errors first, before a run is recorded
    except pgerrors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"maintenance not run: {error_line(exc)} (the role needs what pg_partman's "
            "maintenance role has: USAGE on its schema, ALL on its tables and functions)"
        ) from None
    messages: list[str] = []
    run_id: int | None = None
    try:
        run_id = start_journal(conn, targets)
    except psycopg.Error as exc:
        messages.append(f"cannot record the run in schema partguard: {server_message(exc)[0]}")
    job = _Job(session, options, ctx, partman, event)
    outcomes = [_guarded(job, t) for t in targets]
    problems: list[tuple[int, str]] = []
    if session.lost is None:
        outcomes = _verify(job, targets, outcomes)
        problems = stuck_lock_problems(stuck_partman_locks(session.conn, partman), outcomes)
    status = run_status(outcomes, problems, messages)
    messages.extend(m for _, m in problems)
    if session.lost is None and run_id is not None:
        try:
            record(session.conn, run_id, outcomes, STATUS_TEXT[status])
        except psycopg.Error as exc:
            messages.append(f"cannot record the run: {server_message(exc)[0]}")
    return MaintainReport(
        database,
        started,
        datetime.now(UTC),
        status,
        STATUS_TEXT[status],
        run_id,
        session.attempts,
        tuple(outcomes),
        tuple(messages),
    )


def _targets(conn: Conn, options: MaintainOptions) -> tuple[Partman | None, list[Target]]:
    """Read what the decision needs (partman, part_config, the names resolved), then decide."""
    partman = find_partman(conn)
    configs = read_configs(conn, partman)
    lookup = {
        name: _lookup(conn, name) for name in target_names(configs, options.config, options.tables)
    }
    return partman, plan_targets(lookup, configs, options.config, options.tables)


def _lookup(conn: Conn, name: str) -> Resolved | PartguardError:
    try:
        oid = resolve(conn, name)
    except PartguardError as exc:
        return exc
    return (oid, *relation_name(conn, oid))


def _guarded(job: _Job, target: Target) -> TableOutcome:
    """One table; a lost connection is re-established and the table tried once more."""
    session = job.session
    for attempt in (1, 2):
        if session.lost is not None:
            return target.outcome("failed", CRITICAL, f"not maintained: {session.lost}")
        try:
            return _maintain_one(job, target)
        except psycopg.Error as exc:
            if not (session.conn.closed or session.conn.broken):
                line, full = server_message(exc)
                return target.outcome("failed", CRITICAL, line, detail=full)
            job.event(
                f"{target.qualname}: connection lost ({server_message(exc)[0]}); reconnecting",
                logging.WARNING,
            )
            try:
                session.connect()
            except ConnectionFailed as cf:
                session.lost = f"connection lost and not re-established: {cf}"
            if attempt == 2:
                return target.outcome(
                    "failed", CRITICAL, f"connection lost twice: {error_line(exc)}"
                )
        except PartguardError as exc:
            return target.outcome("failed", CRITICAL, str(exc).removeprefix(f"{target.qualname}: "))
    raise AssertionError("unreachable")


def _maintain_one(job: _Job, target: Target) -> TableOutcome:
    if target.skip:
        return target.outcome("skipped", WARNING, target.skip)
    job.event(f"{target.qualname}: maintaining ({target.kind})", logging.INFO)
    server = read_server(job.session.conn)
    state = read_state(job.session, target, server)
    job.first.setdefault(target.qualname, state)
    if target.config is not None:
        return _partman(job, target, state)
    assert target.spec is not None
    tz = job.ctx.zone(target)
    plan = premake_plan(target, state, server, tz)
    created, refusal = premake(job.session, target, state, plan, job.event)
    done = native_verdict(target, state, created, refusal, job.ctx.command)
    gone = retire(job.session, state, target.spec, server, tz, job.event)
    return with_retention(done, gone.severity, gone.message, gone.retired)


def _partman(job: _Job, target: Target, state: TableState) -> TableOutcome:
    assert job.partman is not None and target.config is not None
    refused = refuse_partman(target, state, job.ctx.command)
    if refused is not None:
        return refused
    early = early_drops(state)
    try:
        call = call_partman(
            job.session,
            job.partman,
            target,
            state,
            job.ctx.zone(target),
            hold_retention=bool(early),
            confirms=confirms(target.config),
        )
    except pgerrors.QueryCanceled as exc:
        line, full = server_message(exc)
        return target.outcome(
            "failed",
            CRITICAL,
            f"statement_timeout ({job.options.statement_timeout:g}s) expired: {line}",
            detail=full,
        )
    if call.locked:
        return blocked(target, call.holder)
    return held_back(partman_verdict(target, call.said), early, state.table, job.ctx.command)


def _verify(job: _Job, targets: list[Target], outcomes: list[TableOutcome]) -> list[TableOutcome]:
    """Re-read each table and judge it with ``check``'s rules (diagnose)."""
    server = read_server(job.session.conn)
    result = []
    for t, o in zip(targets, outcomes, strict=True):
        first = job.first.get(t.qualname)
        if t.oid is None or o.status == "failed":
            # Nothing to verify, or still locked (do not wait twice): judge what was seen.
            result.append(o if first is None else judge(t, o, first, first, server, job.ctx))
            continue
        try:
            st = read_state(job.session, t, server)
        except (PartguardError, psycopg.Error) as exc:
            result.append(replace(o, message=join(o.message, f"cannot verify: {error_line(exc)}")))
            continue
        o = judge(t, o, st, first, server, job.ctx)
        if job.options.fix_default and wants_repair(o):
            o = _fix_default(job, t, o)
        result.append(o)
    return result


def _fix_default(job: _Job, t: Target, o: TableOutcome) -> TableOutcome:
    """``--fix-default``: run the repair itself (opt-in: it moves rows and takes locks),
    then maintain the table again, since a refused table was not premade."""
    job.event(f"{t.qualname}: --fix-default: repairing the DEFAULT", logging.INFO)
    conn, spec = job.session.conn, (t.spec if t.config is None else None)
    req = fix.FixRequest(
        table=sql.Identifier(*t.ident).as_string(conn),
        lock_timeout=job.options.lock_timeout,
        lock_attempt=job.options.lock_attempt,
        interval=spec.interval if spec else None,
        tz=spec.tz if spec else None,
    )
    try:
        done = exact.fix_exact(conn, job.session.conninfo, req)  # auto: ends with exact children
    except (PartguardError, psycopg.Error) as exc:
        return replace(o, message=join(o.message, f"--fix-default failed: {error_line(exc)}"))
    again = _guarded(job, t)
    server = read_server(job.session.conn)
    state = read_state(job.session, t, server) if again.status == "ok" else None
    return after_repair(
        t,
        o,
        again,
        repair_note(done.status, done.rows_moved),
        state,
        job.first.get(t.qualname),
        server,
        job.ctx,
    )
