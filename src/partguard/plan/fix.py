"""Decide how to repair a DEFAULT partition: pure, from a snapshot to the facts of a plan.

Everything here is a function of what ``inspect`` read; nothing touches the database. The
result, ``FixParams``, is written to the journal before the first change, so a rerun after
a crash rebuilds exactly the same plan instead of re-deciding on a half-changed table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

from ..coverage import gaps
from ..errors import UnknownGrid, UnsupportedTable, UsageError
from ..humanize import quote_name
from ..inspect.catalog import Key, Table
from ..inspect.data import Probe
from ..inspect.grid import Grid, IntGrid, TimeGrid, count_buckets, int_key, key_le, key_lt
from ..inspect.partman import Partman
from ..inspect.snapshot import TableState
from .cap import count_spans, ensure_cap, recut_size
from .children import Naming, free_spans, naming

NAMEDATALEN = 63


@dataclass(frozen=True)
class FixOptions:
    strategy: str = "auto"  # auto | instant | copy
    outliers: str = "quarantine"  # quarantine | keep
    premake: int | None = None  # future children to have after the fix (default: partman's or 4)
    keep_source: bool = False
    jobs: int = 1
    chunk_pages: int = 2048  # 16 MB of heap per copy transaction
    key: str | None = None  # the old script's <partition_key>: checked, never trusted


@dataclass(frozen=True)
class ChildSpec:
    """A child to create: name, bounds, and whether partman may make it (on-grid bucket)."""

    name: str
    lower: Key
    upper: Key
    via_partman: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lower": _enc(self.lower),
            "upper": _enc(self.upper),
            "via_partman": self.via_partman,
        }


@dataclass(frozen=True)
class FixParams:
    """The decided repair, serialisable into the journal."""

    strategy: str  # instant | copy
    table: str
    key: str
    source: str  # the DEFAULT whose rows need a home (attached, or adopted)
    new_default: str | None  # the fresh empty DEFAULT left behind (takes source's name)
    holding: str | None  # copy: source's name while its rows are copied out
    adopted: bool  # copy: source was already detached by someone else (the old script)
    quarantine: str  # table in schema partguard for NULL keys and outliers
    plausible_lo: Key | None  # rows outside [plausible_lo, plausible_hi) are outliers
    plausible_hi: Key | None
    span_lo: Key | None  # instant: the wide child's bounds
    span_hi: Key | None
    span_child: str | None
    children: tuple[ChildSpec, ...]  # copy: buckets held; both: current + future children
    zone: str | None  # the session TimeZone partman must compute in
    managed: bool  # pg_partman manages the table: run its maintenance afterwards
    keep_outliers: bool  # --outliers keep: outliers go back into the parent (its DEFAULT)
    rows_estimate: int
    buckets: tuple[Key, ...]
    outliers_estimate: int
    notes: tuple[str, ...] = field(default=())
    # (old, new): partman children named outside its convention (the old script's
    # ``_p20261122`` on 4.7) break show_partitions and every maintenance run: renamed in the swap.
    renames: tuple[tuple[str, str], ...] = field(default=())
    # copy: children the swap creates only if the holding table has rows for them (rows
    # kept arriving until the swap's lock): every free bucket of the plausible range.
    late: tuple[ChildSpec, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["children"] = [c.as_json() for c in self.children]
        for k in ("plausible_lo", "plausible_hi", "span_lo", "span_hi"):
            d[k] = _enc(d[k])
        d["buckets"] = [_enc(b) for b in self.buckets]
        d["notes"] = list(self.notes)
        d["renames"] = [list(r) for r in self.renames]
        d["late"] = [c.as_json() for c in self.late]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], key_type: str) -> FixParams:
        dec = _decoder(key_type)
        return cls(
            **{
                k: v
                for k, v in d.items()
                if k
                not in (
                    "children",
                    "plausible_lo",
                    "plausible_hi",
                    "span_lo",
                    "span_hi",
                    "buckets",
                    "notes",
                    "renames",
                    "late",
                )
            },
            plausible_lo=dec(d["plausible_lo"]),
            plausible_hi=dec(d["plausible_hi"]),
            span_lo=dec(d["span_lo"]),
            span_hi=dec(d["span_hi"]),
            children=tuple(
                ChildSpec(c["name"], dec(c["lower"]), dec(c["upper"]), c["via_partman"])
                for c in d["children"]
            ),
            buckets=tuple(dec(b) for b in d["buckets"]),
            notes=tuple(d.get("notes", ())),
            renames=tuple((str(a), str(b)) for a, b in d.get("renames", ())),
            late=tuple(
                ChildSpec(c["name"], dec(c["lower"]), dec(c["upper"]), c["via_partman"])
                for c in d.get("late", ())
            ),
        )


def _enc(v: Key | None) -> Any:
    return v.isoformat() if isinstance(v, (date, datetime)) else v


def _decoder(key_type: str) -> Any:
    def dec(v: Any) -> Any:
        if v is None or isinstance(v, int):
            return v
        if key_type == "date":
            return date.fromisoformat(v)
        return datetime.fromisoformat(v)

    return dec


def check_fixable(table: Table, key: str | None) -> None:
    """Refuse, before anything changes, what a detach cannot do safely."""
    reason = table.unsupported_reason()
    if reason:
        raise UnsupportedTable(reason)
    if key is not None and key != table.key:
        raise UsageError(f"{table.qualname} is partitioned by {table.key}, not by {key}")
    if table.referenced_by:
        raise UnsupportedTable(
            f"{table.qualname} is referenced by foreign keys ({', '.join(table.referenced_by[:3])}); "
            "detaching its DEFAULT would fail: drop or disable them first"
        )


def short_name(base: str, suffix: str) -> str:
    """``base + suffix`` within 63 bytes, cutting ``base`` and adding a hash when cut."""
    full = base + suffix
    if len(full.encode()) <= NAMEDATALEN:
        return full
    digest = "_" + hashlib.sha1(full.encode()).hexdigest()[:6]
    room = NAMEDATALEN - len((digest + suffix).encode())
    return base.encode()[:room].decode(errors="ignore") + digest + suffix


def quarantine_name(table: Table, taken: frozenset[str] = frozenset()) -> str:
    """``<table>_quarantine`` in schema partguard; ``<schema>_<table>_quarantine`` (then
    numbered) when another table's runs already use that name."""
    name = short_name(table.name, "_quarantine")
    n = 1
    while name in taken:
        base = f"{table.schema}_{table.name}"
        name = short_name(base, "_quarantine" if n == 1 else f"_quarantine_{n}")
        n += 1
    return name


