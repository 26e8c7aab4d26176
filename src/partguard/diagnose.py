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
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from .errors import UsageError
from .inspect.catalog import Child, Key, Table
from .inspect.grid import Grid, IntGrid, TimeGrid
from .inspect.snapshot import Server, Snapshot, TableState, zone_label

# partman's own default; tables without partman are held to the same standard.
DEFAULT_PREMAKE = 4
# No successful maintenance for twice the usual (hourly) schedule.
STALE_AFTER = timedelta(hours=2)
CONNECTIONS_WARNING, CONNECTIONS_CRITICAL = 0.80, 0.95
# Caps that keep a pathological table (decades of hourly children) from slowing a check.
_MAX_STEPS = 10_000
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
    reason = table.unsupported_reason()
    if reason:
        # List/hash tables are simply not ours; a range table we cannot read is a blind spot.
        sev = Severity.INFO if table.strategy != "range" else Severity.UNKNOWN
        return [Finding("unsupported", sev, table.qualname, reason, {"strategy": table.strategy})]
    out = gaps_findings(table, _zone(state))
    out.extend(default_findings(state, server))
    grid = state.grid.grid
    if grid is None:
        out.append(Finding(
            "grid_unknown", Severity.UNKNOWN, table.qualname,
            f"{state.grid.error or 'the partition grid cannot be determined'} "
            "(pass --interval and --tz)", {},
        ))
        return out
    try:
        out.extend(misaligned_findings(state))
        out.extend(wide_findings(state))
        rw = runway(state, server)
        if rw is not None:
            out.extend(runway_findings(state, rw))
            out.extend(stale_findings(state, server, rw))
    except UsageError as exc:  # a grid that cannot hold this key type (e.g. hours on dates)
        out.append(Finding("grid_unknown", Severity.UNKNOWN, table.qualname, str(exc), {}))
    return out


# --- connections ---------------------------------------------------------------


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


# --- DEFAULT and gaps --------------------------------------------------------------


def default_rows_estimate(state: TableState) -> int | None:
    """reltuples lags behind inserts (and a never-analysed table gets the planner's guess of
    ~1000 rows): trust the probe's own keys for zero, and never report fewer than it saw."""
    p = state.default_probe
    if p is None:
        return None
    if p.empty:
        return 0
    return max(p.rows, p.null_rows + (0 if p.min_key is None else 1))


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


def gaps(table: Table) -> list[tuple[Key, Key]]:
    """Holes between consecutive children: rows there land in the DEFAULT (or fail)."""
    out: list[tuple[Key, Key]] = []
    kids = table.children
    for a, b in pairwise(kids):
        if a.upper is not None and b.lower is not None and _lt(a.upper, b.lower):
            out.append((a.upper, b.lower))
    return out


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


# --- the grid: misaligned and wide children ----------------------------------------------


def misaligned(state: TableState) -> list[tuple[Child, Key, Any]]:
    """(child, first off-grid bound, signed offset to the nearest boundary)."""
    grid = state.grid.grid
    if grid is None:
        return []
    out = []
    for child in state.table.children:
        for bound in (child.lower, child.upper):
            if bound is not None and not grid.is_aligned(bound):  # type: ignore[arg-type]
                out.append((child, bound, signed_offset(grid, bound)))
                break
    return out


def signed_offset(grid: Grid, x: Key) -> Any:
    """How far x is from the nearest grid boundary: -01:00 reads better than +23:00."""
    if isinstance(grid, IntGrid):
        off = grid.offset(int(x))  # type: ignore[arg-type]
        return off if off <= grid.step - off else off - grid.step
    assert isinstance(x, date)
    past = grid.offset(x)
    before = _instant(grid.next(x)) - _instant(x)
    return -before if before < past else past


def misaligned_findings(state: TableState) -> list[Finding]:
    bad = misaligned(state)
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
        msg = (f"{len(bad)} children are off the grid pg_partman computes ({where}): {first}{more}. "
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
                       "bound": iso(b), "offset": _offset_json(o)}
                      for c, b, o in bad[:_MAX_LISTED]]},
    )]


def wide_findings(state: TableState) -> list[Finding]:
    """Children spanning several buckets on purpose (``fix --strategy instant``): not a fault."""
    grid, out = state.grid.grid, []
    assert grid is not None
    zone = _zone(state)
    for c in state.table.children:
        if c.lower is None or c.upper is None:
            continue
        lo, hi = c.lower, c.upper
        if not (grid.is_aligned(lo) and grid.is_aligned(hi)):  # type: ignore[arg-type]
            continue
        n = _steps(grid, lo, hi)
        if n > 1:
            out.append(Finding(
                "wide_child", Severity.INFO, state.table.qualname,
                f"{c.name} spans {n} buckets ({fmt_key(lo, zone)} … {fmt_key(hi, zone)}), "
                "as fix --strategy instant leaves it; splitting it is optional",
                {"child": c.name, "from": iso(lo), "to": iso(hi), "buckets": n},
            ))
    return out


