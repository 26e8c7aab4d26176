"""Retention windows, pg_partman's retention as it decides, and the reads that check both.

pg_partman's ``drop_partition_time`` (4.7 and 5.x alike) retires a child when ``child_start
+ partition_interval < now() - retention``: it takes a child's end to be its start plus one
interval. For a child wider than one interval (the one ``fix --strategy instant`` leaves, or
one made by hand) that end is too early, so partman drops or detaches the child while rows
in it are still inside the window (pg_partman #776). ``drop_partition_id`` does the same
with ``start + interval <= max(id) - retention``. partguard's own retention looks at the
upper bound instead, and this module lets ``check`` warn about partman's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from psycopg import sql

from ..db import Conn
from ..errors import UsageError
from .catalog import Child, Key, Table
from .grid import Grid, Interval, IntGrid, TimeGrid, key_le, parse_interval, time_grid
from .partman import PartmanConfig

Window = Interval | int  # how far back rows are kept: an interval, or ids for integer keys


def parse_window(value: object, what: str = "retention") -> Window:
    """``"30 days"`` or an integer (ids); UsageError on anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise UsageError(f"{what} must be positive, got {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_window(int(text), what)
        try:
            return parse_interval(text)
        except UsageError as exc:
            raise UsageError(f"{what}: {exc}") from None
    raise UsageError(f'{what} must be an interval such as "30 days" or an integer, got {value!r}')


def as_wall(x: Key) -> Key:
    """Dates as midnight datetimes, so a window of hours applies to them too."""
    if isinstance(x, date) and not isinstance(x, datetime):
        return datetime.combine(x, time())
    return x


def before(reference: Key, window: Window, tz: str | None) -> Key:
    """``reference - window`` as PostgreSQL computes it in ``tz`` (months and days on the
    wall clock, then the rest): the oldest key still inside the window."""
    if isinstance(window, int):
        if not isinstance(reference, int):
            raise UsageError(f"a retention of {window} (ids) needs an integer key")
        return reference - window
    if isinstance(reference, int):
        raise UsageError(f"a retention of {window} needs a time key, not an integer one")
    ref = as_wall(reference)
    assert isinstance(ref, datetime)
    zone = tz if ref.tzinfo is not None else None
    return time_grid(window, zone, anchor=ref).prev(ref)


def after(lower: Key, grid: Grid) -> Key:
    """``lower + interval``, in the grid's zone: where partman thinks a child ends."""
    if isinstance(grid, IntGrid):
        assert isinstance(lower, int)
        return lower + grid.step
    low = as_wall(lower)
    assert isinstance(low, datetime)
    zone = grid.tz if low.tzinfo is not None else None
    return time_grid(grid.step, zone, anchor=low).next(low)


def le(a: Key, b: Key) -> bool:
    """``a <= b`` across dates and datetimes."""
    return key_le(as_wall(a), as_wall(b))


@dataclass(frozen=True)
class PartmanDrop:
    """A child partman's next retention run retires although its range reaches into the window."""

    child: Child
    end: Key  # partman's idea of the child's end: its start plus one interval
    cutoff: Key  # the oldest key inside the window


def partman_window(config: PartmanConfig) -> Window | None:
    """``part_config.retention``, or None when unset (or not something partman could use)."""
    raw = config.raw.get("retention")
    if raw in (None, ""):
        return None
    try:
        return parse_window(raw)
    except UsageError:
        return None


def early_drops(
    table: Table, config: PartmanConfig, grid: Grid | None, reference: Key | None
) -> list[PartmanDrop]:
    """The children partman's retention would retire while their upper bound is still inside the
    window. ``reference`` is "now" in the key's type (for integer keys: the largest id)."""
    window = partman_window(config)
    if window is None or grid is None or reference is None:
        return []
    if isinstance(grid, IntGrid) != isinstance(window, int):
        return []  # partman itself would fail on this config
    zone = grid.tz if isinstance(grid, TimeGrid) else None
    cutoff = before(reference, window, zone)
    out = []
    for child in table.children[:-1]:  # partman never drops the last child
        if child.lower is None:
            continue
        end = after(child.lower, grid)
        retired = le(end, cutoff) if isinstance(window, int) else le(end, cutoff) and end != cutoff
        if retired and (child.upper is None or not le(child.upper, cutoff)):
            out.append(PartmanDrop(child, end, cutoff))
    return out


def max_keys(conn: Conn, table: Table, children: list[Child]) -> tuple[tuple[int, Key | None], ...]:
    """``(child oid, max(key))`` of each child: one index descent each where the key is indexed."""
    k = sql.Identifier(table.key)
    out = []
    for child in children:
        row = conn.execute(
            sql.SQL("SELECT max({k}) FROM {rel}").format(k=k, rel=child.ident)
        ).fetchone()
        out.append((child.oid, row[0] if row else None))
    return tuple(out)


def now_key(table: Table, now: datetime, tz: str, max_key: Key | None) -> Key | None:
    """Where "now" is on the key's axis (dates as a wall-clock datetime, ids: the largest)."""
    if table.key_kind == "int":
        return max_key
    if table.key_type == "timestamp with time zone":
        return now
    return now.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
