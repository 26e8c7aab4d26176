"""Where a table's children are, and are not: gaps, grid alignment, runway.

Pure measurements on a snapshot. The diagnosis turns them into findings; ``check``'s
summary and the Prometheus metrics report the same numbers, so they are computed once here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from itertools import pairwise
from typing import Any

from .inspect.catalog import Child, Key, Table
from .inspect.grid import Grid, Interval, IntGrid, int_key, key_lt, on_grid
from .inspect.snapshot import Server, TableState
from .inspect.zones import zone_info

# partman's own default; tables without partman are held to the same standard.
DEFAULT_PREMAKE = 4
# Keeps a pathological table (decades of hourly children) from slowing a check down.
MAX_STEPS = 10_000


def default_rows_estimate(state: TableState) -> int | None:
    """reltuples lags behind inserts (and a never-analysed table gets the planner's guess of
    ~1000 rows): trust the probe's own keys for zero, and never report fewer than it saw."""
    p = state.default_probe
    if p is None:
        return None
    if p.empty:
        return 0
    return max(p.rows, p.null_rows + (0 if p.min_key is None else 1))


def gaps(table: Table) -> list[tuple[Key, Key]]:
    """Holes between consecutive children: rows there land in the DEFAULT (or fail)."""
    out: list[tuple[Key, Key]] = []
    kids = table.children
    for a, b in pairwise(kids):
        if a.upper is not None and b.lower is not None and key_lt(a.upper, b.lower):
            out.append((a.upper, b.lower))
    return out


Alignment = dict[Key, bool]


def alignment(state: TableState) -> Alignment:
    """Whether each distinct bound of the children is a grid boundary (one walk along the
    grid: ``on_grid``). Compute it once per table and pass it on: it is a check's main cost."""
    grid = state.grid.grid
    if grid is None:
        return {}
    kids = state.table.children
    bounds: list[Any] = sorted({b for c in kids for b in (c.lower, c.upper) if b is not None})
    return dict(zip(bounds, on_grid(grid, bounds), strict=True))


def misaligned(state: TableState, aligned: Alignment | None = None) -> list[tuple[Child, Key, Any]]:
    """(child, first off-grid bound, signed offset to the nearest boundary)."""
    grid = state.grid.grid
    if grid is None:
        return []
    aligned, out = alignment(state) if aligned is None else aligned, []
    for child in state.table.children:
        for bound in (child.lower, child.upper):
            if bound is not None and not aligned[bound]:
                out.append((child, bound, signed_offset(grid, bound)))
                break
    return out


def signed_offset(grid: Grid, x: Key) -> Any:
    """How far x is from the nearest grid boundary: -01:00 reads better than +23:00."""
    if isinstance(grid, IntGrid):
        off = grid.offset(x)
        return off if off <= grid.step - off else off - grid.step
    assert isinstance(x, date)
    past = grid.offset(x)
    before = as_instant(grid.next(x)) - as_instant(x)
    return -before if before < past else past


def wide_children(state: TableState, aligned: Alignment | None = None) -> list[tuple[Child, int]]:
    """Children spanning several whole buckets, with how many (both bounds on the grid)."""
    grid, out = state.grid.grid, []
    if grid is None:
        return []
    aligned = alignment(state) if aligned is None else aligned
    for c in state.table.children:
        lo, hi = c.lower, c.upper
        if lo is None or hi is None or not (aligned[lo] and aligned[hi]):
            continue
        if isinstance(grid, IntGrid):
            n = (int_key(hi) - int_key(lo)) // grid.step
        elif _seconds(lo, hi) > 1.5 * _nominal_seconds(grid.step):
            # Only a child longer than any single bucket (months and DST days vary by far
            # less than half) needs the exact, slower count.
            n = whole_steps(grid, lo, hi)
        else:
            continue
        if n > 1:
            out.append((c, n))
    return out


def _seconds(lo: Key, hi: Key) -> float:
    return (as_instant(hi) - as_instant(lo)).total_seconds()


