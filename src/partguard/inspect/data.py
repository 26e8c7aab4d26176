"""Look inside a DEFAULT partition (or a detached one) without reading it whole.

The DEFAULT of the incident held 94M rows; a ``GROUP BY`` over it would take minutes and
evict the cache. With an index led by the key we walk it bucket by bucket instead (a loose
index scan: ``min(key) WHERE key >= next_bucket``), so the cost is O(buckets) index
descents, whatever the row count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ..db import Conn
from .catalog import Key
from .grid import Grid

# Beyond this many distinct buckets we stop walking and report what we have (an outlier
# storm must not turn a health check into a million round trips).
MAX_BUCKETS = 5000
# When the statistics say nothing, count instead, but stop here: cheap on any table, exact below.
COUNT_CAP = 100_000


@dataclass(frozen=True)
class Probe:
    """What a DEFAULT (or holding) table contains, as far as the grid is concerned."""

    rows_estimate: int
    rows_exact: int | None
    min_key: Key | None
    max_key: Key | None
    null_rows: int
    buckets: tuple[Key, ...]  # starts of grid buckets that hold at least one row
    truncated: bool  # more than MAX_BUCKETS buckets: the list is a prefix
    used_index: bool
    rows_at_least: bool = (
        False  # stale statistics, and the count stopped at COUNT_CAP: >= rows_estimate
    )

    @property
    def rows(self) -> int:
        return self.rows_exact if self.rows_exact is not None else self.rows_estimate

    @property
    def empty(self) -> bool:
        return self.min_key is None and self.null_rows == 0


@dataclass(frozen=True)
class RowCount:
    rows: int
    exact: bool  # counted to the end
    at_least: bool  # the count stopped at its cap: there are at least ``rows``


def estimate_rows(conn: Conn, rel: sql.Composable, cap: int = COUNT_CAP) -> RowCount:
    """The statistics' row count scaled to the relation's current size (as the planner does).

    Statistics that say nothing (never analysed: reltuples -1; analysed while empty: 0, the
    DEFAULT's usual state before an outage fills it) are replaced by a count that stops after
    ``cap`` rows: exact below it, "at least ``cap``" above.
    """
    row = conn.execute(
        sql.SQL(
            "SELECT reltuples, relpages, pg_relation_size(oid) / current_setting('block_size')::int "
            "FROM pg_class WHERE oid = {}::regclass"
        ).format(sql.Literal(rel.as_string(conn)))
    ).fetchone()
    if row and row[0] > 0 and row[1] > 0:
        scaled = round(float(row[0]) / int(row[1]) * int(row[2]))
        if scaled > 0:
            return RowCount(scaled, False, False)
    counted = conn.execute(
        sql.SQL("SELECT count(*) FROM (SELECT FROM {} LIMIT {}) s").format(
            rel, sql.Literal(cap + 1)
        )
    ).fetchone()
    n = int(counted[0]) if counted else 0
    return RowCount(min(n, cap), n <= cap, n > cap)


def loose_scan_sql(rel: sql.Composable, key: str) -> sql.Composed:
    """The one query the bucket walk repeats: the smallest key at or after a boundary.

    ``ORDER BY key LIMIT 1`` (rather than ``min()``) keeps it an index descent on every
    PostgreSQL version; its plan is tested.
    """
    k = sql.Identifier(key)
    return sql.SQL("SELECT {k} FROM {rel} WHERE {k} >= %s ORDER BY {k} LIMIT 1").format(
        k=k, rel=rel
    )


def probe(
    conn: Conn,
    rel: sql.Composable,
    key: str,
    grid: Grid | None,
    *,
    has_index: bool,
    exact: bool = False,
) -> Probe:
    """Summarise ``rel``'s keys on ``grid``: min, max, NULLs and the non-empty buckets."""
    k = sql.Identifier(key)
    rows_exact: int | None = None
    at_least = False
    if exact or not has_index:
        # Without an index every question costs a scan; ask them all in one.
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), min({k}), max({k}), count(*) FILTER (WHERE {k} IS NULL) FROM {rel}"
            ).format(k=k, rel=rel)
        ).fetchone()
        assert row is not None
        rows_exact, lo, hi, nulls = int(row[0]), row[1], row[2], int(row[3])
        est = rows_exact
    else:
        lo = _one(
            conn,
            sql.SQL("SELECT {k} FROM {rel} WHERE {k} IS NOT NULL ORDER BY {k} LIMIT 1"),
            k,
            rel,
        )
        hi = _one(
            conn,
            sql.SQL("SELECT {k} FROM {rel} WHERE {k} IS NOT NULL ORDER BY {k} DESC LIMIT 1"),
            k,
            rel,
        )
        nulls_row = conn.execute(
            sql.SQL("SELECT count(*) FROM {rel} WHERE {k} IS NULL").format(k=k, rel=rel)
        ).fetchone()
        nulls = int(nulls_row[0]) if nulls_row else 0
        counted = estimate_rows(conn, rel)
        est, at_least = counted.rows, counted.at_least
        rows_exact = counted.rows if counted.exact else None
    buckets: list[Key] = []
    truncated = False
    if lo is not None and grid is not None:
        if has_index:
            buckets, truncated = _walk(conn, rel, key, grid, lo)
        else:
            buckets, truncated = _scan_buckets(conn, rel, key, grid, lo, hi)
    return Probe(est, rows_exact, lo, hi, nulls, tuple(buckets), truncated, has_index, at_least)


