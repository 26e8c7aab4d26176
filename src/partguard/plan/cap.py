"""The most children one plan may create, counted before anything is laid out.

An ``--interval`` far too fine for the table (one second on a daily table, after
``--force-interval``) or a premake of millions would otherwise plan a child per bucket over
days: millions of objects in memory before the first statement, then as many DDLs. Every
planner counts its buckets arithmetically (``grid.count_buckets``, O(1) per span) and asks
here before it makes a single child.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import TooManyChildren
from ..humanize import display_name, fmt_key
from ..inspect.catalog import Key, Table
from ..inspect.grid import Grid, IntGrid, count_buckets

# No plan creates more children than this in one run (README: "Limits").
MAX_NEW_CHILDREN = 10_000


def count_spans(grid: Grid, spans: Iterable[tuple[Key, Key]]) -> int:
    """The buckets over all ``spans``, without listing them."""
    return sum(count_buckets(grid, lo, hi) for lo, hi in spans)


def ensure_cap(
    table: Table, grid: Grid, n: int, what: str, span: tuple[Key, Key] | None = None
) -> int:
    """``n`` (the children ``what`` would create) when within the cap, else TooManyChildren."""
    if n <= MAX_NEW_CHILDREN:
        return n
    step = grid.step if isinstance(grid, IntGrid) else f"'{grid.step}'"
    where = f" between {fmt_key(span[0])} and {fmt_key(span[1])}" if span else ""
    raise TooManyChildren(
        f"{display_name(table)}: {what} would create {n:,} children of {step}{where}, more than "
        f"the {MAX_NEW_CHILDREN:,} partguard creates in one run; check --interval (is it the "
        "table's?), and keep rows far from the children out with --outliers quarantine"
    )


def recut_size(table: Table, grid: Grid) -> int:
    """The children a re-cut onto ``grid`` would make of every child it disowns (one not
    exactly one bucket): what ``fix``'s re-cut after the swap would add."""
    n = 0
    for c in table.children:
        lo, hi = c.lower, c.upper
        if lo is None or hi is None:
            continue
        if not (grid.is_aligned(lo) and grid.next(lo) == hi):
            n += count_buckets(grid, lo, hi)
    return n