def plan_fix(
    state: TableState,
    probe: Probe,
    now: datetime,
    partman: Partman | None,
    options: FixOptions,
    *,
    adopted: str | None = None,
    quarantines_taken: frozenset[str] = frozenset(),
) -> FixParams:
    """Choose the strategy and compute every bound and name of the repair.

    ``probe`` describes the table whose rows need a home: the attached DEFAULT, or
    ``adopted``, a DEFAULT an earlier run of the old script detached and left behind.
    ``quarantines_taken``: quarantine tables other tables' runs use (a table of the same
    name in another schema must not share one: its rows would go back into the wrong table).
    """
    table, grid = state.table, state.grid.grid
    if grid is None:
        raise UnknownGrid(
            state.grid.error
            or f"{table.qualname}: cannot tell the partition interval; pass --interval"
        )
    nm = naming(table, state.config, partman, grid)
    premake = options.premake or (state.config.premake if state.config else 4)
    ensure_cap(table, grid, premake + 1, f"a premake of {premake}")
    zone = grid.tz if isinstance(grid, TimeGrid) else None
    p_lo, p_hi = plausible_range(table, grid, now, premake, probe)
    rows_in = [b for b in probe.buckets if _inside(b, p_lo, p_hi)]
    outliers = len(probe.buckets) - len(rows_in) + (1 if probe.null_rows else 0)
    managed, keep = state.config is not None, options.outliers == "keep"
    source = adopted or (table.default.name if table.default else "")
    new_default = source or None
    quarantine = quarantine_name(table, quarantines_taken)
    notes: list[str] = []
    if outliers:
        notes.append(
            f"{probe.null_rows} NULL-key rows and {len(probe.buckets) - len(rows_in)} bucket(s) outside "
            f"[{_enc(p_lo)}, {_enc(p_hi)}) go to partguard.{quote_name(quarantine)}"
            + (
                " and then back into the parent (their new DEFAULT)"
                if options.outliers == "keep"
                else ""
            )
        )

    late = [b for b in probe.buckets if p_hi is not None and key_le(p_hi, b)]
    if keep and late and state.config is not None and state.config.ignore_default_data is False:
        notes.append(
            f"--outliers keep puts rows up to {_enc(probe.max_key)} back into the DEFAULT, and partman "
            "(ignore_default_data = false) premakes children up to the DEFAULT's largest key: its next "
            "maintenance would create a child for every interval until then; quarantine them instead, "
            "or set ignore_default_data = true"
        )

    span = None if adopted else _single_span(table, grid, rows_in, now, probe)
    strategy = options.strategy
    if strategy == "auto":
        strategy = "instant" if span is not None else "copy"
        if span is None and rows_in and not adopted:
            notes.append("the DEFAULT's rows lie in more than one gap between children: using copy")
    if strategy == "instant" and adopted:
        raise UsageError(
            "the DEFAULT is already detached (left by an earlier repair): only --strategy copy can adopt it"
        )
    if strategy == "instant" and span is None:
        raise UsageError(
            f"{table.qualname}: --strategy instant needs the DEFAULT's rows in one gap between "
            "children; use --strategy copy"
        )
    if strategy == "copy" and rows_in:
        notes.append(
            "copy: until a row is copied it is not visible through the table, and an UPDATE or "
            "DELETE of it meanwhile finds nothing (and is not replayed); pause those, or accept "
            "that, for the copy's few seconds"
        )

    horizon = _horizon(table, grid, now, premake, rows_in)
    renames = misnamed(table, grid, nm) if managed else ()
    if renames:
        notes.append(
            "children named outside partman's convention are renamed: "
            + ", ".join(f"{quote_name(a)} -> {quote_name(b)}" for a, b in renames)
        )
    # fix's re-cut (strategy auto) lays every child the grid disowns on it, after the swap:
    # counted now, as the swap's own children are, so a grid far too fine is refused first.
    recut = recut_size(table, grid) if options.strategy == "auto" else 0
    if strategy == "instant":
        assert span is not None
        lo, hi = span
        future_from = hi
        span_child = nm.unique(lo, _taken(table))
        # The wide child must never be the newest child: partman computes its next child as
        # the newest child's start + interval, which would overlap it on every run. And while
        # it is the newest non-empty child, partman 5.x counts premade children from the slot
        # of one of its (old) rows: ``premake`` regular children past its end keep the runway
        # at least ``premake`` intervals until live rows reach the children after it.
        horizon = _later(horizon, _advance(grid, hi, premake))
        first = table.children[0].lower if table.children else None
        holes = free_spans(table, first, lo) if first is not None else []
        recut += count_buckets(grid, lo, hi) if options.strategy == "auto" else 0
        ensure_cap(
            table,
            grid,
            recut + count_spans(grid, holes) + count_buckets(grid, grid.floor(hi), horizon),
            "the repair (swap and re-cut)" if options.strategy == "auto" else "the swap",
            (lo, horizon),
        )
        children = _children(
            table, grid, nm, _holes(table, grid, lo), future_from, horizon, state.config is not None
        )
        return FixParams(
            "instant",
            table.qualname,
            table.key,
            source,
            new_default,
            None,
            False,
            quarantine,
            p_lo,
            p_hi,
            lo,
            hi,
            span_child,
            children,
            zone,
            managed,
            keep,
            probe.rows,
            tuple(rows_in),
            outliers,
            tuple(notes),
            renames,
        )
    holding = _holding_name(table)
    start = _future_start(table, rows_in, horizon)
    holes = gaps_with_rows(table, grid, rows_in)
    planned = (
        len(rows_in)
        + (count_buckets(grid, grid.floor(start), horizon) if horizon else 0)
        + sum(count_buckets(grid, grid.floor(h_lo), h_hi) for h_lo, h_hi in holes)
    )
    ensure_cap(table, grid, recut + planned, "the repair", (start, horizon) if horizon else None)
    children = _children(
        table, grid, nm, rows_in, None, horizon, state.config is not None, fill=holes
    )
    late_kids = _late_candidates(
        table,
        grid,
        nm,
        children,
        p_lo,
        p_hi,
        premake,
        {holding, *(new for _, new in renames)},
        recut + len(children),
    )
    return FixParams(
        "copy",
        table.qualname,
        table.key,
        source,
        new_default,
        holding,
        adopted is not None,
        quarantine,
        p_lo,
        p_hi,
        None,
        None,
        None,
        children,
        zone,
        managed,
        keep,
        probe.rows,
        tuple(rows_in),
        outliers,
        tuple(notes),
        renames,
        late_kids,
    )


