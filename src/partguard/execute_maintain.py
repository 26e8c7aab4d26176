"""The executors of a maintenance run, next to ``execute.py`` (a repair's): the only code of
``maintain`` that opens a transaction or takes a lock.

* ``Session``: the run's connection (bounded connect retry, reconnect after a loss, the
  server's notices) and ``locked``, every transaction of the run: ``db.run_locked`` (short
  lock attempts, bounded retries, the blocker named) under ``statement_timeout``;
* ``read_state``: one table's snapshot, read under the same lock discipline;
* ``call_partman``: one ``run_maintenance(parent)`` call, its silent no-ops turned into
  ``PartmanCall.locked`` or a lock timeout, its retention held back when asked;
* ``premake``: a native table's ``PremakePlan``, child by child;
* ``retire``: native retention (``commands/retention.py`` executes its plan);
* ``start_journal`` / ``record``: the run in ``partguard.maintenance_run``/``_table``.

What to run and what the results mean is decided in ``plan/maintain.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from psycopg import errors as pgerrors
from psycopg import sql

from . import journal
from .commands.retention import RetentionOutcome, apply_retention
from .config import TableSpec
from .db import LOCK_ATTEMPT, Conn, connect_retrying, run_locked
from .errors import CRITICAL
from .inspect.catalog import read_tables
from .inspect.partman import Partman
from .inspect.snapshot import Server, TableState, table_state
from .partman_calls import (
    ALREADY_RUNNING,
    LOCK_TIMEOUT_TEXT,
    LockHolder,
    is_lock_timeout,
    maintenance_lock_holder,
    run_maintenance_sql,
    server_message,
    skipped_for_a_lock,
)
from .plan.maintain import UNCONFIRMED, TableOutcome, Target, default_refusal
from .plan.premake import PremakePlan, Refusal

log = logging.getLogger(__name__)

T = TypeVar("T")


class Event(Protocol):
    """Where a run reports progress (the log, and the caller's ``on_event``)."""

    def __call__(self, msg: str, level: int = logging.INFO) -> None: ...


@dataclass(frozen=True)
class Limits:
    lock_timeout: float = 5.0  # one try of a table's locks, in attempts of lock_attempt
    lock_retries: int = 2
    lock_attempt: float = LOCK_ATTEMPT
    statement_timeout: float = 600.0


class Session:
    """One maintenance run's connection; ``lost`` is set once it cannot be re-established."""

    def __init__(self, conninfo: str, retry_for: float, limits: Limits, on_event: Event) -> None:
        self.conninfo, self.retry_for, self.limits, self._event = (
            conninfo,
            retry_for,
            limits,
            on_event,
        )
        self.attempts = 0
        self.notices: list[tuple[str, str]] = []  # (severity, text) the server sent
        self.lost: str | None = None
        self._conn: Conn | None = None

    def connect(self) -> Conn:
        """Connect, retrying refusals for ``retry_for`` (ConnectionFailed after that)."""

        def attempt(n: int, why: str) -> None:
            self.attempts += 1
            self._event(f"connect attempt {n} failed: {why}", logging.WARNING)

        conn = connect_retrying(self.conninfo, self.retry_for, on_attempt=attempt)
        self.attempts += 1
        conn.add_notice_handler(
            lambda d: self.notices.append(
                (d.severity_nonlocalized or d.severity or "", d.message_primary or "")
            )
        )
        self._conn = conn
        return conn

    @property
    def conn(self) -> Conn:
        assert self._conn is not None, "Session.connect() first"
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def locked(self, work: Callable[[Conn], T], relations: Sequence[int], what: str) -> T:
        """``work`` in one transaction under lock_timeout (retried) and statement_timeout."""
        lim = self.limits
        ms = sql.Literal(f"{max(1, int(lim.statement_timeout * 1000))}ms")

        def wrapped(conn: Conn) -> T:
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(ms))
            return work(conn)

        return run_locked(
            self.conn,
            wrapped,
            lock_timeout=lim.lock_timeout,
            retries=lim.lock_retries,
            relations=relations,
            what=what,
            attempt_timeout=lim.lock_attempt,
        )


def relations(target: Target, state: TableState) -> list[int]:
    """The relations whose lock holders a failed try names: the parent and its DEFAULT."""
    assert target.oid is not None
    return [target.oid] + ([state.table.default.oid] if state.table.default else [])


def read_state(session: Session, target: Target, server: Server) -> TableState:
    assert target.oid is not None
    ident = sql.Identifier(*target.ident).as_string(session.conn)

    def work(conn: Conn) -> TableState:
        (table,) = read_tables(conn, [ident])
        return table_state(conn, server, table, target.config, target.read_options())

    return session.locked(work, [target.oid], f"{target.qualname}: reading the catalog")


@dataclass(frozen=True)
class PartmanCall:
    said: tuple[
        tuple[str, str], ...
    ] = ()  # what the server sent, + UNCONFIRMED when 5.1+ did not stamp
    locked: bool = False  # partman did nothing: its advisory lock was held
    holder: LockHolder | None = None  # by whom (when locked)


class _Locked(Exception):
    """run_maintenance returned having done nothing: the advisory lock was taken."""