def _nominal_seconds(step: Interval) -> float:
    return step.months * 30.436875 * 86400 + step.days * 86400 + step.micros / 1e6


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
    def uncovered(self) -> bool:
        """The current or the next interval has no child: rows go to the DEFAULT soon."""
        return not self.unbounded and not (self.current_covered and self.next_covered)

    @property
    def short(self) -> bool:
        """Fewer children ahead than premake wants. One missed creation is tolerated:
        maintenance runs a while after each boundary, not at it."""
        return not self.unbounded and self.intervals_ahead < self.premake - 1


def reference_key(state: TableState, server: Server) -> Key | None:
    """The key value "now" has: the current time in the key's type, or the largest id."""
    table = state.table
    if table.key_kind == "int":
        seen = [
            k
            for k in (state.max_key, state.default_probe and state.default_probe.max_key)
            if isinstance(k, int)
        ]
        return max(seen) if seen else None
    if table.key_type == "timestamp with time zone":
        return server.now
    wall = server.now.astimezone(zone_info(server.timezone)).replace(tzinfo=None)
    return wall.date() if table.key_type == "date" else wall


def runway(state: TableState, server: Server) -> Runway | None:
    """None when the grid or the reference (no rows for an id key) is unknown."""
    grid, ref = state.grid.grid, reference_key(state, server)
    if grid is None or ref is None:
        return None
    kids = state.table.children
    premake = state.config.premake if state.config is not None else DEFAULT_PREMAKE
    last_upper = kids[-1].upper if kids else None
    unbounded = bool(kids) and last_upper is None
    cur_start, cur_end = grid.floor(ref), grid.next(ref)
    next_end = grid.next(cur_end)
    front = frontier(kids, ref)
    ahead = 0
    if front is not None and not unbounded:
        ahead = whole_steps(grid, cur_end, front)
    covered_to = front if front is not None else ref
    seconds = ids = None
    if isinstance(ref, int):
        ids = (
            int_key(front) - ref
            if front is not None
            else (int(last_upper) - ref if isinstance(last_upper, int) and last_upper <= ref else 0)
        )
    elif not unbounded:
        end = covered_to
        if front is None and last_upper is not None and not key_lt(ref, last_upper):
            end = last_upper  # children ran out in the past: a negative runway says how long ago
        seconds = (as_instant(end) - as_instant(ref)).total_seconds()
    return Runway(
        reference=ref,
        last_upper=last_upper,
        frontier=front,
        unbounded=unbounded,
        seconds=seconds,
        ids=ids,
        intervals_ahead=ahead,
        current_start=cur_start,
        current_end=cur_end,
        next_end=next_end,
        current_covered=front is not None,
        next_covered=unbounded or (front is not None and not key_lt(front, next_end)),
        premake=premake,
    )


def last_maintenance(state: TableState) -> tuple[datetime | None, str]:
    """The last successful maintenance and who recorded it ('partman' 5.1+, 'partguard')."""
    if state.config is not None and state.config.maintenance_last_run is not None:
        return state.config.maintenance_last_run, "partman"
    if state.last_maintenance is not None:
        return state.last_maintenance, "partguard"
    return None, ""


def frontier(kids: Sequence[Child], x: Key) -> Key | None:
    """End of the run of touching children that starts with the one holding x."""
    lo, hi = 0, len(kids)
    while lo < hi:  # the last child whose lower bound is <= x
        mid = (lo + hi) // 2
        low = kids[mid].lower
        if low is None or not key_lt(x, low):
            lo = mid + 1
        else:
            hi = mid
    i = lo - 1
    if i < 0 or ((up := kids[i].upper) is not None and not key_lt(x, up)):
        return None
    while i + 1 < len(kids) and kids[i].upper is not None and kids[i + 1].lower == kids[i].upper:
        i += 1
    return kids[i].upper


def whole_steps(grid: Grid, lo: Key, hi: Key) -> int:
    """Whole buckets between boundary-ish lo and hi (capped)."""
    n, b = 0, lo
    while n < MAX_STEPS:
        nxt = grid.next(b)
        if key_lt(hi, nxt):
            break
        n, b = n + 1, nxt
    return n


def as_instant(x: Key) -> datetime:
    """Keys as comparable instants: aware -> UTC, naive and dates -> wall time."""
    if isinstance(x, datetime):
        return x.astimezone(UTC).replace(tzinfo=None) if x.tzinfo is not None else x
    assert isinstance(x, date)
    return datetime.combine(x, time())