# --- runway and maintenance ---------------------------------------------------------


@dataclass(frozen=True)
class Runway:
    """How far ahead of the present (or of the largest id) children already exist."""

    reference: Key  # now, in the key's type, or the largest id
    last_upper: Key | None  # upper bound of the newest child
    frontier: Key | None  # end of contiguous coverage from `reference`; None if uncovered
    unbounded: bool  # a MAXVALUE child: never runs out
    seconds: float | None  # frontier - now (negative: how long ago children ran out)
    ids: int | None  # for integer keys
    intervals_ahead: int  # whole buckets covered after the current one
    current_start: Key
    current_end: Key
    next_end: Key
    current_covered: bool
    next_covered: bool
    premake: int

    @property
    def severity(self) -> Severity | None:
        if self.unbounded:
            return None
        if not (self.current_covered and self.next_covered):
            return Severity.CRITICAL
        # One missed creation is tolerated: maintenance runs a while after each boundary.
        if self.intervals_ahead < self.premake - 1:
            return Severity.WARNING
        return None


def reference_key(state: TableState, server: Server) -> Key | None:
    """The key value "now" has: the current time in the key's type, or the largest id."""
    table = state.table
    if table.key_kind == "int":
        seen = [k for k in (state.max_key, state.default_probe and state.default_probe.max_key)
                if isinstance(k, int)]
        return max(seen) if seen else None
    if table.key_type == "timestamp with time zone":
        return server.now
    wall = server.now.astimezone(ZoneInfo(server.timezone)).replace(tzinfo=None)
    return wall.date() if table.key_type == "date" else wall


def runway(state: TableState, server: Server) -> Runway | None:
    grid, ref = state.grid.grid, reference_key(state, server)
    if grid is None or ref is None:
        return None
    kids = state.table.children
    premake = state.config.premake if state.config is not None else DEFAULT_PREMAKE
    last_upper = kids[-1].upper if kids else None
    unbounded = bool(kids) and last_upper is None
    cur_start, cur_end = grid.floor(ref), grid.next(ref)  # type: ignore[arg-type]
    next_end = grid.next(cur_end)  # type: ignore[arg-type]
    frontier = _frontier(kids, ref)
    ahead = 0
    if frontier is not None and not unbounded:
        ahead = _steps(grid, cur_end, frontier)
    covered_to = frontier if frontier is not None else ref
    seconds = ids = None
    if isinstance(ref, int):
        ids = int(frontier) - ref if frontier is not None else (  # type: ignore[arg-type]
            int(last_upper) - ref if isinstance(last_upper, int) and last_upper <= ref else 0)
    elif not unbounded:
        end = covered_to
        if frontier is None and last_upper is not None and not _lt(ref, last_upper):
            end = last_upper  # children ran out in the past: a negative runway says how long ago
        seconds = (_instant(end) - _instant(ref)).total_seconds()
    return Runway(
        reference=ref, last_upper=last_upper, frontier=frontier, unbounded=unbounded,
        seconds=seconds, ids=ids, intervals_ahead=ahead, current_start=cur_start,
        current_end=cur_end, next_end=next_end, current_covered=frontier is not None,
        next_covered=unbounded or (frontier is not None and not _lt(frontier, next_end)),
        premake=premake,
    )


def runway_findings(state: TableState, rw: Runway) -> list[Finding]:
    sev = rw.severity
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


def last_maintenance(state: TableState) -> tuple[datetime | None, str]:
    """The last successful maintenance and who recorded it ('partman' 5.1+, 'partguard')."""
    if state.config is not None and state.config.maintenance_last_run is not None:
        return state.config.maintenance_last_run, "partman"
    if state.last_maintenance is not None:
        return state.last_maintenance, "partguard"
    return None, ""


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
    if cfg is None or rw.severity is None:
        return []  # nothing records it and the runway looks fine: no evidence either way
    return [Finding(
        "maintenance_stale", Severity.WARNING, name,
        f"partman maintenance seems to have stopped: the runway is shorter than premake "
        f"{cfg.premake}, and neither partman nor partguard records its runs{off}",
        {"last_success": None, "source": "inferred", "age_seconds": None},
    )]


