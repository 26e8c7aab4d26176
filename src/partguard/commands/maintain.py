"""``partguard maintain``: partition maintenance that cannot fail silently.

The incident's timer ran ``CALL partman.run_maintenance_proc()`` and failed for days
("too many clients") without anyone noticing. Here every table is maintained in its own
transaction under ``lock_timeout``/``statement_timeout`` (one stuck table does not stop the
others), connection refusals are retried for a bounded time, partman's silent no-ops and
packed errors are turned into named failures, the result is verified with ``check``'s logic,
and each run is recorded in ``partguard.maintenance_run``/``maintenance_table``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .. import journal
from ..config import Config, TableSpec
from ..coverage import runway as runway_of
from ..db import (
    LOCK_ATTEMPT,
    Conn,
    ConnParams,
    connect_retrying,
    error_line,
    run_locked,
    session_timezone,
)
from ..diagnose import (
    Finding,
    diagnose_table,
    repair_advice,
    runway_findings,
    split_command,
    stuck_lock_message,
)
from ..errors import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    ConnectionFailed,
    PartguardError,
    PermissionDenied,
    UsageError,
)
from ..guards import STANDBY_NOTE, in_recovery, refuse_pooler
from ..humanize import fmt_key, quote_name
from ..inspect.catalog import Table, read_tables, relation_name, resolve
from ..inspect.grid import TimeGrid
from ..inspect.partman import Partman, PartmanConfig, config_for, find_partman, read_configs
from ..inspect.retention import le
from ..inspect.snapshot import Options, Server, TableState, read_server, table_state
from ..plan.premake import Refusal, plan_premake
from .partman_calls import (
    ALREADY_RUNNING,
    LOCK_TIMEOUT_TEXT,
    SKIPPED_SET,
    LockHolder,
    is_lock_timeout,
    maintenance_lock_holder,
    one_line,
    run_maintenance_sql,
    server_message,
    skipped_for_a_lock,
    stuck_partman_locks,
)
from .retention import apply_retention

log = logging.getLogger(__name__)

STATUS_TEXT = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}
# A known failure outranks "could not tell", which outranks a warning.
_RANK = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
# Findings that say whether maintenance did its job, or that its success would hide (an
# unfinished fix keeps rows out of sight); the others are check's business.
VERIFY_CODES = ("default_rows", "runway", "unfinished_fix")


class MaintenanceFailed(PartguardError):
    """Maintenance could not run at all (e.g. no connection within --retry-for)."""

    exit_code = CRITICAL


@dataclass(frozen=True)
class MaintainOptions:
    tables: tuple[str, ...] = ()  # empty: every partman table with automatic_maintenance + the config's
    retry_for: float = 600.0  # seconds to keep retrying refused connections
    lock_timeout: float = 5.0  # one try of a table's locks, in attempts of lock_attempt
    lock_retries: int = 2
    lock_attempt: float = LOCK_ATTEMPT
    statement_timeout: float = 600.0
    fix_default: bool = False
    config: Config = field(default_factory=Config)


@dataclass(frozen=True)
class TableOutcome:
    table: str
    kind: str  # 'partman' or 'native'
    status: str  # ok, failed, blocked, refused, skipped
    severity: int  # Nagios
    message: str = ""
    created: tuple[str, ...] = ()
    covered_until: str | None = None
    runway_seconds: float | None = None  # ids ahead of the largest id, for integer keys
    runway: str | None = None
    detail: str = ""  # the server's full text (partman packs DETAIL/HINT/CONTEXT into it)
    blocker: str | None = None
    findings: tuple[dict[str, Any], ...] = ()
    fixed: bool = False
    retired: tuple[str, ...] = ()  # children native retention detached or dropped

    def line(self) -> str:
        """One journald-friendly line: ``public.fixes: ok, created 2 children, runway 4 days``."""
        head = "ok" if self.severity == OK else STATUS_TEXT[self.severity]
        parts = [head if self.status == "ok" else f"{head} ({self.status})"]
        if self.created:
            parts.append(f"created {len(self.created)} child{'ren' if len(self.created) != 1 else ''}")
        if self.runway is not None:
            parts.append(f"runway {self.runway}")
        if self.message:
            parts.append(self.message)
        return f"{self.table}: {', '.join(parts)}"


@dataclass(frozen=True)
class MaintainReport:
    database: str
    started_at: datetime
    finished_at: datetime
    status: int
    status_text: str
    run_id: int | None
    connect_attempts: int
    tables: tuple[TableOutcome, ...]
    messages: tuple[str, ...] = ()
    skipped: str = ""  # why nothing was maintained on purpose (a hot standby), else ''


@dataclass(frozen=True)
class _Target:
    qualname: str  # schema.table as partman and the journal spell it (unquoted)
    oid: int | None  # None: the config names a table that does not exist
    config: PartmanConfig | None
    spec: TableSpec | None
    ident: tuple[str, str] = ("", "")  # (schema, table)
    skip: str = ""  # why it is reported instead of maintained

    @property
    def kind(self) -> str:
        return "partman" if self.config is not None else "native"


class _PartmanLocked(Exception):
    """run_maintenance returned having done nothing: the advisory lock was taken."""


def maintain(
    params: ConnParams, options: MaintainOptions, *, on_event: Callable[[str], None] | None = None
) -> MaintainReport:
    """Maintain every managed table (or the named ones), verify, and record the run."""
    return _Run(params, options, on_event).run()


class _Run:
    def __init__(self, params: ConnParams, options: MaintainOptions,
                 on_event: Callable[[str], None] | None) -> None:
        self.params, self.opt, self.on_event = params, options, on_event
        self.attempts = 0
        self.notices: list[tuple[str, str]] = []  # (severity, text) the server sent
        self.problems: list[tuple[int, str]] = []  # run-wide: (Nagios severity, message)
        self.messages: list[str] = []
        self.before: dict[str, TableState] = {}  # the first picture of each table in this run
        self.lost: str | None = None
        self.conn: Conn | None = None
        self.partman: Partman | None = None
        self.session_tz = "UTC"

    # --- plumbing ---------------------------------------------------------------

    def event(self, msg: str, level: int = logging.INFO) -> None:
        log.log(level, "%s", msg)
        if self.on_event:
            self.on_event(msg)

    def connect(self) -> Conn:
        def attempt(n: int, why: str) -> None:
            self.attempts += 1
            self.event(f"connect attempt {n} failed: {why}", logging.WARNING)

        conn = connect_retrying(self.params.conninfo("partguard maintain"), self.opt.retry_for,
                                on_attempt=attempt)
        self.attempts += 1
        conn.add_notice_handler(
            lambda d: self.notices.append((d.severity_nonlocalized or d.severity or "", d.message_primary or "")))
        self.conn = conn
        return conn

    @property
    def c(self) -> Conn:
        assert self.conn is not None
        return self.conn

    def locked(self, work: Callable[[Conn], Any], relations: list[int], what: str) -> Any:
        """``work`` in one transaction under lock_timeout (retried) and statement_timeout."""
        ms = sql.Literal(f"{max(1, int(self.opt.statement_timeout * 1000))}ms")

        def wrapped(conn: Conn) -> Any:
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(ms))
            return work(conn)

        return run_locked(self.c, wrapped, lock_timeout=self.opt.lock_timeout,
                          retries=self.opt.lock_retries, relations=relations, what=what,
                          attempt_timeout=self.opt.lock_attempt)

    # --- the run ---------------------------------------------------------------

    def run(self) -> MaintainReport:
        started = datetime.now(UTC)
        try:
            self.connect()
        except ConnectionFailed as exc:
            raise MaintenanceFailed(f"maintenance not run: {exc}") from exc
        run_id: int | None = None
        try:
            database = str(self.c.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
            if in_recovery(self.c):  # an HA pair's timer on the standby: not a failure
                why = f"nothing to do: {STANDBY_NOTE}; maintenance runs on the primary"
                self.event(why)
                return MaintainReport(database, started, datetime.now(UTC), OK, STATUS_TEXT[OK], None,
                                      self.attempts, (), skipped=why)
            refuse_pooler(self.c, self.params.conninfo("partguard maintain"), "maintain")
            self.session_tz = session_timezone(self.c)
            try:
                targets = self.targets()  # usage errors first, before a run is recorded
            except pgerrors.InsufficientPrivilege as exc:
                raise PermissionDenied(
                    f"maintenance not run: {error_line(exc)} (the role needs what pg_partman's "
                    "maintenance role has: USAGE on its schema, ALL on its tables and functions)"
                ) from None
            try:
                journal.ensure_schema(self.c)
                run_id = journal.start_maintenance(self.c, {"tables": [t.qualname for t in targets]})
            except psycopg.Error as exc:
                self.messages.append(f"cannot record the run in schema partguard: {server_message(exc)[0]}")
            outcomes = [self.guarded(t, database) for t in targets]
            if self.lost is None:
                outcomes = self.verify(targets, outcomes, database)
                self.stuck_locks(outcomes)
            status = max([o.severity for o in outcomes] + [p for p, _ in self.problems] + [OK],
                         key=_RANK.__getitem__)
            self.messages.extend(m for _, m in self.problems)
            if self.messages and status == OK:
                status = WARNING
            if self.lost is None and run_id is not None:
                self.record(run_id, outcomes, status)
        finally:
            if self.conn is not None:
                self.conn.close()
        return MaintainReport(database, started, datetime.now(UTC), status, STATUS_TEXT[status], run_id,
                              self.attempts, tuple(outcomes), tuple(self.messages))

    def targets(self) -> list[_Target]:
        self.partman = find_partman(self.c)
        configs = read_configs(self.c, self.partman)
        specs: dict[int, TableSpec] = {}
        missing: list[_Target] = []
        for spec in self.opt.config.tables:
            try:
                specs[resolve(self.c, spec.name)] = spec
            except PartguardError:
                missing.append(_Target(spec.name, None, None, spec,
                                       skip=f"partguard.toml names {spec.name}, which does not exist"))
        if self.opt.tables:
            names, explicit = list(self.opt.tables), True
        else:
            names = [cfg.parent_table for cfg in configs.values() if cfg.automatic_maintenance]
            names += [s.name for s in self.opt.config.tables]
            explicit = False
        out: dict[int, _Target] = {}
        for name in names:
            try:
                oid = resolve(self.c, name)
            except PartguardError:
                if explicit:
                    raise
                if name in configs:
                    missing.append(_Target(name, None, configs[name], None,
                                           skip=f"part_config names {name}, which does not exist"))
                continue
            schema, rel = relation_name(self.c, oid)
            cfg = config_for(configs, schema, rel)
            tspec = specs.get(oid)
            if cfg is not None and tspec is not None and tspec.interval is not None:
                raise UsageError(f"{name} is managed by pg_partman: set its interval and premake in "
                                 "part_config; partguard.toml may only pin its tz")
            if cfg is None and (tspec is None or tspec.interval is None):
                if explicit:
                    raise UsageError(f"{name} is neither managed by pg_partman nor configured in "
                                     "partguard.toml (give it an interval there)")
                missing.append(_Target(f"{schema}.{rel}", None, None, tspec, (schema, rel),
                                       "partguard.toml gives it no interval and pg_partman does not manage it"))
                continue
            out[oid] = _Target(f"{schema}.{rel}", oid, cfg, tspec, (schema, rel))
        unique = {t.qualname: t for t in missing}
        return sorted(out.values(), key=lambda t: t.qualname) + sorted(unique.values(), key=lambda t: t.qualname)

    def guarded(self, target: _Target, database: str) -> TableOutcome:
        """One table; a lost connection is re-established and the table tried once more."""
        for attempt in (1, 2):
            if self.lost is not None:
                return _outcome(target, "failed", CRITICAL, f"not maintained: {self.lost}")
            try:
                return self.maintain_one(target, database)
            except psycopg.Error as exc:
                if not (self.c.closed or self.c.broken):
                    line, full = server_message(exc)
                    return _outcome(target, "failed", CRITICAL, line, detail=full)
                self.event(f"{target.qualname}: connection lost ({server_message(exc)[0]}); reconnecting",
                           logging.WARNING)
                try:
                    self.connect()
                except ConnectionFailed as cf:
                    self.lost = f"connection lost and not re-established: {cf}"
                if attempt == 2:
                    return _outcome(target, "failed", CRITICAL, f"connection lost twice: {error_line(exc)}")
            except PartguardError as exc:
                return _outcome(target, "failed", CRITICAL, str(exc).removeprefix(f"{target.qualname}: "))
        raise AssertionError("unreachable")

    def read_state(self, target: _Target, server: Server) -> TableState:
        assert target.oid is not None
        spec = target.spec
        # partguard.toml's tz is the zone maintain runs partman in (tz_for): partman's, by definition.
        opts = Options(interval=spec.interval if spec else None, tz=spec.tz if spec else None, force_tz=True)
        ident = sql.Identifier(*target.ident).as_string(self.c)

        def work(conn: Conn) -> TableState:
            (table,) = read_tables(conn, [ident])
            return table_state(conn, server, table, target.config, opts)

        state: TableState = self.locked(work, [target.oid], f"{target.qualname}: reading the catalog")
        return state

    def repair(self, table: Table, database: str) -> str:
        return repair_advice(table, self.params.command_args(database))

    def tz_for(self, target: _Target) -> str:
        return (target.spec.tz if target.spec and target.spec.tz else None) or self.session_tz

    def maintain_one(self, target: _Target, database: str) -> TableOutcome:
        if target.skip:
            return _outcome(target, "skipped", WARNING, target.skip)
        self.event(f"{target.qualname}: maintaining ({target.kind})")
        server = read_server(self.c)
        state = self.read_state(target, server)
        self.before.setdefault(target.qualname, state)
        if target.config is not None:
            return self.run_partman(target, state, database)
        done = self.run_native(target, state, server, database)
        assert target.spec is not None
        gone = apply_retention(self.c, state, target.spec, server, self.tz_for(target), on_event=self.event,
                               lock_timeout=self.opt.lock_timeout, retries=self.opt.lock_retries)
        return replace(done, severity=max(done.severity, gone.severity, key=_RANK.__getitem__),
                       message=_join(done.message, gone.message), retired=gone.retired)

    def run_partman(self, target: _Target, state: TableState, database: str) -> TableOutcome:
        assert self.partman is not None and target.config is not None and target.oid is not None
        table, p = state.table, state.default_probe
        zone = state.grid.grid.tz if isinstance(state.grid.grid, TimeGrid) else None
        last_upper = table.children[-1].upper if table.children else None
        if p is not None and p.max_key is not None and (last_upper is None or p.max_key >= last_upper):  # type: ignore[operator]
            # partman would have to create a child over those rows: it fails after scanning the
            # DEFAULT under an ACCESS EXCLUSIVE lock (4.7 may even create children up to them).
            return _outcome(target, "refused", CRITICAL,
                            f"the DEFAULT holds rows up to {fmt_key(p.max_key, zone)}, beyond the "
                            f"newest child (ends {fmt_key(last_upper, zone)}); partman cannot premake "
                            f"over them; {self.repair(table, database)}")
        holder = maintenance_lock_holder(self.c)
        partman, parent = self.partman, target.config.parent_table
        stmt = run_maintenance_sql(partman, parent)
        tz = sql.Literal(self.tz_for(target))
        confirms = "maintenance_last_run" in target.config.raw  # 5.1+ stamps every success

        early = [d.child.name for d, newest in state.partman_drops
                 if newest is not None and le(d.cutoff, newest)]
        cfg_table = sql.Identifier(partman.schema, "part_config")

        def work(conn: Conn) -> list[tuple[str, str]]:
            conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(tz))
            before = _scalar(conn, partman.last_run_sql(parent)) if confirms else None
            self.notices.clear()
            if early:
                # partman's retention would drop a wide child whose later rows are still inside
                # the window (it takes a child's end as start + interval, pg_partman #776): hold
                # retention back for this one call, in this transaction only; nobody else ever
                # sees the change, which is undone before the commit.
                conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS partguard_retention "
                                     "ON COMMIT DROP AS SELECT retention FROM {} WHERE parent_table = {}")
                             .format(cfg_table, sql.Literal(parent)))
                conn.execute(sql.SQL("UPDATE {} SET retention = NULL WHERE parent_table = {}")
                             .format(cfg_table, sql.Literal(parent)))
            try:
                conn.execute(stmt)
            except pgerrors.RaiseException as exc:
                if is_lock_timeout(exc):
                    raise pgerrors.LockNotAvailable(server_message(exc)[0]) from exc
                raise
            if early:
                conn.execute(sql.SQL("UPDATE {} SET retention = (SELECT retention FROM partguard_retention) "
                                     "WHERE parent_table = {}").format(cfg_table, sql.Literal(parent)))
            if any(ALREADY_RUNNING in text for _, text in self.notices):
                raise _PartmanLocked()
            if skipped_for_a_lock(self.notices):
                raise pgerrors.LockNotAvailable(LOCK_TIMEOUT_TEXT)
            said = list(self.notices)
            if confirms:
                after = _scalar(conn, partman.last_run_sql(parent))
                if after is None or after == before:
                    said.append(("UNCONFIRMED", f"maintenance_last_run {'is NULL' if after is None else 'did not move'}"))
            return said
            # partman's own record of a skipped set (maintenance_last_run = NULL) is committed

        relations = [target.oid] + ([table.default.oid] if table.default else [])
        try:
            said = self.locked(work, relations, f"{target.qualname}: partman.run_maintenance")
        except _PartmanLocked:
            return self.blocked(target, maintenance_lock_holder(self.c, partman) or holder)
        except pgerrors.QueryCanceled as exc:
            return _outcome(target, "failed", CRITICAL,
                            f"statement_timeout ({self.opt.statement_timeout:g}s) expired: "
                            f"{server_message(exc)[0]}", detail=server_message(exc)[1])
        outcome = _partman_verdict(target, said)
        if early and outcome.status == "ok":
            names = ", ".join(quote_name(n) for n in early)
            outcome = replace(outcome, severity=WARNING, message=_join(outcome.message, (
                f"partman's retention held back for this run: it would drop {names} while rows of "
                f"it are still inside the window; re-cut it onto the grid: "
                f"{split_command(table, self.params.command_args(database))}")))
        return outcome

    def stuck_locks(self, outcomes: list[TableOutcome]) -> None:
        """A failed ``run_maintenance_proc()`` session keeps partman's session lock: from then on
        every ``CALL run_maintenance_proc()`` (the user's timer, 5.x's background worker) does
        nothing. On 5.x that lock is not the one ``run_maintenance(parent)`` takes, so our own
        run succeeds regardless: report the leak itself, naming the holder."""
        for key, h in stuck_partman_locks(self.c, self.partman):
            if key == "pg_partman run_maintenance" and any(o.status == "blocked" for o in outcomes):
                continue  # 4.x: the same key, already reported per table as "blocked"
            self.problems.append((CRITICAL, stuck_lock_message(key, h)))

    def blocked(self, target: _Target, holder: LockHolder | None) -> TableOutcome:
        who = holder.describe() if holder else "a session that has since let go"
        hint = ""
        if holder is not None and holder.state.startswith("idle"):
            hint = (f"; an idle holder is a failed run_maintenance_proc() that kept its session lock: "
                    f"end it with SELECT pg_terminate_backend({holder.pid})")
        return _outcome(target, "blocked", CRITICAL,
                        f"pg_partman did nothing ('Partman maintenance already running'): its advisory "
                        f"lock is held by {who}{hint}", blocker=who)

    def run_native(self, target: _Target, state: TableState, server: Server, database: str) -> TableOutcome:
        assert target.spec is not None and target.oid is not None
        table = state.table
        grid = state.grid.grid
        naming = target.spec.naming_for(table, grid) if grid is not None else None
        plan = plan_premake(state, target.spec.premake, server.now, self.tz_for(target), naming)
        relations = [target.oid] + ([table.default.oid] if table.default else [])
        created: list[str] = []
        refusal = plan.refused
        for step in plan.steps:
            if step.probe is not None and self.locked(
                partial(_exists, step.probe), relations, f"{target.qualname}: probing the DEFAULT"
            ):
                refusal = Refusal(step.lower, step.upper, "the DEFAULT holds rows of this range")
                break
            try:
                self.locked(partial(_run, step.create), relations, f"{target.qualname}: creating {step.name}")
            except pgerrors.CheckViolation:  # a row for the range arrived since the probe
                refusal = Refusal(step.lower, step.upper, "the DEFAULT holds rows of this range")
                break
            self.event(f"{target.qualname}: created {step.qualname} for {step.lower} … {step.upper}")
            created.append(step.name)
        if refusal is not None:
            zone = grid.tz if isinstance(grid, TimeGrid) else None
            msg = (f"not creating a child for {fmt_key(refusal.lower, zone)} … {fmt_key(refusal.upper, zone)}: "
                   f"{refusal.reason}")
            if "DEFAULT" in refusal.reason:
                msg += f"; {self.repair(table, database)}"
            return _outcome(target, "refused", CRITICAL, msg, created=tuple(created))
        return _outcome(target, "ok", OK, created=tuple(created))

    # --- verification, repair and the journal ------------------------------------

    def verify(self, targets: list[_Target], outcomes: list[TableOutcome], database: str) -> list[TableOutcome]:
        """Re-read each table and judge it with ``check``'s rules (diagnose)."""
        server = read_server(self.c)
        result = []
        for t, o in zip(targets, outcomes):
            if t.oid is None or o.status == "failed":
                # Nothing to verify, or still locked (do not wait twice): judge what was seen.
                first = self.before.get(t.qualname)
                result.append(o if first is None else self.judge(t, o, first, server))
                continue
            try:
                st = self.read_state(t, server)
            except (PartguardError, psycopg.Error) as exc:
                result.append(replace(o, message=_join(o.message, f"cannot verify: {error_line(exc)}")))
                continue
            o = self.judge(t, o, st, server)
            if self.opt.fix_default and any(f["code"] == "default_rows" for f in o.findings):
                o = self.fix_default(t, o, database)
            result.append(o)
        return result

    def judge(self, t: _Target, o: TableOutcome, st: TableState, server: Server) -> TableOutcome:
        """Runway at least premake and no rows in the DEFAULT, else the finding's severity."""
        srv = replace(server, timezone=self.tz_for(t),  # the zone wall-clock keys are read in
                      target=self.params.command_args(server.database))
        mine = [f for f in diagnose_table(st, srv) if f.code != "maintenance_stale"]
        rw = runway_of(st, srv)
        if t.config is None and t.spec is not None and rw is not None:
            # Without partman, premake is the one partguard.toml asks for, not partman's default.
            rw = replace(rw, premake=t.spec.premake)
            mine = [f for f in mine if f.code != "runway"] + runway_findings(st, rw)
        first = self.before.get(t.qualname)
        had = {c.name for c in (first or st).table.children}
        created = tuple(sorted({c.name for c in st.table.children} - had))
        severity, msg = o.severity, o.message
        for f in mine:
            if f.code in VERIFY_CODES:
                severity = max(severity, f.severity.nagios, key=_RANK.__getitem__)
                if not (f.code == "default_rows" and o.status == "refused"):
                    msg = _join(msg, f.message)
        ahead = None if rw is None else (rw.ids if rw.ids is not None else rw.seconds)
        covered = None if rw is None else (rw.frontier if rw.frontier is not None else rw.last_upper)
        return replace(
            o, severity=severity, message=msg, created=created,
            covered_until=None if covered is None else str(covered),
            runway_seconds=None if ahead is None else float(ahead),
            runway=_human_runway(ahead, st), findings=tuple(_finding_dict(f) for f in mine),
        )

    def fix_default(self, t: _Target, o: TableOutcome, database: str) -> TableOutcome:
        """``--fix-default``: run the repair itself (opt-in: it moves rows and takes locks),
        then maintain the table again, since a refused table was not premade."""
        try:
            fix_mod: Any = importlib.import_module("partguard.commands.fix")
        except ModuleNotFoundError:
            return replace(o, message=_join(o.message, "--fix-default: partguard fix is not available"))
        self.event(f"{t.qualname}: --fix-default: repairing the DEFAULT")
        spec = t.spec if t.config is None else None
        req = fix_mod.FixRequest(
            table=sql.Identifier(*t.ident).as_string(self.c), lock_timeout=self.opt.lock_timeout,
            lock_attempt=self.opt.lock_attempt,
            interval=spec.interval if spec else None, tz=spec.tz if spec else None,
        )
        try:
            done = fix_mod.fix(self.c, self.params.conninfo("partguard maintain"), req)
        except (PartguardError, psycopg.Error) as exc:
            return replace(o, message=_join(o.message, f"--fix-default failed: {error_line(exc)}"))
        again = self.guarded(t, database)
        server = read_server(self.c)
        note = f"DEFAULT repaired by partguard fix ({getattr(done, 'status', 'done')}"
        note += f", {getattr(done, 'rows_moved', 0)} rows moved)"
        if again.status != "ok":
            return replace(again, message=_join(note, again.message), fixed=True)
        st = self.read_state(t, server)
        created = o.created
        judged = self.judge(t, replace(again, message=note), st, server)
        return replace(judged, created=tuple(sorted(set(created) | set(judged.created))), fixed=True)

    def record(self, run_id: int, outcomes: list[TableOutcome], status: int) -> None:
        try:
            with self.c.transaction():
                for o in outcomes:
                    ok = o.status == "ok" and o.severity < CRITICAL
                    journal.record_maintenance_table(self.c, run_id, o.table, "ok" if ok else o.status,
                                                     o.message)
                journal.finish_maintenance(self.c, run_id, STATUS_TEXT[status],
                                           {"tables": len(outcomes), "failed": [o.table for o in outcomes
                                                                                if o.severity >= CRITICAL]})
        except psycopg.Error as exc:
            self.messages.append(f"cannot record the run: {server_message(exc)[0]}")


