"""Naming and creating children, the way the table's owner would have.

pg_partman parses its children's names (4.7's ``show_partitions`` sorts by the suffix): a
child named outside its convention breaks every later maintenance run ("timestamp out of
range" after the old script's ``_p20261122`` on a 4.7 table). So names always follow the
table's own convention: partman's ``datetime_string`` when partman manages it, else the
pattern the existing children already use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from psycopg import sql

from ..inspect.catalog import Key, Table
from ..inspect.grid import (
    Grid,
    IntGrid,
    TimeGrid,
    child_name,
    child_suffix,
    int_key,
    key_le,
    key_lt,
    partman_datetime_string,
)
from ..inspect.partman import Partman, PartmanConfig
from ..inspect.zones import zone_info

# Suffix formats we recognise in hand-made tables, most specific first.
_NATIVE_FORMATS = (
    "YYYYMMDD_HH24MISS",
    "YYYY_MM_DD_HH24MISS",
    "YYYY_MM_DD_HH24MI",
    "YYYYMMDDHH24",
    "YYYY_MM_DD",
    "YYYYMMDD",
    "YYYY_MM",
    "YYYYMM",
    "YYYY",
)


@dataclass(frozen=True)
class Naming:
    """How this table's children are named: ``<stem><prefix><suffix(start)>``."""

    stem: str
    prefix: str
    datetime_string: str | None  # None for integer keys
    tz: str | None  # the zone bounds are rendered in

    def name(self, start: Key) -> str:
        return child_name(self.stem, _in_zone(start, self.tz), self.datetime_string, self.prefix)

    def head(self, start: Key) -> str:
        """``name(start)`` without the rendered bound: the (possibly cut) stem and prefix."""
        return self.name(start)[
            : -len(child_suffix(_in_zone(start, self.tz), self.datetime_string))
        ]

    def unique(self, start: Key, taken: set[str] | frozenset[str]) -> str:
        """``name(start)``, or where an existing child already has it (an off-grid
        neighbour named for the same day) the same name with the start's time appended,
        e.g. ``fixes_p2026_11_27_2300``: partman 4.x sorts children by parsing the suffix
        with its datetime_string, which ignores trailing text, so the order stays right."""
        name = self.name(start)
        if name not in taken:
            return name
        local = _in_zone(start, self.tz)
        fmt = self.datetime_string
        tails = [fmt + "_HH24MI", fmt + "_HH24MISS"] if fmt and isinstance(local, datetime) else []
        for tail in tails:
            name = child_name(self.stem, local, tail, self.prefix)
            if name not in taken:
                return name
        n = 2
        while name in taken:
            if fmt:
                name = child_name(self.stem, local, fmt + f'"_{n}"', self.prefix)
            else:
                tail = f"{self.prefix}{local}_{n}"
                name = self.stem.encode()[: 63 - len(tail.encode())].decode(errors="ignore") + tail
            n += 1
        return name


def _in_zone(start: Key, tz: str | None) -> Key:
    if isinstance(start, datetime) and start.tzinfo is not None and tz:
        return start.astimezone(zone_info(tz))
    return start


def naming(
    table: Table, config: PartmanConfig | None, partman: Partman | None, grid: Grid
) -> Naming:
    tz = grid.tz if isinstance(grid, TimeGrid) else None
    if config is not None:
        fmt = (
            None
            if isinstance(grid, IntGrid)
            else (
                config.datetime_string
                or partman_datetime_string(grid.step, partman.major if partman else 5)
            )
        )
        return Naming(table.name, "_p", fmt, tz)
    return _native_naming(table, grid, tz)


def _native_naming(table: Table, grid: Grid, tz: str | None) -> Naming:
    """Recognise the existing children's pattern from the newest child that fits one."""
    for child in reversed(table.children):
        if child.lower is None:
            continue
        if isinstance(grid, IntGrid):
            m = re.fullmatch(rf"(.*?)({int_key(child.lower)})", child.name)
            if m:
                return _split(table.name, m.group(1), None, tz)
            continue
        for fmt in _NATIVE_FORMATS:
            suffix = child_suffix(_in_zone(child.lower, tz), fmt)
            if child.name.endswith(suffix):
                return _split(table.name, child.name[: -len(suffix)], fmt, tz)
    default = None if isinstance(grid, IntGrid) else partman_datetime_string(grid.step, 5)
    return Naming(table.name, "_p", default, tz)


def _split(parent: str, head: str, fmt: str | None, tz: str | None) -> Naming:
    """``head`` is everything before the suffix, e.g. ``fixes_p`` -> stem fixes, prefix _p."""
    if head.startswith(parent):
        return Naming(parent, head[len(parent) :], fmt, tz)
    return Naming(head, "", fmt, tz)


