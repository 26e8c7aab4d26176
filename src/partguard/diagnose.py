"""Judge a snapshot: pure rules from catalog facts to findings, no database.

Every rule reads only the ``Snapshot``, so ``check``, ``maintain`` (to verify its work) and
``fix`` (to re-check after a repair) reach the same verdict from the same facts, and the
rules can be tested offline. Finding codes and ``Finding.table`` (``schema.name``) are a
stable interface: callers filter on them.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
from .coverage import key_lt as _lt
from .errors import UsageError
from .humanize import display_name, fmt_delta, fmt_key, fmt_offset, iso, offset_json
from .inspect.catalog import Key, Table
from .inspect.grid import Grid, TimeGrid
from .inspect.snapshot import Server, Snapshot, TableState, zone_label

# Re-exported: callers (check, maintain, metrics) reach the shared measurements through here.
__all__ = [
    "DEFAULT_PREMAKE", "STALE_AFTER", "STATUS_NAMES", "Finding", "Runway", "Severity",
    "default_rows_estimate", "diagnose", "diagnose_table", "display_name", "fmt_delta", "fmt_key",
    "gaps", "iso", "last_maintenance", "misaligned", "reserved_advice", "runway",
    "runway_findings", "runway_severity", "status", "wide_children", "worst",
]

# No successful maintenance for twice the usual (hourly) schedule.
STALE_AFTER = timedelta(hours=2)
CONNECTIONS_WARNING, CONNECTIONS_CRITICAL = 0.80, 0.95
# Lists in ``detail`` stop here; counts stay exact.
_MAX_LISTED = 100


class Severity(str, Enum):
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
        out.append(Finding(
            "orphan_config", Severity.CRITICAL, config.parent_table,
            f"pg_partman has a config for {config.parent_table}, but {why}: "
            "run_maintenance_proc() stops with an error on it, so later tables are not maintained "
            f"either; remove it: DELETE FROM {_partman_schema(server)}.part_config "
            f"WHERE parent_table = '{config.parent_table}'",
            {"parent_table": config.parent_table, "reason": why},
        ))
    for state in snapshot.tables:
        out.extend(diagnose_table(state, server))
    return out


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
    grid = state.grid.grid
    if grid is None:
        why = state.grid.error or f"{table.qualname}: the partition grid cannot be determined"
        hint = "" if "--interval" in why else "; pass --interval (and --tz)"
        out.append(Finding("grid_unknown", Severity.UNKNOWN, table.qualname, why + hint, {}))
        return out
    try:
        aligned = alignment(state)
        out.extend(misaligned_findings(state, aligned))
        out.extend(wide_findings(state, aligned))
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
        "locked", Severity.UNKNOWN, state.table.qualname,
        f"not checked: {u.reason}; held by {who}",
        {"reason": u.reason, "blocking_pids": [b.pid for b in u.blockers]},
    )


# --- connections ---


def connections(server: Server) -> list[Finding]:
    avail = server.available
    ratio = server.used / avail if avail > 0 else 1.0
    if ratio < CONNECTIONS_WARNING:
        return []
    sev = Severity.CRITICAL if ratio >= CONNECTIONS_CRITICAL else Severity.WARNING
    return [Finding(
        "connections", sev, None,
        f"{server.used} of {avail} connection slots in use ({ratio:.0%}; max_connections "
        f"{server.max_connections} less {server.superuser_reserved} superuser_reserved and "
        f"{server.reserved} reserved); {reserved_advice(server)}",
        {"used": server.used, "available": avail, "ratio": round(ratio, 4),
         "max_connections": server.max_connections,
         "superuser_reserved": server.superuser_reserved, "reserved": server.reserved,
         "role": server.current_user, "can_use_reserved": server.can_use_reserved},
    )]


def reserved_advice(server: Server) -> str:
    """Whether maintenance could still connect once ordinary slots run out (the incident)."""
    role = server.current_user
    if server.version_num < 160000:
        return (f"PostgreSQL {server.version_num // 10000} has no reserved_connections: once the "
                f"pool is exhausted only superusers get in ({server.superuser_reserved} slots)")
    if server.reserved == 0:
        return ("reserved_connections is 0: once the pool is exhausted maintenance cannot connect; "
                "set it and GRANT pg_use_reserved_connections to the maintenance role")
    if server.can_use_reserved:
        return (f"{role} can still connect through the {server.reserved} reserved_connections "
                "slots when the pool is exhausted")
    return (f"{role} cannot use the {server.reserved} reserved_connections slots: "
            f"GRANT pg_use_reserved_connections TO {role}")


# --- DEFAULT, gaps, the grid ---


def default_findings(state: TableState, server: Server) -> list[Finding]:
    p, table = state.default_probe, state.table
    if p is None or p.empty or table.default is None:
        return []
    grid, zone = state.grid.grid, _zone(state)
    rows = default_rows_estimate(state) or 0
    count = f"{p.rows_exact} rows" if p.rows_exact is not None else f"~{rows} rows (estimate)"
    runs = _runs(grid, p.buckets) if grid is not None else []
    parts = [f"DEFAULT partition {table.default.qualname} holds {count}"]
    if p.min_key is not None:
        parts.append(f"keys {fmt_key(p.min_key, zone)} … {fmt_key(p.max_key, zone)}")
    if runs:
        more = " (and more: the walk stopped early)" if p.truncated else ""
        spans = ", ".join(r["label"] for r in runs[:5]) + (", …" if len(runs) > 5 else "")
        parts.append(f"{len(p.buckets)} bucket{'s' if len(p.buckets) != 1 else ''} without a "
                     f"child: {spans}{_zone_suffix(zone)}{more}")
    if p.null_rows:
        parts.append(f"{p.null_rows} rows with a NULL key (no partition can hold them)")
    db = shlex.quote(server.database) if server.database else "<db>"
    parts.append(f"repair: partguard fix -d {db} {shlex.quote(display_name(table))}")
    return [Finding(
        "default_rows", Severity.CRITICAL, table.qualname, "; ".join(parts),
        {"default": table.default.qualname, "rows_estimate": rows, "rows_exact": p.rows_exact,
         "min_key": iso(p.min_key), "max_key": iso(p.max_key), "null_rows": p.null_rows,
         "buckets": [iso(b) for b in p.buckets[:_MAX_LISTED]], "bucket_count": len(p.buckets),
         "bucket_runs": runs, "truncated": p.truncated, "used_index": p.used_index,
         "zone": zone},
    )]


def gaps_findings(table: Table, zone: str | None = None) -> list[Finding]:
    return [
        Finding(
            "gap", Severity.CRITICAL, table.qualname,
            f"no child covers {fmt_key(lo, zone)} … {fmt_key(hi, zone)}{_zone_suffix(zone)} "
            "(between two children): rows in it "
            "go to the DEFAULT, or fail without one, and partman never fills holes behind its "
            "newest child",
            {"from": iso(lo), "to": iso(hi)},
        )
        for lo, hi in gaps(table)
    ]


def misaligned_findings(state: TableState, aligned: Alignment | None = None) -> list[Finding]:
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
    if state.config is not None:
        msg = (f"{len(bad)} children are off the grid pg_partman computes ({where}): "
               f"{first}{more}. "
               "partman lays its next children on its own grid, so they will overlap these "
               "(failing with \"would overlap\") or leave gaps")
        sev = Severity.CRITICAL
    else:
        msg = f"{len(bad)} children are off the grid ({where}, from {info.source}): {first}{more}"
        sev = Severity.WARNING  # nothing of partman's will trip over them
    if info.aligned_zone and info.aligned_zone != zone:
        msg += f"; they would be aligned in {zone_label(info.aligned_zone)}"
        if state.config is not None:
            msg += " (the session TimeZone they were probably created in)"
    return [Finding(
        "misaligned", sev, table.qualname, msg,
        {"count": len(bad), "interval": _interval(grid), "zone": zone, "grid_source": info.source,
         "aligned_zone": info.aligned_zone,
         "aligned_zone_label": zone_label(info.aligned_zone) if info.aligned_zone else None,
         "children": [{"name": c.name, "lower": iso(c.lower), "upper": iso(c.upper),
                       "bound": iso(b), "offset": offset_json(o)}
                      for c, b, o in bad[:_MAX_LISTED]]},
    )]


def wide_findings(state: TableState, aligned: Alignment | None = None) -> list[Finding]:
    """Children spanning several buckets on purpose (``fix --strategy instant``): not a fault."""
    zone = _zone(state)
    return [
        Finding(
            "wide_child", Severity.INFO, state.table.qualname,
            f"{c.name} spans {n} buckets ({fmt_key(c.lower, zone)} … {fmt_key(c.upper, zone)}), "
            "as fix --strategy instant leaves it; splitting it is optional",
            {"child": c.name, "from": iso(c.lower), "to": iso(c.upper), "buckets": n},
        )
        for c, n in wide_children(state, aligned)
    ]


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
        head = (f"no child for the current interval {fmt_key(rw.current_start, zone)} … "
                f"{fmt_key(rw.current_end, zone)}: {now} go to the DEFAULT")
    elif not rw.next_covered:
        head = (f"no child for the next interval {fmt_key(rw.current_end, zone)} … "
                f"{fmt_key(rw.next_end, zone)}: from {fmt_key(rw.current_end, zone)} on rows go "
                "to the DEFAULT")
    else:
        head = (f"children reach only {rw.intervals_ahead} interval"
                f"{'s' if rw.intervals_ahead != 1 else ''} of {_interval(grid)} past the current "
                f"one (premake {rw.premake})")
    return [Finding(
        "runway", sev, state.table.qualname, f"{head}; {_runway_text(rw, zone)}",
        {"runway_seconds": rw.seconds, "runway_ids": rw.ids, "intervals_ahead": rw.intervals_ahead,
         "premake": rw.premake, "interval": _interval(grid), "last_upper": iso(rw.last_upper),
         "frontier": iso(rw.frontier), "current_covered": rw.current_covered,
         "next_covered": rw.next_covered, "reference": iso(rw.reference)},
    )]


def stale_findings(state: TableState, server: Server, rw: Runway) -> list[Finding]:
    last, source = last_maintenance(state)
    cfg, name = state.config, state.table.qualname
    off = " (automatic_maintenance is off for it)" if cfg and not cfg.automatic_maintenance else ""
    if last is not None:
        age = server.now - last
        if age <= STALE_AFTER:
            return []
        return [Finding(
            "maintenance_stale", Severity.WARNING, name,
            f"no successful maintenance for {fmt_delta(age)} (last {fmt_key(last, 'UTC')} UTC, "
            f"recorded by {source}){off}",
            {"last_success": iso(last), "source": source, "age_seconds": age.total_seconds()},
        )]
    if cfg is None or runway_severity(rw) is None:
        return []  # nothing records it and the runway looks fine: no evidence either way
    return [Finding(
        "maintenance_stale", Severity.WARNING, name,
        f"partman maintenance seems to have stopped: the runway is shorter than premake "
        f"{cfg.premake}, and neither partman nor partguard records its runs{off}",
        {"last_success": None, "source": "inferred", "age_seconds": None},
    )]


# --- helpers ---


def _runs(grid: Grid, starts: Sequence[Key]) -> list[dict[str, Any]]:
    """Consecutive bucket starts folded into runs: 18, 19, 20 -> '18 … 20' (3 buckets)."""
    zone = grid.tz if isinstance(grid, TimeGrid) else None
    runs: list[list[Key]] = []
    for s in starts:
        if runs and grid.next(runs[-1][-1]) == s:  # type: ignore[arg-type]
            runs[-1].append(s)
        else:
            runs.append([s])
    out = []
    for r in runs:
        first, last = r[0], r[-1]
        label = fmt_key(first, zone)
        if len(r) > 1:
            label += f" … {fmt_key(last, zone)}"
        end = grid.next(last)  # type: ignore[arg-type]
        out.append({"first": iso(first), "last": iso(last), "end": iso(end), "buckets": len(r),
                    "label": label})
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
        return (f"{end}, {abs(rw.ids)} ids {'above' if rw.ids >= 0 else 'below'} "
                f"the largest id {rw.reference}")
    if rw.seconds is None:
        return end
    span = fmt_delta(timedelta(minutes=round(abs(rw.seconds) / 60)))
    return f"{end}, {span} {'from now' if rw.seconds >= 0 else 'ago'}"