def _one(conn: Conn, template: sql.SQL, k: sql.Identifier, rel: sql.Composable) -> Any:
    row = conn.execute(template.format(k=k, rel=rel)).fetchone()
    return row[0] if row else None


def _walk(conn: Conn, rel: sql.Composable, key: str, grid: Grid, lo: Any) -> tuple[list[Key], bool]:
    query = loose_scan_sql(rel, key)
    buckets: list[Key] = []
    cur: Any = lo
    while cur is not None:
        start = grid.floor(cur)
        buckets.append(start)
        if len(buckets) >= MAX_BUCKETS:
            return buckets, True
        row = conn.execute(query, (grid.next(start),)).fetchone()
        cur = row[0] if row else None
    return buckets, False


def _scan_buckets(
    conn: Conn, rel: sql.Composable, key: str, grid: Grid, lo: Any, hi: Any
) -> tuple[list[Key], bool]:
    """One sequential scan: ``width_bucket`` against the boundaries between min and max.

    Used only without an index on the key. Buckets far apart (outliers) would make the
    boundary list huge, so past MAX_BUCKETS boundaries we fall back to distinct keys.
    """
    bounds: list[Any] = []
    b: Any = grid.floor(lo)
    while b <= hi and len(bounds) <= MAX_BUCKETS:
        bounds.append(b)
        b = grid.next(b)
    k = sql.Identifier(key)
    if len(bounds) <= MAX_BUCKETS:
        rows = conn.execute(
            sql.SQL(
                "SELECT DISTINCT width_bucket({k}, %s) FROM {rel} WHERE {k} IS NOT NULL ORDER BY 1"
            ).format(k=k, rel=rel),
            (bounds,),
        ).fetchall()
        return [bounds[int(r[0]) - 1] for r in rows if r[0]], False
    # Sparse and wide: the walk without an index, capped.
    keys = conn.execute(
        sql.SQL(
            "SELECT DISTINCT {k} FROM {rel} WHERE {k} IS NOT NULL ORDER BY 1 LIMIT 100000"
        ).format(k=k, rel=rel)
    ).fetchall()
    seen: list[Key] = []
    for (value,) in keys:
        start = grid.floor(value)
        if not seen or seen[-1] != start:
            seen.append(start)
            if len(seen) >= MAX_BUCKETS:
                return seen, True
    return seen, len(keys) >= 100000


def count_rows(conn: Conn, rel: sql.Identifier) -> int:
    """Exact row count, 0 for a relation that does not exist (a dropped holding table)."""
    exists = conn.execute("SELECT to_regclass(%s)", (rel.as_string(conn),)).fetchone()
    if not exists or exists[0] is None:
        return 0
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(rel)).fetchone()
    return int(row[0]) if row else 0