def bound_literal(value: Key, table: Table) -> sql.Composable:
    """A bound as a typed literal, so the CHECK and FOR VALUES compare as the key does."""
    return key_literal(value, table.key_type)


def key_literal(value: Key, key_type: str) -> sql.Composable:
    """``bound_literal`` from the key's type alone (a plan read back from the journal)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        text = value.astimezone(ZoneInfo("UTC")).isoformat(sep=" ")
    elif isinstance(value, (datetime, date)):
        text = value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    else:
        return sql.Literal(int(value))
    return sql.SQL("{}::{}").format(sql.Literal(text), sql.SQL(_SAFE_TYPES[key_type]))


_SAFE_TYPES = {
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "date": "date",
}


def create_child(table: Table, schema: str, name: str, lower: Key, upper: Key) -> sql.Composed:
    """``CREATE TABLE … PARTITION OF``: inherits the parent's indexes, constraints and
    defaults. With a DEFAULT attached PostgreSQL would scan it, so callers create children
    only while the DEFAULT is detached or known empty for the range."""
    return sql.SQL(
        "CREATE TABLE {child} PARTITION OF {parent} FOR VALUES FROM ({lo}) TO ({hi})"
    ).format(
        child=sql.Identifier(schema, name),
        parent=table.ident,
        lo=bound_literal(lower, table),
        hi=bound_literal(upper, table),
    )


def partman_create(partman: Partman, table: Table, starts: list[Key]) -> sql.Composed:
    """Let partman make on-grid children itself, so its template table, privileges and
    naming apply. The caller pins the session TimeZone to the grid's zone first."""
    if starts and isinstance(starts[0], int):
        func, arr = "create_partition_id", sql.SQL("::bigint[]")
    else:
        func, arr = "create_partition_time", sql.SQL("::timestamptz[]")
    values = sql.SQL(", ").join(
        sql.Literal(s.isoformat() if isinstance(s, (date, datetime)) else int(s)) for s in starts
    )
    # 4.x has p_analyze (default true: an ANALYZE of the whole parent); 5.x dropped it.
    analyze = sql.SQL(", p_analyze := false") if partman.major < 5 else sql.SQL("")
    return sql.SQL(
        "SELECT {f}(p_parent_table := {parent}, {arg} := ARRAY[{values}]{arr}{analyze})"
    ).format(
        f=partman.func(func),
        parent=sql.Literal(f"{table.schema}.{table.name}"),
        values=values,
        arr=arr,
        arg=sql.Identifier(
            "p_partition_ids" if func == "create_partition_id" else "p_partition_times"
        ),
        analyze=analyze,
    )


def partman_warmup(partman: Partman, table: Table) -> sql.Composed:
    """The same partman call with nothing to create. Run before the swap, it compiles
    partman's plpgsql and loads its caches in this session, so the swap's lock is not
    spent on that (measured: 166-199 ms for a first call, 54-79 ms warm)."""
    func, arr = (
        ("create_partition_id", "bigint")
        if table.key_kind == "int"
        else ("create_partition_time", "timestamptz")
    )
    analyze = sql.SQL(", p_analyze := false") if partman.major < 5 else sql.SQL("")
    return sql.SQL(
        "SELECT {f}(p_parent_table := {parent}, {arg} := ARRAY[]::{arr}[]{analyze})"
    ).format(
        f=partman.func(func),
        parent=sql.Literal(f"{table.schema}.{table.name}"),
        arg=sql.Identifier("p_partition_ids" if table.key_kind == "int" else "p_partition_times"),
        arr=sql.SQL(arr),
        analyze=analyze,
    )


def free_spans(table: Table, lo: Key, hi: Key) -> list[tuple[Key, Key]]:
    """The parts of ``[lo, hi)`` no existing child covers: where a new child may go.

    Off-grid neighbours clip a bucket instead of being overlapped, so a new child fills
    exactly the gap between them.
    """
    spans: list[tuple[Key, Key]] = []
    cur = lo
    for child in table.children:
        c_lo, c_hi = child.lower, child.upper
        if c_hi is not None and key_le(c_hi, cur):
            continue
        if c_lo is not None and key_le(hi, c_lo):
            break
        if c_lo is None or key_le(c_lo, cur):
            cur = c_hi if c_hi is not None else hi
        else:
            spans.append((cur, c_lo))
            cur = c_hi if c_hi is not None else hi
        if key_le(hi, cur):
            break
    if key_lt(cur, hi):
        spans.append((cur, hi))
    return spans
