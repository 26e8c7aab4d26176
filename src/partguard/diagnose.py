"""Judge a snapshot: pure rules from catalog facts to findings, no database.

Every rule reads only the ``Snapshot``, so ``check``, ``maintain`` (to verify its work) and
``fix`` (to re-check after a repair) reach the same verdict from the same facts, and the
rules can be tested offline. Finding codes and ``Finding.table`` (``schema.name``) are a
stable interface: callers filter on them.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import Any

from .coverage import (
    DEFAULT_PREMAKE,
    Alignment,
    Runway,
    alignment,
    default_rows_estimate,
    gaps,
    last_maintenance,
    misaligned,
    runway,
    wide_children,
)
from .errors import UnsupportedTable, UsageError
from .humanize import display_name, fmt_delta, fmt_key, fmt_offset, iso, offset_json, quote_name
from .inspect.catalog import Key, Table
from .inspect.connections import STATES as CONNECTION_STATES
from .inspect.connections import Clients, Limit, Pool
from .inspect.grid import Grid, TimeGrid
from .inspect.grid import key_lt as _lt
from .inspect.leftovers import Quarantine, UnfinishedFix
from .inspect.locks import LockHolder
from .inspect.retention import le
from .inspect.snapshot import Server, Snapshot, TableState, zone_label
from .plan.fix import check_fixable

# Re-exported: callers (check, maintain, metrics) reach the shared measurements through here.
__all__ = [
    "DEFAULT_PREMAKE",
    "STALE_AFTER",
    "STATUS_NAMES",
    "Finding",
    "Runway",
    "Severity",
    "default_rows_estimate",
    "describe_unfinished",
    "diagnose",
    "diagnose_table",
    "display_name",
    "fix_command",
    "fmt_delta",
    "fmt_key",
    "gaps",
    "iso",
    "last_maintenance",
    "misaligned",
    "quarantine_findings",
    "repair_advice",
    "repair_command",
    "reserved_advice",
    "runway",
    "runway_findings",
    "runway_severity",
    "status",
    "unfinished_findings",
    "wide_children",
    "worst",
]

# No successful maintenance for twice the usual (hourly) schedule.
STALE_AFTER = timedelta(hours=2)
CONNECTIONS_WARNING, CONNECTIONS_CRITICAL = 0.80, 0.95
# Lists in ``detail`` stop here; counts stay exact.
_MAX_LISTED = 100


class Severity(str, Enum):  # noqa: UP042 - str(), format() and JSON of the value are relied on
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def nagios(self) -> int:
        return _NAGIOS[self]

    @property
    def rank(self) -> int:
        """Which status wins when several tables disagree: a known fault (CRITICAL) beats
        "could not judge" (UNKNOWN), which beats a WARNING, since it may hide anything."""
        return _RANK[self]


_NAGIOS = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2, Severity.UNKNOWN: 3}
_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.UNKNOWN: 2, Severity.CRITICAL: 3}
STATUS_NAMES = {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    table: str | None  # Table.qualname ('schema.name'); None for server-wide findings
    message: str
    detail: dict[str, Any] = field(default_factory=dict)  # JSON values only


def worst(findings: Iterable[Finding]) -> Severity | None:
    return max((f.severity for f in findings), key=lambda s: s.rank, default=None)


def status(findings: Iterable[Finding]) -> int:
    """The Nagios exit code of a set of findings: 0 when none (or only INFO)."""
    w = worst(findings)
    return 0 if w is None else w.nagios


def diagnose(snapshot: Snapshot) -> list[Finding]:
    """Every finding about the server and its tables, server-wide ones first."""
    server = snapshot.server
    out = connections(server)
    for config, why in snapshot.orphan_configs:
        out.append(
            Finding(
                "orphan_config",
                Severity.CRITICAL,
                config.parent_table,
                f"pg_partman has a config for {config.parent_table}, but {why}: "
                "run_maintenance_proc() stops with an error on it, so later tables are not maintained "
                f"either; remove it: DELETE FROM {_partman_schema(server)}.part_config "
                f"WHERE parent_table = '{config.parent_table}'",
                {"parent_table": config.parent_table, "reason": why},
            )
        )
    for key, holder in snapshot.stuck_partman_locks:
        out.append(
            Finding(
                "partman_lock_stuck",
                Severity.CRITICAL,
                None,
                stuck_lock_message(key, holder),
                {
                    "key": key,
                    "pid": holder.pid,
                    "application_name": holder.application,
                    "user": holder.user,
                    "state": holder.state,
                },
            )
        )
    for state in snapshot.tables:
        out.extend(diagnose_table(state, server))
    return out


def stuck_lock_message(key: str, holder: LockHolder) -> str:
    return (
        f"pg_partman's advisory lock hashtext('{key}') is held by {holder.describe()}: every "
        "CALL run_maintenance_proc() (a timer, partman's background worker) does nothing until "
        f"it is released: SELECT pg_terminate_backend({holder.pid})"
    )


def diagnose_table(state: TableState, server: Server) -> list[Finding]:
    table = state.table
    if state.unreadable is not None:
        return [locked_finding(state)]
    reason = table.unsupported_reason()
    if reason:
        # List/hash tables are simply not ours; a range table we cannot read is a blind spot.
        sev = Severity.INFO if table.strategy != "range" else Severity.UNKNOWN
        return [Finding("unsupported", sev, table.qualname, reason, {"strategy": table.strategy})]
    out = gaps_findings(table, _zone(state))
    out.extend(default_findings(state, server))
    out.extend(unfinished_findings(state, server))
    out.extend(quarantine_findings(state))
    grid = state.grid.grid
    if grid is None:
        why = state.grid.error or f"{table.qualname}: the partition grid cannot be determined"
        hint = "" if "--interval" in why else "; pass --interval (and --tz)"
        out.append(Finding("grid_unknown", Severity.UNKNOWN, table.qualname, why + hint, {}))
        return out
    try:
        aligned = alignment(state)
        target = server_target(server)
        out.extend(misaligned_findings(state, aligned, target))
        out.extend(wide_findings(state, aligned, target))
        out.extend(partman_next_findings(state, target))
        out.extend(partman_retention_findings(state, server))
        rw = runway(state, server)
        if rw is not None:
            out.extend(runway_findings(state, rw))
            out.extend(stale_findings(state, server, rw))
    except UsageError as exc:  # a grid that cannot hold this key type (e.g. hours on dates)
        out.append(Finding("grid_unknown", Severity.UNKNOWN, table.qualname, str(exc), {}))
    return out


def locked_finding(state: TableState) -> Finding:
    """A table a DDL held while we read: a blind spot, named with who holds it."""
    u = state.unreadable
    assert u is not None
    who = "; ".join(b.describe() for b in u.blockers) or "a session that has since let go"
    return Finding(
        "locked",
        Severity.UNKNOWN,
        state.table.qualname,
        f"not checked: {u.reason}; held by {who}",
        {"reason": u.reason, "blocking_pids": [b.pid for b in u.blockers]},
    )


# --- connections ---


def connections(server: Server) -> list[Finding]:
    """Slots against the budget, who holds them, and the role and database limits that bind."""
    avail = server.available
    ratio = server.used / avail if avail > 0 else 1.0
    sev = (
        Severity.CRITICAL
        if ratio >= CONNECTIONS_CRITICAL
        else Severity.WARNING
        if ratio >= CONNECTIONS_WARNING
        else None
    )
    clients = server.clients
    binding = [
        (lim, s)
        for lim in (clients.limits if clients else ())
        if (s := _limit_severity(lim, clients))
    ]
    severities = [s for s in [sev, *(s for _, s in binding)] if s is not None]
    if not severities:
        return []
    role = server.current_user
    parts = [
        (
            f"{server.used} of {avail} usable connection slots in use ({ratio:.0%}; max_connections "
            f"{server.max_connections} less {server.superuser_reserved} superuser_reserved and "
            f"{server.reserved} reserved)"
        )
    ]
    detail: dict[str, Any] = {
        "used": server.used,
        "available": avail,
        "ratio": round(ratio, 4),
        "max_connections": server.max_connections,
        "superuser_reserved": server.superuser_reserved,
        "reserved": server.reserved,
        "role": role,
        "can_use_reserved": server.can_use_reserved,
    }
    if clients is not None:
        pools = clients.pools()
        if pools:
            parts.append(
                "held by "
                + "; ".join(
                    _pool_text(p, avail if i == 0 else None) for i, p in enumerate(pools[:3])
                )
            )
            if len(pools) > 3:
                rest = pools[3:]
                parts.append(
                    f"and {sum(p.total for p in rest)} more in {len(rest)} other "
                    f"application/role pair{'s' if len(rest) != 1 else ''}"
                )
        hidden = clients.count("unknown")
        if hidden:
            parts.append(
                f"the state of {hidden} backends is hidden from {role} "
                f"(GRANT pg_read_all_stats TO {role} to see it)"
            )
        detail.update(
            idle=clients.count("idle"),
            idle_in_transaction=clients.count("idle_in_transaction"),
            pools=[
                {
                    "application_name": p.application_name,
                    "usename": p.usename,
                    "clients": p.clients,
                    "total": p.total,
                    **{st: p.count(st) for st in CONNECTION_STATES},
                    "oldest_idle_in_transaction_seconds": (p.oldest_idle_in_transaction or (None,))[
                        0
                    ],
                    "client_addrs": [g.client_addr for g in p.groups][:_MAX_LISTED],
                }
                for p in pools[:_MAX_LISTED]
            ],
            groups=[{**asdict(g), "total": g.total} for g in clients.groups[:_MAX_LISTED]],
            limits=[{**asdict(lim), "severity": s.value} for lim, s in binding],
        )
    for lim, _ in binding:
        parts.append(_limit_text(lim, clients))
    parts.append(reserved_advice(server, None if clients is None else clients.superuser))
    return [
        Finding(
            "connections", max(severities, key=lambda s: s.rank), None, "; ".join(parts), detail
        )
    ]


def _pool_text(pool: Pool, budget: int | None) -> str:
    """``ingest (user app): 4 clients × ~49 = 196 of 197 usable slots, 162 idle, …``"""
    who = f"{pool.application_name or '(no application_name)'} (user {pool.usename or '?'})"
    n = pool.total
    if pool.clients > 1:
        text = f"{who}: {pool.clients} clients × ~{round(n / pool.clients)} = {n}"
    else:
        addr = pool.groups[0].client_addr
        text = f"{who}{' from ' + addr if addr else ''}: {n}"
    if budget is not None:
        text += f" of {budget} usable slots"
    states = [
        f"{pool.count(st)} {st.replace('_', ' ')}" for st in ("idle", "active") if pool.count(st)
    ]
    if pool.count("idle_in_transaction"):
        oldest = pool.oldest_idle_in_transaction
        age = (
            ""
            if oldest is None
            else (f" (oldest {fmt_delta(timedelta(seconds=round(oldest[0])))}, pid {oldest[1]})")
        )
        states.append(f"{pool.count('idle_in_transaction')} idle in transaction{age}")
    return text + (", " + ", ".join(states) if states else "")


def _limit_severity(lim: Limit, clients: Clients | None) -> Severity | None:
    """A limit binds at 80 %; at 95 % it is CRITICAL when it locks this role out."""
    if lim.limit <= 0:
        return None  # CONNECTION LIMIT 0 is how a role or database is switched off on purpose
    ratio = lim.used / lim.limit
    if ratio < CONNECTIONS_WARNING:
        return None
    if ratio >= CONNECTIONS_CRITICAL and _locks_out_current(lim, clients):
        return Severity.CRITICAL
    return Severity.WARNING


def _locks_out_current(lim: Limit, clients: Clients | None) -> bool:
    if clients is None or clients.superuser:
        return False
    mine = clients.current_user if lim.kind == "role" else clients.current_database
    return lim.name == mine


def _limit_text(lim: Limit, clients: Clients | None) -> str:
    text = f"{lim.kind} {lim.name} has {lim.used} of its CONNECTION LIMIT {lim.limit}"
    if _locks_out_current(lim, clients):
        assert clients is not None
        text += f" (maintenance as {clients.current_user} is refused once it is reached)"
    return text


def reserved_advice(server: Server, superuser: bool | None = None) -> str:
    """Whether maintenance could still connect once ordinary slots run out (the incident).
    ``superuser``: whether the current role is one, when known (said where only superusers get
    in: on every version the superuser_reserved_connections slots are theirs)."""
    role = server.current_user
    only_su = (
        f"once the pool is exhausted only superusers get in ({server.superuser_reserved} slots)"
    )
    if superuser is not None:
        only_su += (
            f" ({role} is {'a superuser: it can' if superuser else 'not a superuser: it cannot'})"
        )
    if server.version_num < 160000:
        return f"PostgreSQL {server.version_num // 10000} has no reserved_connections: {only_su}"
    if server.reserved == 0:
        return (
            f"reserved_connections is 0: {only_su}; "
            "set it and GRANT pg_use_reserved_connections to the maintenance role"
        )
    if server.can_use_reserved:
        return (
            f"{role} can still connect through the {server.reserved} reserved_connections "
            "slots when the pool is exhausted"
        )
    return (
        f"{role} cannot use the {server.reserved} reserved_connections slots: "
        f"GRANT pg_use_reserved_connections TO {role}"
    )


# --- DEFAULT, gaps, the grid ---


def default_findings(state: TableState, server: Server) -> list[Finding]:
    p, table = state.default_probe, state.table
    if p is None or p.empty or table.default is None:
        return []
    grid, zone = state.grid.grid, _zone(state)
    rows = default_rows_estimate(state) or 0
    if p.rows_exact is not None:
        count = f"{p.rows_exact} rows"
    elif p.rows_at_least:
        count = f"at least {rows} rows (counted up to {rows}: its statistics are stale, ANALYZE it)"
    else:
        count = f"~{rows} rows (estimate)"
    runs = _runs(grid, p.buckets) if grid is not None else []
    parts = [f"DEFAULT partition {table.default.qualname} holds {count}"]
    if p.min_key is not None:
        parts.append(f"keys {fmt_key(p.min_key, zone)} … {fmt_key(p.max_key, zone)}")
    if runs:
        more = " (and more: the walk stopped early)" if p.truncated else ""
        spans = ", ".join(r["label"] for r in runs[:5]) + (", …" if len(runs) > 5 else "")
        parts.append(
            f"{len(p.buckets)} bucket{'s' if len(p.buckets) != 1 else ''} without a "
            f"child: {spans}{_zone_suffix(zone)}{more}"
        )
    if p.null_rows:
        parts.append(f"{p.null_rows} rows with a NULL key (no partition can hold them)")
    parts.append(repair_advice(table, server_target(server), grid_known=grid is not None))
    return [
        Finding(
            "default_rows",
            Severity.CRITICAL,
            table.qualname,
            "; ".join(parts),
            {
                "default": table.default.qualname,
                "rows_estimate": rows,
                "rows_exact": p.rows_exact,
                "min_key": iso(p.min_key),
                "max_key": iso(p.max_key),
                "null_rows": p.null_rows,
                "buckets": [iso(b) for b in p.buckets[:_MAX_LISTED]],
                "bucket_count": len(p.buckets),
                "bucket_runs": runs,
                "truncated": p.truncated,
                "used_index": p.used_index,
                "zone": zone,
                "rows_at_least": p.rows_at_least,
            },
        )
    ]


def gaps_findings(table: Table, zone: str | None = None) -> list[Finding]:
    return [
        Finding(
            "gap",
            Severity.CRITICAL,
            table.qualname,
            f"no child covers {fmt_key(lo, zone)} … {fmt_key(hi, zone)}{_zone_suffix(zone)} "
            f"(between two children): rows in it {_rows_land(table)}, and partman never fills "
            "holes behind its newest child",
            {"from": iso(lo), "to": iso(hi)},
        )
        for lo, hi in gaps(table)
    ]


def misaligned_findings(
    state: TableState, aligned: Alignment | None = None, target: str = "-d <db>"
) -> list[Finding]:
    bad = misaligned(state, aligned)
    if not bad:
        return []
    table, info, grid = state.table, state.grid, state.grid.grid
    assert grid is not None
    zone = _zone(state)
    where = f"{_interval(grid)}" + (f" in {zone_label(zone)}" if zone else "")
    child, bound, off = bad[0]
    first = f"{child.name} has a bound at {fmt_key(bound, zone)} ({fmt_offset(off)})"
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    newest = table.children[-1].name if table.children else None
    if state.config is not None and any(c.name == newest for c, _, _ in bad):
        msg = (
            f"{len(bad)} children are off the grid pg_partman computes ({where}): "
            f"{first}{more}. "
            "partman lays its next children from the newest child on its own grid, so they "
            'will overlap these (failing with "would overlap") or leave gaps; re-cut them '
            f"onto the grid: {split_command(table, target)}"
        )
        sev = Severity.CRITICAL
    elif state.config is not None:
        msg = (
            f"{len(bad)} children are off the grid pg_partman computes ({where}): "
            f"{first}{more}. The newest child is on the grid, so partman's next children "
            "are too; these older ones confuse its retention and naming: re-cut them onto "
            f"the grid: {split_command(table, target)}"
        )
        sev = Severity.WARNING
    else:
        msg = f"{len(bad)} children are off the grid ({where}, from {info.source}): {first}{more}"
        sev = Severity.WARNING  # nothing of partman's will trip over them
    if info.aligned_zone and info.aligned_zone != zone:
        msg += f"; they would be aligned in {zone_label(info.aligned_zone)}"
        if state.config is not None:
            msg += " (the session TimeZone they were probably created in)"
    return [
        Finding(
            "misaligned",
            sev,
            table.qualname,
            msg,
            {
                "count": len(bad),
                "interval": _interval(grid),
                "zone": zone,
                "grid_source": info.source,
                "aligned_zone": info.aligned_zone,
                "aligned_zone_label": zone_label(info.aligned_zone) if info.aligned_zone else None,
                "children": [
                    {
                        "name": c.name,
                        "lower": iso(c.lower),
                        "upper": iso(c.upper),
                        "bound": iso(b),
                        "offset": offset_json(o),
                    }
                    for c, b, o in bad[:_MAX_LISTED]
                ],
            },
        )
    ]


def wide_findings(
    state: TableState, aligned: Alignment | None = None, target: str = "-d <db>"
) -> list[Finding]:
    """Children spanning several buckets (``fix --strategy instant`` leaves one).

    Harmless to PostgreSQL, but not to pg_partman, whose arithmetic assumes every child spans
    one interval (read in its SQL, 4.7.2-5.5.0): 5.x counts premade children from the grid slot
    of *any* row of the newest non-empty child (``SELECT key … LIMIT 1``), so next to a wide
    child it premakes too few; and retention takes a child's end as start + interval, so it
    drops a wide child while later days of it are still inside the window (pg_partman #776).
    """
    zone = _zone(state)
    managed = state.config is not None
    out = []
    for c, n in wide_children(state, aligned):
        span = f"{display_name(c)} spans {n} intervals ({fmt_key(c.lower, zone)} … {fmt_key(c.upper, zone)})"
        if managed:
            msg = (
                f"{span}: pg_partman assumes one interval per child, so it may premake too few "
                "children after it (5.x counts from the slot of any of its rows) and its "
                "retention would drop it while its later days are still inside the window; "
                f"re-cut it onto the grid: {split_command(state.table, target)}"
            )
            sev = Severity.WARNING
        else:
            msg = f"{span}, as fix --strategy instant leaves it; re-cutting it is optional"
            sev = Severity.INFO
        out.append(
            Finding(
                "wide_child",
                sev,
                state.table.qualname,
                msg,
                {
                    "child": c.name,
                    "from": iso(c.lower),
                    "to": iso(c.upper),
                    "buckets": n,
                    "partman": managed,
                },
            )
        )
    return out


def partman_next_findings(state: TableState, target: str = "-d <db>") -> list[Finding]:
    """Predict pg_partman's next child before partman trips over it.

    Every version computes the next child as the newest child's start + interval (it never
    reads the upper bound): when the newest child is wider than one interval, that child
    overlaps it and every maintenance run fails with "would overlap" (5.5 skips the set with
    a WARNING instead).
    """
    table, grid = state.table, state.grid.grid
    if state.config is None or grid is None or not table.children:
        return []
    last = table.children[-1]  # ordered by lower bound
    if last.lower is None or last.upper is None or not grid.is_aligned(last.lower):
        return []  # off the grid: the misaligned finding says what partman will do
    start: Key = grid.next(last.lower)
    if not _lt(start, last.upper):
        return []
    end: Key = grid.next(start)
    zone = _zone(state)
    name = display_name(last)
    return [
        Finding(
            "partman_next_overlaps",
            Severity.CRITICAL,
            table.qualname,
            f"pg_partman's next child would be {fmt_key(start, zone)} … {fmt_key(end, zone)}"
            f"{_zone_suffix(zone)} (the newest child's start + {_interval(grid)}), which overlaps "
            f"{name} ({fmt_key(last.lower, zone)} … {fmt_key(last.upper, zone)}): every maintenance "
            f'run fails with "would overlap"; re-cut it onto the grid: {split_command(table, target)}',
            {
                "child": last.name,
                "next_from": iso(start),
                "next_to": iso(end),
                "child_from": iso(last.lower),
                "child_to": iso(last.upper),
            },
        )
    ]


def split_command(table: Table, target: str = "-d <db>") -> str:
    """The re-cut, as a line to paste (``target`` as in ``fix_command``)."""
    return f"partguard split {target} {shlex.quote(display_name(table))}"


def partman_retention_findings(state: TableState, server: Server) -> list[Finding]:
    """pg_partman's retention takes a child's end to be start + interval: a wider child still
    holding rows inside the window is dropped (or detached) at its next run."""
    cfg = state.config
    if cfg is None:
        return []
    zone = _zone(state)
    keep = bool(cfg.raw.get("retention_keep_table"))
    verb = "detach" if keep else "drop"
    out = []
    for drop, newest in state.partman_drops:
        if newest is None or not le(drop.cutoff, newest):
            continue  # empty, or every row already outside the window: nothing is lost early
        c = drop.child
        fix = (
            "raise retention past the child's end or split the child into one per interval"
            if keep
            else f"until it is split into one child per interval, make partman only detach it: "
            f"UPDATE {_partman_schema(server)}.part_config SET retention_keep_table = true "
            f"WHERE parent_table = '{cfg.parent_table}'"
        )
        out.append(
            Finding(
                "partman_retention",
                Severity.WARNING,
                state.table.qualname,
                f"pg_partman's retention ({cfg.raw.get('retention')}) will {verb} {c.name} at its next run: "
                f"it takes the child's end to be {fmt_key(drop.end, zone)} (start + {_interval_of(state)}), "
                f"but the child spans to {fmt_key(c.upper, zone)} and holds rows up to "
                f"{fmt_key(newest, zone)}, inside the window (from {fmt_key(drop.cutoff, zone)}); {fix}",
                {
                    "child": c.name,
                    "lower": iso(c.lower),
                    "upper": iso(c.upper),
                    "partman_end": iso(drop.end),
                    "cutoff": iso(drop.cutoff),
                    "max_key": iso(newest),
                    "retention": str(cfg.raw.get("retention")),
                    "action": verb,
                },
            )
        )
    return out


def _interval_of(state: TableState) -> str:
    return _interval(state.grid.grid) if state.grid.grid is not None else "interval"


# --- what unfinished repairs left behind ---


def unfinished_findings(state: TableState, server: Server) -> list[Finding]:
    """A fix run the journal records as unfinished, instant's trigger + CHECK still on the
    DEFAULT, or a DEFAULT the old script detached: CRITICAL (WARNING while a fix is
    running on the table), with the rows out of sight and the command that finishes it."""
    return [_unfinished(state.table, u, server) for u in state.leftovers.unfinished]


def _unfinished_split(table: Table, u: UnfinishedFix, server: Server) -> Finding:
    names = ", ".join(quote_name(n) for n in u.relation.split(", ") if n)
    state = (
        f"is in progress ({u.running}), at step {u.state}"
        if u.running
        else (f"was interrupted after step {u.state}")
    )
    split = split_command(table, server_target(server))
    msg = f"split run {u.run_id} of {names} {state}: " + (
        f"its new children are in place, its clean-up is left; finish it: {split} --yes"
        if u.state == "swapped"
        else "every row is still visible, but its capture trigger logs every change of those "
        f"children into schema partguard until it ends; finish it: {split} --yes, or undo it: "
        f"{split} --abort"
    )
    return Finding(
        "unfinished_fix",
        Severity.WARNING if u.running else Severity.CRITICAL,
        table.qualname,
        msg,
        {
            "kind": "split",
            "run_id": u.run_id,
            "state": u.state,
            "relation": names,
            "rows_not_visible": 0,
            "rows_exact": True,
            "trigger": True,
            "check": False,
            "quarantine": None,
            "running": u.running,
            "started_at": iso(u.started_at) if u.started_at else None,
            "command": f"{split} --yes",
            "undo_command": None if u.state == "swapped" else f"{split} --abort",
        },
    )


def describe_unfinished(table: Table, u: UnfinishedFix, server: Server) -> str:
    """What an unfinished repair left and the command that finishes (or undoes) it."""
    return _unfinished(table, u, server).message


def _unfinished_recut(table: Table, u: UnfinishedFix, server: Server) -> Finding:
    """An auto fix stopped between its instant swap and the re-cut it promised: nothing is
    out of sight and every write works (WARNING), but the exact children are owed."""
    child = display_name(replace(table, name=u.relation))
    finish = repair_command(server, table, "--yes")
    split = f"{split_command(table, server_target(server))} --yes"
    state = (
        f"is finishing it now ({u.running})"
        if u.running
        else "stopped before re-cutting it onto the grid"
    )
    msg = (
        f"fix run {u.run_id} (auto) made the DEFAULT one wide child, {child}, and {state}: "
        "every row is visible and writes work, but the re-cut into exact children is owed; "
        f"finish it: {finish} (or {split})"
    )
    return Finding(
        "unfinished_fix",
        Severity.WARNING,
        table.qualname,
        msg,
        {
            "kind": "recut",
            "run_id": u.run_id,
            "state": u.state,
            "relation": child,
            "child": u.relation,
            "rows_not_visible": 0,
            "rows_exact": True,
            "trigger": False,
            "check": False,
            "quarantine": None,
            "running": u.running,
            "started_at": iso(u.started_at) if u.started_at else None,
            "command": finish,
            "split_command": split,
            "undo_command": None,
        },
    )


def _unfinished(table: Table, u: UnfinishedFix, server: Server) -> Finding:
    if u.kind == "split":
        return _unfinished_split(table, u, server)
    if u.kind == "recut":
        return _unfinished_recut(table, u, server)
    rel = display_name(replace(table, name=u.relation))
    rows = f"{u.hidden_rows} rows" if u.hidden_exact else f"~{u.hidden_rows} rows (estimate)"
    finish = repair_command(server, table, "--yes")
    undo = repair_command(server, table, "--abort") if u.before_swap else None
    who = (
        f"fix run {u.run_id} ({u.kind})"
        if u.run_id is not None
        else "an earlier fix --strategy instant"
    )
    if u.running:
        head = f"{who} is in progress ({u.running}), at step {u.state}"
    elif u.run_id is not None:
        head = f"{who} was interrupted after step {u.state}"
    else:
        head = f"{who} left its helpers behind"
    quarantine = _quarantine_name(table, u.quarantine) if u.quarantine else "partguard's quarantine"
    if u.kind == "detached_default":
        head = (
            f"{rel} is a detached DEFAULT (a plain table with the columns of {display_name(table)}, "
            f"left by an interrupted repair)"
        )
        body = f"it holds {rows}, not visible through the table"
        how = (
            f"adopt and finish it: {finish}"
            if u.adoptable
            else "partguard fix adopts it only while the table has no DEFAULT: move its rows by hand"
        )
    elif u.kind == "copy":
        body = (
            f"{rows} in {rel} are not visible through {display_name(table)} yet"
            if u.hidden_rows
            else f"every row of {rel} is copied; dropping it and the last steps are left"
        )
        how = f"finish it: {finish}"
    elif u.before_swap:
        helpers = " and ".join(
            n
            for n, on in (
                ("trigger partguard_divert", u.trigger),
                ("CHECK partguard_span", u.check),
            )
            if on
        )
        body = (
            f"{helpers} on {rel} divert every insert outside the repair's span to {quarantine} "
            "(the writer sees INSERT 0 0)"
        )
        if u.run_id is not None:
            body += (
                f"; {u.hidden_rows} rows the run set aside there are not visible through the table"
            )
        how = f"finish it: {finish}, or undo it: {undo}"
    else:
        body = (
            f"the table takes inserts again; partman maintenance and the release of {quarantine} "
            f"({u.hidden_rows} rows set aside by the run) are left"
        )
        how = f"finish it: {finish}"
    return Finding(
        "unfinished_fix",
        Severity.WARNING if u.running else Severity.CRITICAL,
        table.qualname,
        f"{head}: {body}; {how}",
        {
            "kind": u.kind,
            "run_id": u.run_id,
            "state": u.state,
            "relation": rel,
            "rows_not_visible": u.hidden_rows,
            "rows_exact": u.hidden_exact,
            "trigger": u.trigger,
            "check": u.check,
            "quarantine": _quarantine_name(table, u.quarantine) if u.quarantine else None,
            "running": u.running,
            "started_at": iso(u.started_at) if u.started_at else None,
            "command": finish if u.adoptable else None,
            "undo_command": undo,
        },
    )


def quarantine_findings(state: TableState) -> list[Finding]:
    """Rows a fix set aside (NULL keys, far outliers, inserts diverted during a repair):
    kept, but not visible through the table, and no child will ever take them."""
    return [_quarantined(state, q) for q in state.leftovers.quarantine if q.rows]


def _quarantined(state: TableState, q: Quarantine) -> Finding:
    zone, name = _zone(state), _quarantine_name(state.table, q.name)
    keys = (
        f"keys {fmt_key(q.min_key, zone)} … {fmt_key(q.max_key, zone)}{_zone_suffix(zone)}"
        if q.min_key is not None
        else "no key"
    )
    nulls = f", {q.null_rows} with a NULL key" if q.null_rows else ""
    return Finding(
        "quarantine_rows",
        Severity.WARNING,
        state.table.qualname,
        f"{name} holds {q.rows} rows set aside from {display_name(state.table)} ({keys}{nulls}): "
        f"they are not visible through the table; review them (SELECT * FROM {name}), then move "
        "them back once a child covers them, or delete them",
        {
            "quarantine": name,
            "rows": q.rows,
            "null_rows": q.null_rows,
            "min_key": iso(q.min_key),
            "max_key": iso(q.max_key),
            "zone": zone,
        },
    )


def _quarantine_name(table: Table, name: str) -> str:
    return display_name(replace(table, schema="partguard", name=name))


def repair_command(server: Server, table: Table, *extra: str) -> str:
    """``partguard fix -d <db> <table> …``, shell-quoted, to paste."""
    db = shlex.quote(server.database) if server.database else "<db>"
    return " ".join(["partguard fix -d", db, shlex.quote(display_name(table)), *extra])


# --- runway and maintenance ---


def runway_severity(rw: Runway) -> Severity | None:
    if rw.uncovered:
        return Severity.CRITICAL
    return Severity.WARNING if rw.short else None


def runway_findings(state: TableState, rw: Runway) -> list[Finding]:
    sev = runway_severity(rw)
    if sev is None:
        return []
    zone = _zone(state)
    grid = state.grid.grid
    assert grid is not None
    if not rw.current_covered:
        now = "new rows" if isinstance(rw.reference, int) else "rows written now"
        head = (
            f"no child for the current interval {fmt_key(rw.current_start, zone)} … "
            f"{fmt_key(rw.current_end, zone)}: {now} {_rows_land(state.table)}"
        )
    elif not rw.next_covered:
        head = (
            f"no child for the next interval {fmt_key(rw.current_end, zone)} … "
            f"{fmt_key(rw.next_end, zone)}: from {fmt_key(rw.current_end, zone)} on rows "
            f"{_rows_land(state.table)}"
        )
    else:
        head = (
            f"children reach only {rw.intervals_ahead} interval"
            f"{'s' if rw.intervals_ahead != 1 else ''} of {_interval(grid)} past the current "
            f"one (premake {rw.premake})"
        )
    return [
        Finding(
            "runway",
            sev,
            state.table.qualname,
            f"{head}; {_runway_text(rw, zone)}",
            {
                "runway_seconds": rw.seconds,
                "runway_ids": rw.ids,
                "intervals_ahead": rw.intervals_ahead,
                "premake": rw.premake,
                "interval": _interval(grid),
                "last_upper": iso(rw.last_upper),
                "frontier": iso(rw.frontier),
                "current_covered": rw.current_covered,
                "next_covered": rw.next_covered,
                "reference": iso(rw.reference),
            },
        )
    ]


def stale_findings(state: TableState, server: Server, rw: Runway) -> list[Finding]:
    last, source = last_maintenance(state)
    cfg, name = state.config, state.table.qualname
    off = " (automatic_maintenance is off for it)" if cfg and not cfg.automatic_maintenance else ""
    if last is not None:
        age = server.now - last
        if age <= STALE_AFTER:
            return []
        return [
            Finding(
                "maintenance_stale",
                Severity.WARNING,
                name,
                f"no successful maintenance for {fmt_delta(age)} (last {fmt_key(last, 'UTC')} UTC, "
                f"recorded by {source}){off}",
                {"last_success": iso(last), "source": source, "age_seconds": age.total_seconds()},
            )
        ]
    if cfg is None or runway_severity(rw) is None:
        return []  # nothing records it and the runway looks fine: no evidence either way
    return [
        Finding(
            "maintenance_stale",
            Severity.WARNING,
            name,
            f"partman maintenance seems to have stopped: the runway is shorter than premake "
            f"{cfg.premake}, and neither partman nor partguard records its runs{off}",
            {"last_success": None, "source": "inferred", "age_seconds": None},
        )
    ]


# --- what to tell the user to run ---


def server_target(server: Server) -> str:
    """The connection options commands in messages carry: as given, else the database."""
    return server.target or f"-d {shlex.quote(server.database) if server.database else '<db>'}"


def fix_command(target: str, table: Table) -> str:
    """The repair as a line to paste into the shell partguard ran in (``target``: -d -h -p -U as
    given, never a password; ``ConnParams.command_args``)."""
    return f"partguard fix {target} {shlex.quote(display_name(table))}"


def repair_advice(table: Table, target: str, *, grid_known: bool = True) -> str:
    """The fix command for a DEFAULT holding rows, or why fix would refuse the table (then
    suggesting it would only earn the user an error)."""
    try:
        check_fixable(table, None)
    except UnsupportedTable as exc:
        return f"partguard fix cannot repair it: {exc}"
    if not grid_known:
        return f"repair, once the interval is known: {fix_command(target, table)} --interval <interval>"
    return f"repair: {fix_command(target, table)}"


def _rows_land(table: Table) -> str:
    """Where rows for a key no child covers end up."""
    if table.default is not None:
        return "go to the DEFAULT"
    return 'fail: there is no DEFAULT partition ("no partition of relation … found for row")'


# --- helpers ---


def _runs(grid: Grid, starts: Sequence[Key]) -> list[dict[str, Any]]:
    """Consecutive bucket starts folded into runs: 18, 19, 20 -> '18 … 20' (3 buckets)."""
    zone = grid.tz if isinstance(grid, TimeGrid) else None
    runs: list[list[Key]] = []
    for s in starts:
        if runs and grid.next(runs[-1][-1]) == s:
            runs[-1].append(s)
        else:
            runs.append([s])
    out = []
    for r in runs:
        first, last = r[0], r[-1]
        label = fmt_key(first, zone)
        if len(r) > 1:
            label += f" … {fmt_key(last, zone)}"
        end = grid.next(last)
        out.append(
            {
                "first": iso(first),
                "last": iso(last),
                "end": iso(end),
                "buckets": len(r),
                "label": label,
            }
        )
    return out


def _zone(state: TableState) -> str | None:
    grid = state.grid.grid
    return grid.tz if isinstance(grid, TimeGrid) else None


def _zone_suffix(zone: str | None) -> str:
    return f" ({zone_label(zone)})" if zone else ""


def _interval(grid: Grid) -> str:
    return str(grid.step)


def _partman_schema(server: Server) -> str:
    return server.partman.schema if server.partman else "partman"


def _runway_text(rw: Runway, zone: str | None) -> str:
    """Where the children end, relative to now (or to the largest id)."""
    if rw.last_upper is None:
        return "there are no children"
    if rw.frontier is None and _lt(rw.reference, rw.last_upper):
        return "later children exist: the hole is reported as a gap"
    edge = rw.last_upper if rw.frontier is None else rw.frontier
    end = f"children end at {fmt_key(edge, zone)}{_zone_suffix(zone)}"
    if rw.ids is not None:
        return (
            f"{end}, {abs(rw.ids)} ids {'above' if rw.ids >= 0 else 'below'} "
            f"the largest id {rw.reference}"
        )
    if rw.seconds is None:
        return end
    span = fmt_delta(timedelta(minutes=round(abs(rw.seconds) / 60)))
    return f"{end}, {span} {'from now' if rw.seconds >= 0 else 'ago'}"
