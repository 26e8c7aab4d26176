"""Which future children a table without pg_partman needs: pure, from a snapshot and "now".

The plan never creates a child whose range the DEFAULT already holds rows of: PostgreSQL
would refuse anyway, but only after scanning the DEFAULT under an ACCESS EXCLUSIVE lock on
the parent, and the rows need ``partguard fix``, not a new empty child. It also stops at the
first such range: children beyond it would wall the rows in, turning the open-ended gap the
repair expects into a hole between children.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from psycopg import sql

from ..errors import UnknownGrid
from ..inspect.catalog import Key, Table
from ..inspect.grid import Grid, IntGrid, key_le
from ..inspect.snapshot import TableState
from ..inspect.zones import zone_info
from .cap import ensure_cap
from .children import Naming, bound_literal, create_child, free_spans, naming


@dataclass(frozen=True)
class CreateChild:
    """One child to create; ``probe`` asks whether the DEFAULT holds rows of its range."""

    schema: str
    name: str
    lower: Key
    upper: Key
    probe: sql.Composed | None  # None: the table has no DEFAULT, nothing to scan
    create: sql.Composed

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Refusal:
    lower: Key
    upper: Key
    reason: str


@dataclass(frozen=True)
class PremakePlan:
    table: str
    steps: tuple[CreateChild, ...]
    refused: (
        Refusal | None
    )  # the first range that could not get a child; nothing after it is planned
    horizon: Key | None  # the upper bound the table should reach (None: no data yet for an id key)


def current_key(
    table: Table, grid: Grid, now: datetime, tz: str, data_max: Key | None
) -> Key | None:
    """Where "now" is on the key's axis: the instant for timestamptz, the wall clock in
    ``tz`` for timestamp/date, and the largest id present for integer keys."""
    if isinstance(grid, IntGrid):
        return data_max
    if table.key_type == "timestamp with time zone":
        return now
    wall = now.astimezone(zone_info(tz)).replace(tzinfo=None)
    return wall.date() if table.key_type == "date" else wall


def plan_premake(
    state: TableState, premake: int, now: datetime, tz: str, naming_override: Naming | None = None
) -> PremakePlan:
    """Children for the current bucket and ``premake`` buckets after it, where none exist."""
    table, grid = state.table, state.grid.grid
    if grid is None:
        raise UnknownGrid(
            state.grid.error or f"{table.qualname}: the partition interval is unknown"
        )
    probe = state.default_probe
    data_max = _max_key(state.max_key, probe.max_key if probe else None)
    current = current_key(table, grid, now, tz, data_max)
    if current is None:
        return PremakePlan(table.qualname, (), None, None)
    ensure_cap(table, grid, premake + 1, f"a premake of {premake}")
    start: Key = grid.floor(current)
    end: Key = start
    for _ in range(premake + 1):
        end = grid.next(end)
    names = naming_override or naming(table, None, None, grid)
    taken = {c.name for c in table.children} | ({table.default.name} if table.default else set())
    held = set(probe.buckets) if probe else set()
    steps: list[CreateChild] = []
    for b_lo, b_hi in grid.buckets(start, end):
        for lo, hi in free_spans(table, b_lo, b_hi):
            if grid.floor(lo) in held or (
                probe is not None and probe.truncated and _ge(lo, probe.buckets[-1])
            ):
                return PremakePlan(
                    table.qualname,
                    tuple(steps),
                    Refusal(lo, hi, "the DEFAULT holds rows of this range"),
                    end,
                )
            name = names.name(lo)
            if name in taken:
                why = f"a table named {name} already exists (is the naming format finer than the interval?)"
                return PremakePlan(table.qualname, tuple(steps), Refusal(lo, hi, why), end)
            taken.add(name)
            steps.append(
                CreateChild(
                    table.schema,
                    name,
                    lo,
                    hi,
                    default_rows_sql(table, lo, hi),
                    create_child(table, table.schema, name, lo, hi),
                )
            )
    return PremakePlan(table.qualname, tuple(steps), None, end)


def default_rows_sql(table: Table, lower: Key, upper: Key) -> sql.Composed | None:
    """``EXISTS`` over the DEFAULT for one range: a single index descent when the key is
    indexed there, and it stops at the first row either way."""
    if table.default is None:
        return None
    k = sql.Identifier(table.key)
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM {d} WHERE {k} >= {lo} AND {k} < {hi})").format(
        d=table.default.ident, k=k, lo=bound_literal(lower, table), hi=bound_literal(upper, table)
    )


def _max_key(a: Key | None, b: Key | None) -> Key | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _ge(a, b) else b


def _ge(a: Key, b: Key) -> bool:
    if isinstance(a, date) and isinstance(b, date):
        return _as_dt(a) >= _as_dt(b)
    return key_le(b, a)


def _as_dt(d: date) -> datetime:
    if isinstance(d, datetime):
        return d if d.tzinfo is None else d.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    return datetime.combine(d, datetime.min.time())