def call_partman(
    session: Session,
    partman: Partman,
    target: Target,
    state: TableState,
    tz: str,
    *,
    hold_retention: bool,
    confirms: bool,
) -> PartmanCall:
    """``run_maintenance(parent)`` in one transaction under the run's lock discipline, in the
    table's zone. partman 5.5's swallowed lock timeouts are raised as lock timeouts (and so
    retried); ``QueryCanceled`` (statement_timeout) propagates."""
    assert target.config is not None
    holder = maintenance_lock_holder(session.conn)
    parent = target.config.parent_table
    stmt = run_maintenance_sql(partman, parent)
    zone = sql.Literal(tz)
    cfg_table = sql.Identifier(partman.schema, "part_config")
    where = sql.SQL("WHERE parent_table = {}").format(sql.Literal(parent))

    def work(conn: Conn) -> tuple[tuple[str, str], ...]:
        conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(zone))
        before = _scalar(conn, partman.last_run_sql(parent)) if confirms else None
        session.notices.clear()
        if hold_retention:
            # partman's retention would drop a wide child whose later rows are still inside
            # the window: hold retention back for this one call, in this transaction only;
            # nobody else ever sees the change, which is undone before the commit.
            conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS partguard_retention "
                    "ON COMMIT DROP AS SELECT retention FROM {} {}"
                ).format(cfg_table, where)
            )
            conn.execute(sql.SQL("UPDATE {} SET retention = NULL {}").format(cfg_table, where))
        try:
            conn.execute(stmt)
        except pgerrors.RaiseException as exc:
            if is_lock_timeout(exc):
                raise pgerrors.LockNotAvailable(server_message(exc)[0]) from exc
            raise
        if hold_retention:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET retention = (SELECT retention FROM partguard_retention) {}"
                ).format(cfg_table, where)
            )
        if any(ALREADY_RUNNING in text for _, text in session.notices):
            raise _Locked()
        if skipped_for_a_lock(session.notices):
            raise pgerrors.LockNotAvailable(LOCK_TIMEOUT_TEXT)
        said = list(session.notices)
        if confirms:
            after = _scalar(conn, partman.last_run_sql(parent))
            if after is None or after == before:
                said.append(
                    (
                        UNCONFIRMED,
                        f"maintenance_last_run {'is NULL' if after is None else 'did not move'}",
                    )
                )
        return tuple(said)
        # partman's own record of a skipped set (maintenance_last_run = NULL) is committed

    try:
        said = session.locked(
            work, relations(target, state), f"{target.qualname}: partman.run_maintenance"
        )
    except _Locked:
        return PartmanCall(
            locked=True, holder=maintenance_lock_holder(session.conn, partman) or holder
        )
    return PartmanCall(said)


def premake(
    session: Session, target: Target, state: TableState, plan: PremakePlan, on_event: Event
) -> tuple[tuple[str, ...], Refusal | None]:
    """Create the plan's children one transaction each; stop at the first range the DEFAULT
    holds rows of (probed first; PostgreSQL's own CHECK catches a row that arrives since)."""
    rels = relations(target, state)
    created: list[str] = []
    for step in plan.steps:
        probe = step.probe
        if probe is not None and session.locked(
            partial(_exists, probe), rels, f"{target.qualname}: probing the DEFAULT"
        ):
            return tuple(created), default_refusal(step.lower, step.upper)
        try:
            session.locked(
                partial(_run, step.create), rels, f"{target.qualname}: creating {step.name}"
            )
        except pgerrors.CheckViolation:  # a row for the range arrived since the probe
            return tuple(created), default_refusal(step.lower, step.upper)
        on_event(f"{target.qualname}: created {step.qualname} for {step.lower} … {step.upper}")
        created.append(step.name)
    return tuple(created), plan.refused


def retire(
    session: Session, state: TableState, spec: TableSpec, server: Server, tz: str, on_event: Event
) -> RetentionOutcome:
    """Native retention: never raises, its failures are the outcome."""
    lim = session.limits
    return apply_retention(
        session.conn,
        state,
        spec,
        server,
        tz,
        on_event=on_event,
        lock_timeout=lim.lock_timeout,
        retries=lim.lock_retries,
    )


def start_journal(conn: Conn, targets: Sequence[Target]) -> int:
    journal.ensure_schema(conn)
    return journal.start_maintenance(conn, {"tables": [t.qualname for t in targets]})


def record(conn: Conn, run_id: int, outcomes: Sequence[TableOutcome], status_text: str) -> None:
    """Each table's outcome and the run's status, in one transaction."""
    with conn.transaction():
        for o in outcomes:
            journal.record_maintenance_table(conn, run_id, o.table, o.status, o.message)
        journal.finish_maintenance(
            conn,
            run_id,
            status_text,
            {
                "tables": len(outcomes),
                "failed": [o.table for o in outcomes if o.severity >= CRITICAL],
            },
        )


def _scalar(conn: Conn, query: sql.Composed) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _exists(query: sql.Composed, conn: Conn) -> bool:
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _run(stmt: sql.Composed, conn: Conn) -> None:
    conn.execute(stmt)