def _holding_name(table: Table) -> str:
    """Where copy keeps the DEFAULT's rows while it copies them: a name from the table's,
    so the printed plan is the plan that runs (``_2``, ``_3`` … past a kept one)."""
    taken = _taken(table)
    name, n = short_name(table.name, "_default_hold"), 2
    while name in taken:
        name, n = short_name(table.name, f"_default_hold_{n}"), n + 1
    return name


def _late_candidates(
    table: Table,
    grid: Grid,
    nm: Naming,
    children: tuple[ChildSpec, ...],
    lo: Key | None,
    hi: Key | None,
    premake: int,
    reserved: set[str],
    already: int = 0,
) -> tuple[ChildSpec, ...]:
    """Every bucket of the plausible range ``[lo, hi)`` that neither an existing child nor
    a planned one covers (clipped like any new child): the swap creates those the holding
    table has rows for. Integer keys without a ceiling stop ``premake + 2`` intervals past
    the last child. ``already``: the children the run creates besides these (for the cap)."""
    spans: list[tuple[Any, Any]] = sorted(
        [(c.lower, c.upper) for c in table.children if c.lower is not None and c.upper is not None]
        + [(c.lower, c.upper) for c in children],
        key=lambda s: s[0],
    )
    if lo is None:
        lo = spans[0][0] if spans else None
    if hi is None and spans:
        hi = _advance(grid, max(s[1] for s in spans), premake + 2)
    if lo is None or hi is None:
        return ()
    gaps: list[tuple[Any, Any]] = []
    cur: Any = lo
    for s_lo, s_hi in [*spans, (hi, hi)]:
        gap_hi: Any = min(s_lo, hi)
        if cur < gap_hi:
            gaps.append((cur, gap_hi))
        cur = max(cur, s_hi)
        if cur >= hi:
            break
    ensure_cap(table, grid, already + count_spans(grid, gaps), "the repair", (lo, hi))
    taken = _taken(table) | {c.name for c in children} | reserved
    out: list[ChildSpec] = []
    for g_lo, g_hi in gaps:
        b: Any = grid.floor(g_lo)
        while b < g_hi:
            c_lo, c_hi = max(b, g_lo), min(grid.next(b), g_hi)
            if c_lo < c_hi:
                name = nm.unique(c_lo, taken)
                taken.add(name)
                out.append(ChildSpec(name, c_lo, c_hi, False))
            b = grid.next(b)
    return tuple(out)