def _partman_verdict(target: _Target, said: list[tuple[str, str]]) -> TableOutcome:
    """partman's call counts as done only if partman confirms it: 5.5 catches each set's error
    and raises only a WARNING ("skipped partition set"), setting maintenance_last_run NULL."""
    skipped = [text for sev, text in said if sev == "WARNING" and SKIPPED_SET in text]
    if skipped:
        return _outcome(target, "failed", CRITICAL, one_line(skipped[0]), detail="\n".join(skipped))
    unconfirmed = [text for sev, text in said if sev == "UNCONFIRMED"]
    if unconfirmed:
        return _outcome(target, "failed", CRITICAL,
                        f"pg_partman did not confirm the run ({unconfirmed[0]})")
    warnings = [text for sev, text in said if sev == "WARNING"]
    return _outcome(target, "ok", OK, detail="\n".join(warnings))


def _scalar(conn: Conn, query: sql.Composed) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _outcome(target: _Target, status: str, severity: int, message: str = "", **kw: Any) -> TableOutcome:
    return TableOutcome(target.qualname, target.kind, status, severity, message, **kw)


def _finding_dict(f: Finding) -> dict[str, Any]:
    return {"code": f.code, "severity": f.severity.value, "message": f.message, "detail": f.detail}


def _exists(query: sql.Composed, conn: Conn) -> bool:
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _run(stmt: sql.Composed, conn: Conn) -> None:
    conn.execute(stmt)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else a or b


def _human_runway(ahead: float | None, st: TableState) -> str | None:
    if ahead is None:
        return None
    if st.table.key_kind == "int":
        return f"{int(ahead)} ids"
    if ahead <= 0:
        return "none"
    for unit, secs in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if ahead >= 2 * secs or unit == "minute":
            n = int(ahead // secs)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    raise AssertionError("unreachable")

