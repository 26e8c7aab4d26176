"""Decide a re-cut: which children are replaced by which grid children, named how.

Pure: from the table's state (children, grid, partman config) and the facts the swap
depends on (``inspect.split_source``) to a ``SplitPlan``, which is written to the journal
before anything changes, so a rerun after a crash rebuilds exactly the same steps.

A *group* is a run of touching children re-cut together: a child off the grid shares its
off-grid bound with a neighbour (the sliver the old repair left next to a UTC-bounded day),
and only together do they cover whole buckets. The targets are the grid's buckets over the
group's span, clipped to it, so they never reach past the children they replace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ..coverage import alignment, misaligned, wide_children
from ..errors import UnknownGrid, UnsupportedTable, UsageError
from ..humanize import display_ident, display_name
from ..inspect.catalog import Child, Key, Table
from ..inspect.grid import Grid, count_buckets
from ..inspect.snapshot import TableState
from ..inspect.split_source import IndexFacts, ParentFacts, SourceFacts
from .cap import count_spans, ensure_cap
from .children import Naming
from .fix import check_fixable, short_name

SCHEMA = "partguard"
HELPER_COLUMNS = ("partguard_seq", "partguard_xid", "partguard_op")


@dataclass(frozen=True)
class Target:
    """A new child. It is built in the children's schema under its final name, unless a
    child being replaced still has that name (or one of its indexes'): then under ``temp``,
    renamed in the swap once the old one is gone."""

    temp: str  # its name while built (= name when free)
    name: str
    lower: Key
    upper: Key
    index_names: tuple[str, ...]  # final names, one per SplitPlan.indexes
    built_indexes: tuple[str, ...]  # their names while built


@dataclass(frozen=True)
class Source:
    schema: str
    name: str
    lower: Key
    upper: Key
    holding: str  # --keep-source: its name in schema partguard afterwards


@dataclass(frozen=True)
class IndexSpec:
    tail: str  # pg_get_indexdef after "USING "
    unique: bool
    constraint: str  # 'p', 'u' or ''
    deferrable: bool
    deferred: bool


@dataclass(frozen=True)
class SplitPlan:
    """One group's re-cut, complete: the step builders need nothing else."""

    tag: str  # names every object of the run: partguard.split_<tag>_…
    table: str  # schema.name as display_name quotes it: for humans and the journal
    schema: str  # where the targets end up (the sources')
    parent_schema: str
    parent: str
    key: str
    key_type: str
    sources: tuple[Source, ...]
    targets: tuple[Target, ...]
    columns: tuple[str, ...]  # every column, in the parent's order
    generated: tuple[str, ...]  # computed by the server: never inserted
    identity: tuple[str, ...]  # columns that identify a row (PK / unique NOT NULL), or ()
    indexes: tuple[IndexSpec, ...]
    replay_index: bool  # nothing indexes the key: a helper index per target for the replay
    default: (
        tuple[str, str] | None
    )  # (schema, name) of the DEFAULT: guarded so ATTACH skips scanning it
    owner: str
    grants: tuple[tuple[str, str, bool], ...]
    reloptions: tuple[str, ...]
    tablespace: str | None
    unlogged: bool
    checks: tuple[tuple[str, str], ...]  # the source's own CHECK constraints
    keep_source: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def prefix(self) -> str:
        return f"split_{self.tag}"

    @property
    def lower(self) -> Key:
        return self.sources[0].lower

    @property
    def upper(self) -> Key:
        return self.sources[-1].upper

    @property
    def insertable(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.generated)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _encode(asdict(self))
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SplitPlan:
        dec = _decoder(d["key_type"])
        return cls(
            **{
                **d,
                "sources": tuple(
                    Source(s["schema"], s["name"], dec(s["lower"]), dec(s["upper"]), s["holding"])
                    for s in d["sources"]
                ),
                "targets": tuple(
                    Target(
                        t["temp"],
                        t["name"],
                        dec(t["lower"]),
                        dec(t["upper"]),
                        tuple(t["index_names"]),
                        tuple(t["built_indexes"]),
                    )
                    for t in d["targets"]
                ),
                "indexes": tuple(IndexSpec(**i) for i in d["indexes"]),
                "grants": tuple((str(g), str(p), bool(o)) for g, p, o in d["grants"]),
                "checks": tuple((str(n), str(c)) for n, c in d["checks"]),
                "default": tuple(d["default"]) if d["default"] else None,
                **{
                    k: tuple(d[k])
                    for k in ("columns", "generated", "identity", "reloptions", "notes")
                },
            }
        )


def _encode(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return v


def _decoder(key_type: str) -> Any:
    def dec(v: Any) -> Key:
        if isinstance(v, int):
            return v
        return date.fromisoformat(v) if key_type == "date" else datetime.fromisoformat(v)

    return dec


def _instant(x: Key) -> Any:
    """Keys compared safely: aware datetimes in UTC (two datetimes with the same ZoneInfo
    compare by wall time, wrong across a DST change)."""
    return x.astimezone(UTC) if isinstance(x, datetime) and x.tzinfo is not None else x


# --- which children ---------------------------------------------------------------


def groups(state: TableState, wanted: tuple[str, ...] = ()) -> list[tuple[Child, ...]]:
    """Runs of touching children to re-cut: the named ones, or every child spanning more
    than one bucket or sitting off the grid. A run grows over a neighbour that shares an
    off-grid bound with it: only together can they be laid on the grid."""
    table, grid = state.table, state.grid.grid
    if grid is None:
        raise UnknownGrid(
            state.grid.error
            or f"{display_name(table)}: cannot tell the partition interval; pass --interval"
        )
    kids = list(table.children)
    if wanted:
        names = {c.name for c in kids}
        for w in wanted:
            if table.default is not None and w == table.default.name:
                raise UsageError(
                    f"{display_ident(w)} is the DEFAULT partition: repair it with partguard fix, "
                    "then split the wide child"
                )
            if w not in names:
                raise UsageError(f"{display_ident(w)} is not a child of {display_name(table)}")
        bad = set(wanted)
    else:
        aligned = alignment(state)
        bad = {c.name for c, _, _ in misaligned(state, aligned)} | {
            c.name for c, _ in wide_children(state, aligned)
        }
    runs: list[list[int]] = []
    for i, c in enumerate(kids):
        if c.name not in bad:
            continue
        if c.lower is None or c.upper is None:
            raise UsageError(
                f"{display_ident(c.name)} is unbounded (MINVALUE/MAXVALUE): it cannot be re-cut "
                "onto the grid"
            )
        if runs and runs[-1][-1] == i - 1 and kids[i - 1].upper == c.lower:
            runs[-1].append(i)
        else:
            runs.append([i])
    merged: list[list[int]] = []
    for run in (_grow(kids, grid, r) for r in runs):
        if (
            merged
            and merged[-1][-1] >= run[0] - 1
            and kids[merged[-1][-1]].upper == kids[run[0]].lower
        ):
            merged[-1] = sorted(set(merged[-1]) | set(run))
        else:
            merged.append(run)
    return [tuple(kids[i] for i in run) for run in merged]


def check_size(table: Table, grid: Grid, found: list[tuple[Child, ...]]) -> None:
    """Refuse (TooManyChildren) a re-cut of ``found`` that would create more children than
    one run may, before a single one is planned: the spans are counted, not listed."""
    bounds = [(g[0].lower, g[-1].upper) for g in found]
    spans_ = [(lo, hi) for lo, hi in bounds if lo is not None and hi is not None]
    if spans_:
        ensure_cap(
            table, grid, count_spans(grid, spans_), "the re-cut", (spans_[0][0], spans_[-1][1])
        )


def _grow(kids: list[Child], grid: Grid, run: list[int]) -> list[int]:
    run = list(run)
    while (
        run[0] > 0
        and not _on(grid, kids[run[0]].lower)
        and kids[run[0] - 1].upper == kids[run[0]].lower
        and kids[run[0] - 1].lower is not None
    ):
        run.insert(0, run[0] - 1)
    while (
        run[-1] + 1 < len(kids)
        and not _on(grid, kids[run[-1]].upper)
        and kids[run[-1] + 1].lower == kids[run[-1]].upper
        and kids[run[-1] + 1].upper is not None
    ):
        run.append(run[-1] + 1)
    return run


def _on(grid: Grid, x: Key | None) -> bool:
    return x is not None and grid.is_aligned(x)


def spans(grid: Grid, lo: Key, hi: Key) -> list[tuple[Key, Key]]:
    """The grid's buckets over ``[lo, hi)``, clipped to it."""
    out = []
    for b_lo, b_hi in grid.buckets(lo, hi):
        s_lo = lo if _instant(b_lo) < _instant(lo) else b_lo
        s_hi = hi if _instant(hi) < _instant(b_hi) else b_hi
        if _instant(s_lo) < _instant(s_hi):
            out.append((s_lo, s_hi))
    return out


# --- the plan of one group ----------------------------------------------------------


def plan_split(
    state: TableState,
    group: tuple[Child, ...],
    facts: tuple[SourceFacts, ...],
    parent: ParentFacts,
    nm: Naming,
    tag: str,
    *,
    keep_source: bool = False,
    taken: set[str] | None = None,
) -> SplitPlan | None:
    """The re-cut of ``group``, or None when the grid cannot do better than it already is
    (a child off the grid between two gaps stays as it is). ``taken`` collects the names
    planned so far, so several groups planned together never pick the same name."""
    table, grid = state.table, state.grid.grid
    assert grid is not None
    check_fixable(table, None)
    _refuse(table, facts, parent)
    lo, hi = group[0].lower, group[-1].upper
    assert lo is not None and hi is not None
    ensure_cap(table, grid, count_buckets(grid, lo, hi), "the re-cut", (lo, hi))
    cuts = spans(grid, lo, hi)
    if len(group) == 1 and len(cuts) == 1:
        return None
    notes: list[str] = []
    if not _on(grid, lo) or not _on(grid, hi):
        notes.append(
            f"{display_ident(group[0].name)}…{display_ident(group[-1].name)}: an end borders a "
            "gap, so the first or last new child covers only part of its interval (fill the gap "
            "with partguard fix first)"
        )
    first = facts[0]
    prefix = f"split_{tag}"
    freed = {c.name for c in group} | {i.name for f in facts for i in f.indexes}
    taken = taken if taken is not None else set()
    taken |= set(table.schema_names) - freed
    names = _index_names(parent, first, table, len(group) == 1)
    specs = tuple(
        IndexSpec(i.tail, i.unique, i.constraint, i.deferrable, i.deferred) for i, _ in names
    )
    targets = []
    for n, (t_lo, t_hi) in enumerate(cuts, 1):
        name = nm.unique(t_lo, taken)
        taken.add(name)
        temp = short_name(prefix, f"_t{n}")
        idx = []
        for _, suffix in names:
            iname = _unique(short_name(name, suffix), taken)
            taken.add(iname)
            idx.append(iname)
        built = tuple(
            i if i not in freed else short_name(temp, f"_i{k}") for k, i in enumerate(idx, 1)
        )
        targets.append(
            Target(name if name not in freed else temp, name, t_lo, t_hi, tuple(idx), built)
        )
    if len(group) > 1 and any(f.indexes != first.indexes or f.local_checks for f in facts[1:]):
        notes.append(
            "indexes and CHECKs of the children other than the first that are not the parent's "
            "are not carried over"
        )
    keyed = [i for i, _ in names if i.columns[:1] == (table.key,)]
    identity = _identity(parent, table)
    plan = SplitPlan(
        tag=tag,
        table=display_name(table),
        schema=group[0].schema,
        parent_schema=table.schema,
        parent=table.name,
        key=table.key,
        key_type=table.key_type,
        sources=tuple(_source(c, tag) for c in group),
        targets=tuple(targets),
        columns=tuple(c.name for c in table.columns),
        generated=tuple(c.name for c in table.columns if c.generated),
        identity=identity,
        indexes=specs,
        replay_index=not identity and not keyed,
        default=(table.default.schema, table.default.name) if table.default else None,
        owner=first.owner,
        grants=first.grants,
        reloptions=first.reloptions,
        tablespace=first.tablespace,
        unlogged=first.persistence == "u",
        checks=first.local_checks if len(group) == 1 else (),
        keep_source=keep_source,
        notes=tuple(notes),
    )
    return plan


def _source(c: Child, tag: str) -> Source:
    assert c.lower is not None and c.upper is not None  # groups() takes no unbounded child
    return Source(c.schema, c.name, c.lower, c.upper, short_name(c.name, f"_{tag}"))


def _refuse(table: Table, facts: tuple[SourceFacts, ...], parent: ParentFacts) -> None:
    """What the swap could not carry over or would have to validate under its lock."""
    clash = [c.name for c in table.columns if c.name in HELPER_COLUMNS]
    if clash:
        raise UnsupportedTable(
            f"{display_name(table)} has a column named {display_ident(clash[0])}, which "
            "partguard's change log uses"
        )
    if parent.foreign_keys:
        raise UnsupportedTable(
            f"{display_name(table)} has foreign keys "
            f"({', '.join(map(display_ident, parent.foreign_keys[:3]))}): attaching a new child "
            "would validate them under the swap's lock; split does not support that yet"
        )
    for f in facts:
        if f.local_triggers:
            raise UnsupportedTable(
                f"{display_ident(f.child.name)} has its own triggers "
                f"({', '.join(map(display_ident, f.local_triggers[:3]))}), which a re-cut "
                "would lose"
            )


def _index_names(
    parent: ParentFacts, first: SourceFacts, table: Table, single: bool
) -> list[tuple[IndexFacts, str]]:
    """The indexes every target gets, each with the name suffix the source's copy of it
    has (``_received_at_idx`` of ``fixes_p2026_11_22_received_at_idx``): the parent's
    partitioned indexes, and the source's own ones when it is re-cut alone."""
    mine = {i.parent_index: i for i in first.indexes if i.parent_index}
    out: list[tuple[IndexFacts, str]] = []
    for k, p in enumerate(parent.indexes, 1):
        have = mine.get(p.name)
        out.append(
            (p, _suffix(have.name if have else p.name, first.child.name if have else table.name, k))
        )
    if single:
        for k, i in enumerate((i for i in first.indexes if not i.parent_index), len(out) + 1):
            out.append((i, _suffix(i.name, first.child.name, k)))
    return out


def _suffix(index: str, owner: str, k: int) -> str:
    return (
        index[len(owner) :] if index.startswith(owner) and len(index) > len(owner) else f"_{k}_idx"
    )


def _unique(name: str, taken: set[str]) -> str:
    n, out = 1, name
    while out in taken:
        n += 1
        out = short_name(name, str(n))
    return out


def _identity(parent: ParentFacts, table: Table) -> tuple[str, ...]:
    """The primary key, else a unique index over NOT NULL columns (no expression, no
    predicate): what a logged delete finds its row by. () means by the row's values."""
    not_null = {c.name for c in table.columns if c.not_null}
    for want in ("p", "u", ""):
        for i in parent.indexes:
            if (
                i.unique
                and i.constraint == want
                and i.columns
                and not i.partial
                and set(i.columns) <= not_null
            ):
                return i.columns
    return ()
