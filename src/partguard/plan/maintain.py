"""What ``partguard maintain`` does and what it concludes: pure, like ``plan/fix.py``.

Everything here is a function of catalog snapshots (names resolved, ``part_config``,
``TableState``), ``partguard.toml`` and the outcomes the executors report
(``execute_maintain.py``); nothing here talks to a server. ``commands/maintain.py`` reads,
asks this module, runs what it decided and asks again:

* ``plan_targets``: which tables, as partman or native targets, and which are only reported;
* ``refuse_partman`` / ``early_drops``: whether partman may be called, and whether its
  retention must be held back for this call;
* ``partman_verdict`` / ``blocked`` / ``native_verdict`` / ``with_retention``: what each
  executor's result means;
* ``judge``: the verdict after the fact, with ``check``'s rules (runway at least premake, no
  rows in the DEFAULT);
* ``stuck_lock_problems`` / ``run_status``: the run-wide findings and the exit status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..config import Config, TableSpec
from ..coverage import runway as runway_of
from ..db import one_line
from ..diagnose import (
    Finding,
    diagnose_table,
    repair_advice,
    runway_findings,
    split_command,
    stuck_lock_message,
)
from ..errors import CRITICAL, OK, UNKNOWN, WARNING, PartguardError, UsageError
from ..humanize import fmt_key, quote_name
from ..inspect.catalog import Table
from ..inspect.grid import TimeGrid, key_lt
from ..inspect.locks import LockHolder
from ..inspect.partman import SKIPPED_SET, PartmanConfig, config_for
from ..inspect.retention import le
from ..inspect.snapshot import Options, Server, TableState
from .premake import PremakePlan, Refusal, plan_premake

STATUS_TEXT = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}
# A known failure outranks "could not tell", which outranks a warning.
RANK = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
# Findings that say whether maintenance did its job, or that its success would hide (an
# unfinished fix keeps rows out of sight); the others are check's business.
VERIFY_CODES = ("default_rows", "runway", "unfinished_fix")
# What the partman executor adds to partman's own notices when 5.1+ did not stamp the run.
UNCONFIRMED = "UNCONFIRMED"


def worse(*severities: int) -> int:
    """The worst Nagios severity (CRITICAL > UNKNOWN > WARNING > OK)."""
    return max((OK, *severities), key=RANK.__getitem__)


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
            parts.append(
                f"created {len(self.created)} child{'ren' if len(self.created) != 1 else ''}"
            )
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
class Target:
    qualname: str  # schema.table as partman and the journal spell it (unquoted)
    oid: int | None  # None: the config names a table that does not exist
    config: PartmanConfig | None
    spec: TableSpec | None
    ident: tuple[str, str] = ("", "")  # (schema, table)
    skip: str = ""  # why it is reported instead of maintained

    @property
    def kind(self) -> str:
        return "partman" if self.config is not None else "native"

    def zone(self, session_tz: str) -> str:
        """The zone partman (or native premaking) runs in: the toml's tz, else the session's."""
        return (self.spec.tz if self.spec and self.spec.tz else None) or session_tz

    def read_options(self) -> Options:
        # partguard.toml's tz is the zone maintain runs partman in (zone()): partman's, by
        # definition.
        spec = self.spec
        return Options(
            interval=spec.interval if spec else None, tz=spec.tz if spec else None, force_tz=True
        )

    def outcome(self, status: str, severity: int, message: str = "", **kw: Any) -> TableOutcome:
        return TableOutcome(self.qualname, self.kind, status, severity, message, **kw)


@dataclass(frozen=True)
class Context:
    """What every verdict of one run needs to know besides the table."""

    command: str  # the connection options partguard prints in commands (``-d app``)
    session_tz: str = "UTC"  # the session's TimeZone: the zone of a table partguard.toml gives none

    def zone(self, target: Target) -> str:
        return target.zone(self.session_tz)


# (oid, schema, table) of a name as resolved in the catalog, or why it could not be.
Resolved = tuple[int, str, str]
Lookup = Mapping[str, "Resolved | PartguardError"]


def target_names(
    configs: Mapping[str, PartmanConfig], config: Config, tables: Sequence[str]
) -> list[str]:
    """Every name ``plan_targets`` will ask about (to be resolved against the catalog first)."""
    names = [s.name for s in config.tables] + list(tables)
    if not tables:
        names += [c.parent_table for c in configs.values() if c.automatic_maintenance]
    return list(dict.fromkeys(names))


def plan_targets(
    lookup: Lookup, configs: dict[str, PartmanConfig], config: Config, tables: Sequence[str] = ()
) -> list[Target]:
    """The tables to maintain (sorted), then those only reported (a config naming a missing
    table, a table with neither partman nor an interval). Named ``tables`` must all be
    maintainable: anything else is an error, before a run is recorded."""
    specs: dict[int, TableSpec] = {}
    missing: list[Target] = []
    for spec in config.tables:
        found = lookup[spec.name]
        if isinstance(found, PartguardError):
            missing.append(
                Target(
                    spec.name,
                    None,
                    None,
                    spec,
                    skip=f"partguard.toml names {spec.name}, which does not exist",
                )
            )
        else:
            specs[found[0]] = spec
    explicit = bool(tables)
    if explicit:
        names = list(tables)
    else:
        names = [cfg.parent_table for cfg in configs.values() if cfg.automatic_maintenance]
        names += [s.name for s in config.tables]
    out: dict[int, Target] = {}
    for name in names:
        found = lookup[name]
        if isinstance(found, PartguardError):
            if explicit:
                raise found
            if name in configs:
                missing.append(
                    Target(
                        name,
                        None,
                        configs[name],
                        None,
                        skip=f"part_config names {name}, which does not exist",
                    )
                )
            continue
        oid, schema, rel = found
        cfg = config_for(configs, schema, rel)
        tspec = specs.get(oid)
        if cfg is not None and tspec is not None and tspec.interval is not None:
            raise UsageError(
                f"{name} is managed by pg_partman: set its interval and premake in "
                "part_config; partguard.toml may only pin its tz"
            )
        if cfg is None and (tspec is None or tspec.interval is None):
            if explicit:
                raise UsageError(
                    f"{name} is neither managed by pg_partman nor configured in "
                    "partguard.toml (give it an interval there)"
                )
            missing.append(
                Target(
                    f"{schema}.{rel}",
                    None,
                    None,
                    tspec,
                    (schema, rel),
                    "partguard.toml gives it no interval and pg_partman does not manage it",
                )
            )
            continue
        out[oid] = Target(f"{schema}.{rel}", oid, cfg, tspec, (schema, rel))
    unique = {t.qualname: t for t in missing}
    return sorted(out.values(), key=lambda t: t.qualname) + sorted(
        unique.values(), key=lambda t: t.qualname
    )


# --- pg_partman ---------------------------------------------------------------------------


def refuse_partman(target: Target, state: TableState, command: str) -> TableOutcome | None:
    """Refused before partman is called: the DEFAULT holds rows at or beyond the newest
    child. partman would have to create a child over them: it fails after scanning the
    DEFAULT under an ACCESS EXCLUSIVE lock (4.7 may even create children up to them)."""
    table, p = state.table, state.default_probe
    zone = _zone(state)
    last_upper = table.children[-1].upper if table.children else None
    if p is None or p.max_key is None or (last_upper is not None and key_lt(p.max_key, last_upper)):
        return None
    return target.outcome(
        "refused",
        CRITICAL,
        f"the DEFAULT holds rows up to {fmt_key(p.max_key, zone)}, beyond the "
        f"newest child (ends {fmt_key(last_upper, zone)}); partman cannot premake "
        f"over them; {repair_advice(table, command)}",
    )


def early_drops(state: TableState) -> tuple[str, ...]:
    """Children partman's retention would drop while rows of them are still inside the
    window (it takes a child's end as start + interval, pg_partman #776): for these,
    retention is held back for the call."""
    return tuple(
        d.child.name
        for d, newest in state.partman_drops
        if newest is not None and le(d.cutoff, newest)
    )


def confirms(config: PartmanConfig) -> bool:
    """partman 5.1+ stamps ``maintenance_last_run`` on every success: a call that did not
    move it did not happen."""
    return "maintenance_last_run" in config.raw


def partman_verdict(target: Target, said: Sequence[tuple[str, str]]) -> TableOutcome:
    """partman's call counts as done only if partman confirms it: 5.5 catches each set's error
    and raises only a WARNING ("skipped partition set"), setting maintenance_last_run NULL.
    ``said`` is what the server sent during the call, (severity, text), plus the executor's
    ``UNCONFIRMED`` line when 5.1+ did not stamp the run."""
    skipped = [text for sev, text in said if sev == "WARNING" and SKIPPED_SET in text]
    if skipped:
        return target.outcome("failed", CRITICAL, one_line(skipped[0]), detail="\n".join(skipped))
    unconfirmed = [text for sev, text in said if sev == UNCONFIRMED]
    if unconfirmed:
        return target.outcome(
            "failed", CRITICAL, f"pg_partman did not confirm the run ({unconfirmed[0]})"
        )
    warnings = [text for sev, text in said if sev == "WARNING"]
    return target.outcome("ok", OK, detail="\n".join(warnings))


def held_back(
    outcome: TableOutcome, early: Sequence[str], table: Table, command: str
) -> TableOutcome:
    """A successful call that ran with retention held back is a warning naming the re-cut."""
    if not early or outcome.status != "ok":
        return outcome
    names = ", ".join(quote_name(n) for n in early)
    why = (
        f"partman's retention held back for this run: it would drop {names} while rows of "
        f"it are still inside the window; re-cut it onto the grid: {split_command(table, command)}"
    )
    return replace(outcome, severity=WARNING, message=join(outcome.message, why))


def blocked(target: Target, holder: LockHolder | None) -> TableOutcome:
    """partman returned having done nothing: its advisory lock was held."""
    who = holder.describe() if holder else "a session that has since let go"
    hint = ""
    if holder is not None and holder.state.startswith("idle"):
        hint = (
            f"; an idle holder is a failed run_maintenance_proc() that kept its session lock: "
            f"end it with SELECT pg_terminate_backend({holder.pid})"
        )
    return target.outcome(
        "blocked",
        CRITICAL,
        f"pg_partman did nothing ('Partman maintenance already running'): its advisory "
        f"lock is held by {who}{hint}",
        blocker=who,
    )


def stuck_lock_problems(
    locks: Iterable[tuple[str, LockHolder]], outcomes: Sequence[TableOutcome]
) -> list[tuple[int, str]]:
    """A failed ``run_maintenance_proc()`` session keeps partman's session lock: from then on
    every ``CALL run_maintenance_proc()`` (the user's timer, 5.x's background worker) does
    nothing. On 5.x that lock is not the one ``run_maintenance(parent)`` takes, so our own
    run succeeds regardless: the leak itself is reported, naming the holder."""
    already = any(o.status == "blocked" for o in outcomes)
    return [
        (CRITICAL, stuck_lock_message(key, h))
        for key, h in locks
        # 4.x: the same key, already reported per table as "blocked"
        if not (key == "pg_partman run_maintenance" and already)
    ]


# --- native premaking -----------------------------------------------------------------------


def premake_plan(target: Target, state: TableState, server: Server, tz: str) -> PremakePlan:
    assert target.spec is not None
    grid = state.grid.grid
    naming = target.spec.naming_for(state.table, grid) if grid is not None else None
    return plan_premake(state, target.spec.premake, server.now, tz, naming)


def default_refusal(step_lower: Any, step_upper: Any) -> Refusal:
    """A probe (or PostgreSQL's CHECK) found rows of a step's range in the DEFAULT."""
    return Refusal(step_lower, step_upper, "the DEFAULT holds rows of this range")


def native_verdict(
    target: Target, state: TableState, created: Sequence[str], refusal: Refusal | None, command: str
) -> TableOutcome:
    if refusal is None:
        return target.outcome("ok", OK, created=tuple(created))
    zone = _zone(state)
    lo, hi = fmt_key(refusal.lower, zone), fmt_key(refusal.upper, zone)
    msg = f"not creating a child for {lo} … {hi}: {refusal.reason}"
    if "DEFAULT" in refusal.reason:
        msg += f"; {repair_advice(state.table, command)}"
    return target.outcome("refused", CRITICAL, msg, created=tuple(created))


def with_retention(
    done: TableOutcome, severity: int, message: str, retired: tuple[str, ...]
) -> TableOutcome:
    """Premaking's outcome with native retention's (commands/retention.py) folded in."""
    return replace(
        done,
        severity=worse(done.severity, severity),
        message=join(done.message, message),
        retired=retired,
    )


# --- after the fact ---------------------------------------------------------------------------


def judge(
    target: Target,
    outcome: TableOutcome,
    state: TableState,
    first: TableState | None,
    server: Server,
    ctx: Context,
) -> TableOutcome:
    """Runway at least premake and no rows in the DEFAULT, else the finding's severity.
    ``state`` is the table now, ``first`` its first picture in this run (what was created)."""
    # The zone wall-clock keys are read in, and the commands the findings name.
    srv = replace(server, timezone=ctx.zone(target), target=ctx.command)
    mine = [f for f in diagnose_table(state, srv) if f.code != "maintenance_stale"]
    rw = runway_of(state, srv)
    if target.config is None and target.spec is not None and rw is not None:
        # Without partman, premake is the one partguard.toml asks for, not partman's default.
        rw = replace(rw, premake=target.spec.premake)
        mine = [f for f in mine if f.code != "runway"] + runway_findings(state, rw)
    had = {c.name for c in (first or state).table.children}
    created = tuple(sorted({c.name for c in state.table.children} - had))
    severity, msg = outcome.severity, outcome.message
    for f in mine:
        if f.code in VERIFY_CODES:
            severity = worse(severity, f.severity.nagios)
            if not (f.code == "default_rows" and outcome.status == "refused"):
                msg = join(msg, f.message)
    ahead = None if rw is None else (rw.ids if rw.ids is not None else rw.seconds)
    covered = None if rw is None else (rw.frontier if rw.frontier is not None else rw.last_upper)
    return replace(
        outcome,
        severity=severity,
        message=msg,
        created=created,
        covered_until=None if covered is None else str(covered),
        runway_seconds=None if ahead is None else float(ahead),
        runway=human_runway(ahead, state),
        findings=tuple(finding_dict(f) for f in mine),
    )


def wants_repair(outcome: TableOutcome) -> bool:
    """``--fix-default`` repairs a table whose verdict found rows in its DEFAULT."""
    return any(f["code"] == "default_rows" for f in outcome.findings)


def repair_note(status: str, rows_moved: int) -> str:
    return f"DEFAULT repaired by partguard fix ({status}, {rows_moved} rows moved)"


def after_repair(
    target: Target,
    before: TableOutcome,
    again: TableOutcome,
    note: str,
    state: TableState | None,
    first: TableState | None,
    server: Server,
    ctx: Context,
) -> TableOutcome:
    """The verdict after ``--fix-default``: ``again`` is the table maintained once more and
    ``state`` the table after it (None when that run did not succeed: nothing to judge)."""
    if state is None or again.status != "ok":
        return replace(again, message=join(note, again.message), fixed=True)
    judged = judge(target, replace(again, message=note), state, first, server, ctx)
    return replace(
        judged, created=tuple(sorted(set(before.created) | set(judged.created))), fixed=True
    )


def run_status(
    outcomes: Sequence[TableOutcome], problems: Sequence[tuple[int, str]], messages: Sequence[str]
) -> int:
    """The run's Nagios status: the worst of the tables and the run-wide problems; any
    message (a run that could not be recorded, say) makes an OK run a warning."""
    status = worse(*(o.severity for o in outcomes), *(p for p, _ in problems))
    return WARNING if status == OK and (messages or problems) else status


def finding_dict(f: Finding) -> dict[str, Any]:
    return {"code": f.code, "severity": f.severity.value, "message": f.message, "detail": f.detail}


def join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else a or b


def human_runway(ahead: float | None, st: TableState) -> str | None:
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


def _zone(state: TableState) -> str | None:
    grid = state.grid.grid
    return grid.tz if isinstance(grid, TimeGrid) else None
