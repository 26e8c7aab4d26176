"""Which children native retention retires: pure, from a snapshot, a window and "now".

Three rules keep it from losing rows it should keep:

- A child goes only when its **upper** bound has left the window (``upper <= now -
  retention``): a wide child reaching into the window stays whole, where pg_partman's
  start + interval would drop it early (pg_partman #776).
- Only children partguard can prove are the table's own go: named by the table's pattern
  for their lower bound, with both bounds on its grid. Anything else (a hand-attached
  archive, a child of another naming) is reported and kept.
- Only the oldest run of children goes, oldest first and never the newest child: removing a
  child behind one that stays would leave a gap that ``check`` rightly calls CRITICAL.

``DETACH PARTITION … CONCURRENTLY`` (PostgreSQL 14+) takes only a SHARE UPDATE EXCLUSIVE
lock, so writers and readers go on; it must run outside a transaction block and is refused
while the table has a DEFAULT partition, where the plan falls back to a plain DETACH (an
ACCESS EXCLUSIVE lock held for a catalog change only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from ..errors import UnknownGrid
from ..humanize import display_name, fmt_key
from ..inspect.catalog import Child, Key, Table
from ..inspect.grid import Grid, TimeGrid
from ..inspect.retention import Window, before, le, now_key
from ..inspect.snapshot import TableState
from .children import Naming, naming

CONCURRENT_SINCE = 140000
NEWEST = "the newest child is never retired"


@dataclass(frozen=True)
class Kept:
    child: Child
    reason: str
    behind: bool = False  # kept only because an older child stays (no gap may open)

    @property
    def blocks(self) -> bool:
        """Kept because partguard cannot prove it is the table's own: retention stops here."""
        return not self.behind and self.reason != NEWEST


@dataclass(frozen=True)
class RetentionPlan:
    table: Table
    window: Window
    mode: str  # 'detach' or 'drop'
    cutoff: Key | None  # the oldest key inside the window; None: no rows yet (integer keys)
    retire: tuple[Child, ...]  # oldest first
    kept: tuple[Kept, ...]  # out of the window, but not retired: why
    concurrently: bool

    def guard(self, child: Child) -> sql.Composed:
        """The child's largest key: it must lie before the cutoff (its bound says so)."""
        return sql.SQL("SELECT max({k}) FROM {c}").format(
            k=sql.Identifier(self.table.key), c=child.ident
        )

    def detach(self, child: Child, concurrently: bool | None = None) -> sql.Composed:
        concurrent = self.concurrently if concurrently is None else concurrently
        how = sql.SQL(" CONCURRENTLY") if concurrent else sql.SQL("")
        return sql.SQL("ALTER TABLE {p} DETACH PARTITION {c}{how}").format(
            p=self.table.ident, c=child.ident, how=how
        )

    def finalize(self, child: Child) -> sql.Composed:
        """Completes a CONCURRENTLY detach that was interrupted (the child is 'detach pending')."""
        return sql.SQL("ALTER TABLE {p} DETACH PARTITION {c} FINALIZE").format(
            p=self.table.ident, c=child.ident
        )

    def drop(self, child: Child) -> sql.Composed | None:
        return sql.SQL("DROP TABLE {c}").format(c=child.ident) if self.mode == "drop" else None

    def script(self, zone: str | None = None) -> str:
        """The plan as SQL for ``psql`` (no transaction block: CONCURRENTLY needs none)."""
        head = (
            f"-- {display_name(self.table)}: retention {self.window} ({self.mode}), "
            f"children ending at or before {fmt_key(self.cutoff, zone)} go"
        )
        lines = [head]
        lines += [f"-- kept: {k.child.name}: {k.reason}" for k in self.kept]
        for child in self.retire:
            lines.append(
                f"-- {child.name}: {fmt_key(child.lower, zone)} … {fmt_key(child.upper, zone)}"
            )
            lines.append(self.detach(child).as_string(None) + ";")
            drop = self.drop(child)
            if drop is not None:
                lines.append(drop.as_string(None) + ";")
        if not self.retire:
            lines.append("-- nothing to retire")
        return "\n".join(lines) + "\n"


def plan_retention(
    state: TableState,
    window: Window,
    mode: str,
    now: datetime,
    tz: str,
    version_num: int,
    naming_override: Naming | None = None,
) -> RetentionPlan:
    """Children of ``state`` to retire for ``window``; ``tz`` is the zone "now" is read in
    for timestamp and date keys."""
    table, grid = state.table, state.grid.grid
    if grid is None:
        raise UnknownGrid(
            state.grid.error or f"{table.qualname}: the partition interval is unknown"
        )
    reference = now_key(table, now, tz, state.max_key)
    zone = grid.tz if isinstance(grid, TimeGrid) else None
    cutoff = None if reference is None else before(reference, window, zone)
    concurrently = version_num >= CONCURRENT_SINCE and table.default is None
    if cutoff is None:
        return RetentionPlan(table, window, mode, None, (), (), concurrently)
    names = naming_override or naming(table, None, None, grid)
    retire: list[Child] = []
    kept: list[Kept] = []
    blocked: str | None = None
    for i, child in enumerate(table.children):
        if child.upper is None or not le(child.upper, cutoff):
            break  # this child reaches into the window, and every later one too
        if blocked is not None:
            kept.append(
                Kept(child, f"behind {blocked}, which stays: retiring it would leave a gap", True)
            )
            continue
        if i == len(table.children) - 1:
            kept.append(Kept(child, NEWEST))
            break
        why = _not_ours(child, names, grid)
        if why:
            kept.append(Kept(child, why))
            blocked = child.name
            continue
        retire.append(child)
    return RetentionPlan(table, window, mode, cutoff, tuple(retire), tuple(kept), concurrently)


def _not_ours(child: Child, names: Naming, grid: Grid) -> str | None:
    """Why partguard cannot prove ``child`` belongs to the table's series (None: it can)."""
    if child.lower is None or child.upper is None:
        return "an unbounded (MINVALUE) child is nobody's series"
    for bound in (child.lower, child.upper):
        if not grid.is_aligned(bound):
            return f"its bound {bound} is off the grid"
    expected = names.name(child.lower)
    variants = {expected}
    for _ in range(2):  # the names Naming.unique gives a same-day neighbour
        variants.add(names.unique(child.lower, variants))
    if child.name not in variants:
        return f"its name does not follow the table's pattern (expected {expected})"
    return None