def plausible_range(
    table: Table, grid: Grid, now: datetime, premake: int, probe: Probe | None = None
) -> tuple[Key | None, Key | None]:
    """Rows outside this range are outliers: quarantined, never given invented children.

    Below the first child nothing is plausible (partman never makes children there, and a
    1970 row would otherwise get a 1970 child); above, time keys may run ``premake + 2``
    intervals past now. Integer keys have no "now", but ids grow densely: see ``_id_ceiling``.
    """
    lo: Key | None = table.children[0].lower if table.children else None
    if isinstance(grid, IntGrid):
        if lo is None and probe is not None and probe.min_key is not None:
            lo = grid.floor(probe.min_key)
        return lo, _id_ceiling(table, grid, premake, probe)
    here = _now_key(table, now)
    hi: Any = grid.floor(here)
    for _ in range(premake + 2):
        hi = grid.next(hi)
    if lo is None:
        # No children at all: allow a year back from now.
        lo = grid.floor(_shift_years(here, -1))
    return lo, hi


def _id_ceiling(table: Table, grid: IntGrid, premake: int, probe: Probe | None) -> int | None:
    """Where plausible ids end: the first jump of more than ``premake + 2`` empty buckets.

    Ids arrive in order, so the DEFAULT's rows continue the children as one dense run; a row
    far past it (a bad import's id 9e12) is an outlier, like a time key in 2999: copying it
    would otherwise plan a child for every bucket up to it. None when there is no jump.
    """
    if probe is None or not probe.buckets:
        return None
    reach = (premake + 2) * grid.step
    uppers = [int(c.upper) for c in table.children if isinstance(c.upper, int)]
    end: int | None = max(uppers) if uppers else None
    for b in probe.buckets:
        start = int_key(b)
        if end is not None and start >= end + reach:
            return end + reach
        end = start + grid.step if end is None else max(end, start + grid.step)
    return None