# --- helpers -------------------------------------------------------------------


def _frontier(kids: Sequence[Child], x: Key) -> Key | None:
    """End of the run of touching children that starts with the one holding x."""
    lo, hi = 0, len(kids)
    while lo < hi:  # the last child whose lower bound is <= x
        mid = (lo + hi) // 2
        low = kids[mid].lower
        if low is None or not _lt(x, low):
            lo = mid + 1
        else:
            hi = mid
    i = lo - 1
    if i < 0 or (kids[i].upper is not None and not _lt(x, kids[i].upper)):
        return None
    while i + 1 < len(kids) and kids[i].upper is not None and kids[i + 1].lower == kids[i].upper:
        i += 1
    return kids[i].upper


def _steps(grid: Grid, lo: Key, hi: Key) -> int:
    """Whole buckets between boundary-ish lo and hi (capped)."""
    n, b = 0, lo
    while n < _MAX_STEPS:
        nxt = grid.next(b)  # type: ignore[arg-type]
        if _lt(hi, nxt):
            break
        n, b = n + 1, nxt
    return n


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
        label = fmt_key(first, zone) if len(r) == 1 else f"{fmt_key(first, zone)} … {fmt_key(last, zone)}"
        out.append({"first": iso(first), "last": iso(last),
                    "end": iso(grid.next(last)), "buckets": len(r), "label": label})  # type: ignore[arg-type]
    return out


def _lt(a: Any, b: Any) -> bool:
    return bool(a < b)


def _instant(x: Key) -> datetime:
    """Keys as comparable instants: aware -> UTC, naive and dates -> wall time."""
    if isinstance(x, datetime):
        return x.astimezone(UTC).replace(tzinfo=None) if x.tzinfo is not None else x
    assert isinstance(x, date)
    return datetime.combine(x, time())


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
    end = f"children end at {fmt_key(rw.last_upper if rw.frontier is None else rw.frontier, zone)}{_zone_suffix(zone)}"
    if rw.ids is not None:
        return (f"{end}, {abs(rw.ids)} ids {'above' if rw.ids >= 0 else 'below'} "
                f"the largest id {rw.reference}")
    if rw.seconds is None:
        return end
    span = fmt_delta(timedelta(minutes=round(abs(rw.seconds) / 60)))
    return f"{end}, {span} {'from now' if rw.seconds >= 0 else 'ago'}"


def iso(x: Key | None) -> str | int | None:
    """A key for JSON: ISO 8601 (with offset for timestamptz), ints as they are."""
    if x is None or isinstance(x, int):
        return x
    return x.isoformat()


def fmt_key(x: Key | None, zone: str | None = None) -> str:
    """A key for humans, in ``zone``: dates when on midnight, else minutes (or seconds)."""
    if x is None:
        return "unbounded"
    if isinstance(x, int) or not isinstance(x, datetime):
        return str(x)
    if x.tzinfo is not None and zone:
        x = x.astimezone(ZoneInfo(zone))
    if x.time() == time():
        return x.date().isoformat()
    text = x.strftime("%Y-%m-%d %H:%M:%S" if x.second or x.microsecond else "%Y-%m-%d %H:%M")
    if x.tzinfo is not None and not zone:
        text += x.strftime("%z")[:3]
    return text


def fmt_delta(d: timedelta) -> str:
    """Signed '2 days 03:15' style, the way PostgreSQL prints intervals."""
    sign, d = ("-" if d < timedelta(0) else ""), abs(d)
    hours, rest = divmod(int(d.total_seconds()) - d.days * 86400, 3600)
    text = f"{hours:02d}:{rest // 60:02d}" + (f":{rest % 60:02d}" if rest % 60 else "")
    if d.days:
        text = f"{d.days} day{'s' if d.days != 1 else ''} {text}"
    return sign + text


def fmt_offset(off: Any) -> str:
    if isinstance(off, timedelta):
        return ("+" if off >= timedelta(0) else "") + fmt_delta(off) + " off the grid"
    return f"{int(off):+d} off the grid"


def _offset_json(off: Any) -> float | int:
    return off.total_seconds() if isinstance(off, timedelta) else int(off)


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")


def display_name(table: Table) -> str:
    """``schema.table`` as a DBA types it: each part quoted only when it has to be."""
    return ".".join(_quote_if_needed(p) for p in (table.schema, table.name))


def _quote_if_needed(part: str) -> str:
    if part and not part[0].isdigit() and part[0] != "$" and set(part) <= _PLAIN:
        return part
    return '"' + part.replace('"', '""') + '"'