def _shift_years(x: Any, years: int) -> Any:
    try:
        return x.replace(year=x.year + years)
    except ValueError:  # 29 February
        return x.replace(year=x.year + years, day=28)


def _now_key(table: Table, now: datetime) -> Key:
    if table.key_type == "date":
        return now.date()
    if table.key_type == "timestamp without time zone":
        return now.replace(tzinfo=None)
    return now


def _inside(b: Key, lo: Key | None, hi: Key | None) -> bool:
    return (lo is None or key_le(lo, b)) and (hi is None or key_lt(b, hi))


def _single_span(
    table: Table, grid: Grid, buckets: list[Key], now: datetime, probe: Probe
) -> tuple[Key, Key] | None:
    """The one free gap holding every plausible bucket, trimmed to what instant needs.

    The wide child starts where the gap starts (maintenance stopped at the last child's
    upper bound) and ends one interval past the later of now and the newest row, so live
    inserts during the repair still fit; it never reaches into the next child.
    """
    if not buckets:
        return None
    first: Any = buckets[0]
    last_end: Any = grid.next(buckets[-1])
    spans = free_spans(table, first, last_end)
    if len(spans) != 1:
        return None  # a child sits between the buckets: more than one gap
    # An off-grid neighbour may clip the first or last bucket: the gap is still one gap
    # (the DEFAULT cannot hold rows a child covers), it just starts or ends off the grid.
    s_lo, s_hi = spans[0]
    below = [c.upper for c in table.children if c.upper is not None and key_le(c.upper, s_lo)]
    above = [c.lower for c in table.children if c.lower is not None and key_le(s_hi, c.lower)]
    lo: Any = max(below) if below else first
    if isinstance(grid, IntGrid):
        top: Any = buckets[-1]  # the newest plausible bucket (an id outlier is no "now")
    else:
        top = max(grid.floor(_now_key(table, now)), buckets[-1])
    hi: Any = grid.next(grid.next(top))
    if above and min(above) < hi:
        hi = min(above)
    return lo, hi


def _horizon(table: Table, grid: Grid, now: datetime, premake: int, buckets: list[Key]) -> Any:
    """Future children run to ``premake`` intervals past now (ids: past the newest
    plausible row, among ``buckets``)."""
    if isinstance(grid, IntGrid):
        if not buckets:
            return None
        top: Any = buckets[-1]
    else:
        top = grid.floor(_now_key(table, now))  # a date key has date bounds
    for _ in range(premake + 1):
        top = grid.next(top)
    return top


def _holes(table: Table, grid: Grid, until: Any) -> list[Key]:
    """Bucket starts of the empty holes between existing children below ``until``.

    They hold no row (every DEFAULT row lies in the span), so a child for each costs nothing
    in the swap, and a hole left behind is a ``gap`` that check reports CRITICAL."""
    if not table.children or table.children[0].lower is None:
        return []
    out: list[Key] = []
    for s_lo, s_hi in free_spans(table, table.children[0].lower, until):
        b: Any = grid.floor(s_lo)
        while b < s_hi:
            out.append(b)
            b = grid.next(b)
    return out


def _advance(grid: Grid, x: Any, n: int) -> Any:
    """``x`` moved ``n`` intervals on (from its bucket's start)."""
    b: Any = grid.floor(x)
    for _ in range(n):
        b = grid.next(b)
    return b


def _later(a: Any, b: Any) -> Any:
    return b if a is None or b > a else a


def _children(
    table: Table,
    grid: Grid,
    nm: Naming,
    buckets: list[Key],
    future_from: Key | None,
    horizon: Any,
    partman_managed: bool,
    fill: Sequence[tuple[Key, Key]] = (),
) -> tuple[ChildSpec, ...]:
    """Children for ``buckets`` plus every bucket from ``future_from`` to the horizon, and
    every bucket of the ``fill`` spans (copy: the gaps the rows lay in, whole).

    Without ``future_from`` (copy) the run starts at the last child's upper bound, so the
    repaired table has no holes between its old children and its new ones. Everything is
    clipped to the free spans: a new child never overlaps an existing one, and next to an
    off-grid neighbour it fills exactly the gap.
    """
    wanted: dict[Any, Any] = {b: grid.next(b) for b in buckets}
    for f_lo, f_hi in fill:
        for b_lo, b_hi in grid.buckets(f_lo, f_hi):
            wanted.setdefault(b_lo, b_hi)
    if horizon is not None:
        start: Any = future_from
        if start is None:
            start = _future_start(table, buckets, horizon)
        b: Any = grid.floor(start)
        while b < horizon:
            wanted.setdefault(b, grid.next(b))
            b = grid.next(b)
    out: list[ChildSpec] = []
    taken = set(_taken(table))
    for lo, hi in sorted(wanted.items()):
        for s_lo, s_hi in free_spans(table, lo, hi):
            exact = (s_lo, s_hi) == (lo, hi)
            name = nm.unique(s_lo, taken)
            taken.add(name)
            out.append(
                ChildSpec(name, s_lo, s_hi, partman_managed and exact and name == nm.name(s_lo))
            )
    return tuple(out)


def gaps_with_rows(table: Table, grid: Grid, buckets: Sequence[Key]) -> list[tuple[Key, Key]]:
    """The holes between two children that the rows' buckets lie in, each whole: copy
    fills them, so an empty day of the outage is not left a gap (rows written there later
    would go to the DEFAULT). A hole below the first child or above the last is not one:
    history retention removed, or the future the horizon covers."""
    out: list[tuple[Key, Key]] = []
    for lo, hi in gaps(table):
        if any(key_lt(b, hi) and key_lt(lo, grid.next(b)) for b in buckets):
            out.append((lo, hi))
    return out


def _future_start(table: Table, buckets: list[Key], horizon: Any) -> Any:
    """Where copy's future children start: the last child's end, so no hole is left."""
    uppers = [c.upper for c in table.children if c.upper is not None]
    return max(uppers) if uppers else (buckets[0] if buckets else horizon)


def _taken(table: Table) -> set[str]:
    """Names a new child must not take: the children's, the DEFAULT's, and any other
    relation's in the schema."""
    return (
        {c.name for c in table.children}
        | ({table.default.name} if table.default else set())
        | set(table.schema_names)
    )


def misnamed(table: Table, grid: Grid, nm: Naming) -> tuple[tuple[str, str], ...]:
    """On-grid children whose name is not the one the convention gives their bucket.

    Only exact buckets: an off-grid child has no conventional name, and renaming it would
    not make partman's arithmetic agree with it anyway. Only names of the convention's
    shape (same stem and prefix, another suffix, like the old script's ``fixes_p20261122``):
    a child named some other way was named by someone on purpose. A target name already
    taken stays.
    """
    taken = _taken(table)
    out = []
    for c in table.children:
        if c.lower is None or c.upper is None or not grid.is_aligned(c.lower):
            continue
        if grid.next(c.lower) != c.upper:
            continue
        want = nm.name(c.lower)
        if want != c.name and want not in taken and c.name.startswith(nm.head(c.lower)):
            out.append((c.name, want))
            taken.add(want)
    return tuple(out)
