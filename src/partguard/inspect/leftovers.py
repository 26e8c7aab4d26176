"""What an unfinished repair left behind, read from the journal and the catalog.

A copy interrupted after its swap keeps rows in a holding table, out of sight of the
parent; an instant run interrupted before its swap leaves a trigger that diverts inserts
and a CHECK on the DEFAULT; the old repair script leaves a detached ``<table>_default``;
every fix may leave rows in quarantine. ``check``, ``metrics``, ``maintain`` and
``fix --status`` all report these from the same records, also after a server restart:
everything here is durable state, nothing is remembered in a process.

Counting is bounded: a holding table is counted only over the block ranges the journal
has not copied yet (TID range scans), and at most ``COUNT_CAP`` rows unless asked for an
exact count; beyond that the figure is an estimate and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from psycopg import errors as pgerrors
from psycopg import sql

from .. import journal
from ..db import Conn
from .catalog import Key, Table, is_detached_copy
from .locks import advisory_holders

# Names partguard's instant strategy gives its helpers on the DEFAULT (plan/steps.py).
TRIGGER_NAME = "partguard_divert"
CHECK_NAME = "partguard_span"
COUNT_CAP = 1_000_000
NAMEDATALEN = 63

# After these states a copy run has verified that every row of the holding table was
# copied (or dropped it): nothing is out of sight any more, only the clean-up is left.
_COPY_ALL_COPIED = ("verify", "drop", "maintenance", "release")


@dataclass(frozen=True)
class UnfinishedFix:
    """One half-done repair of a table."""

    kind: str  # 'copy' | 'instant' | 'detached_default' | 'split' | 'recut'
    # in the table's schema: the holding table, the DEFAULT with the trigger, the detached
    # DEFAULT, the split's sources, the wide child an auto fix still owes the re-cut of
    relation: str
    run_id: int | None = None  # None: not in the journal (the old script, or a lost journal)
    state: str | None = None  # the last step the run committed
    started_at: datetime | None = None
    hidden_rows: int = 0  # rows this leaves out of sight of the parent
    hidden_exact: bool = True
    trigger: bool = False  # instant: partguard_divert on the DEFAULT
    check: bool = False  # instant: partguard_span on the DEFAULT
    quarantine: str | None = None  # table in schema partguard the run diverts to
    running: str | None = None  # a live fix session holds the table: who
    adoptable: bool = True  # detached_default: fix can adopt it (the table has no DEFAULT)

    @property
    def before_swap(self) -> bool:
        return self.kind == "instant" and (self.trigger or self.check)


@dataclass(frozen=True)
class Quarantine:
    """Rows a fix set aside in ``partguard.<name>``: no child may take them."""

    name: str
    rows: int
    null_rows: int
    min_key: Key | None
    max_key: Key | None


@dataclass(frozen=True)
class Leftovers:
    unfinished: tuple[UnfinishedFix, ...] = ()
    quarantine: tuple[Quarantine, ...] = field(default=())


def read(conn: Conn, tables: Sequence[Table], *, exact: bool = False) -> dict[int, Leftovers]:
    """Leftovers per table oid (tables without any are absent). A handful of catalog
    queries for the whole set; rows are counted only where something was left."""
    tables = [t for t in tables if t.unsupported_reason() is None]
    if not tables:
        return {}
    cap = None if exact else COUNT_CAP
    runs: dict[int, list[journal.FixRun]] = {}
    for run in journal.unfinished_runs(conn):
        runs.setdefault(run.parent_oid, []).append(run)
    owed: dict[int, list[journal.FixRun]] = {}
    for run in journal.recut_candidates(conn):
        owed.setdefault(run.parent_oid, []).append(run)
    splits: dict[int, list[journal.SplitRun]] = {}
    for srun in journal.unfinished_splits(conn):
        splits.setdefault(srun.parent_oid, []).append(srun)
    helpers = _helpers_on_defaults(conn, [t.default.oid for t in tables if t.default is not None])
    strays = _detached_defaults(conn, tables)
    qnames = journal.quarantine_names(conn)
    existing = _existing(conn, sorted({n for names in qnames.values() for n in names}))
    out: dict[int, Leftovers] = {}
    for t in tables:
        found = [_from_run(conn, t, r, helpers, cap) for r in runs.get(t.oid, [])]
        found += [_from_split(conn, t, r) for r in splits.get(t.oid, [])]
        if not any(u.kind == "split" for u in found):  # a split under way says it all
            found += [_owed_recut(conn, t, r) for r in owed.get(t.oid, []) if wide_child_of(t, r)]
        if (
            t.default is not None
            and t.default.oid in helpers
            and not any(u.before_swap for u in found)
        ):
            trg, chk = helpers[t.default.oid]  # helpers without a journal run that owns them
            found.append(UnfinishedFix("instant", t.default.name, trigger=trg, check=chk))
        if t.oid in strays:
            found.append(_stray(conn, t, strays[t.oid], cap))
        qs = tuple(
            q
            for name in sorted(qnames.get(t.oid, ()))
            if name in existing
            for q in [_quarantine(conn, t, name)]
            if q is not None and q.rows
        )
        if found or qs:
            out[t.oid] = Leftovers(tuple(found), qs)
    return out


def _from_split(conn: Conn, table: Table, run: journal.SplitRun) -> UnfinishedFix:
    """A re-cut not finished: its children stay attached and hold every row (nothing is out
    of sight), but its capture trigger still logs every change of them."""
    holders = advisory_holders(conn, sql.Literal(journal.advisory_key(table.oid)))
    return UnfinishedFix(
        "split",
        ", ".join(run.sources),
        run.run_id,
        run.state,
        run.started_at,
        trigger=True,
        running=holders[0].describe() if holders else None,
    )


def wide_child_of(table: Table, run: journal.FixRun) -> str | None:
    """The wide child ``run``'s instant swap made, if it is still a child with the swap's
    bounds (a re-cut, ``partguard split`` included, replaces it: nothing to clear)."""
    p = run.params
    name = p.get("span_child")
    for c in table.children:
        if (
            c.name == name
            and _same_key(c.lower, p.get("span_lo"))
            and _same_key(c.upper, p.get("span_hi"))
        ):
            return c.name
    return None


def _same_key(bound: Key | None, journalled: Any) -> bool:
    """A catalog bound against the journal's (``FixParams.as_json``: ISO text or an int)."""
    if bound is None or journalled is None:
        return bound is None and journalled is None
    if isinstance(bound, (date, datetime)) and isinstance(journalled, str):
        return bound == type(bound).fromisoformat(journalled)
    return bool(bound == journalled)


def _owed_recut(conn: Conn, table: Table, run: journal.FixRun) -> UnfinishedFix:
    """An auto fix done with its swap whose re-cut never ran (killed in between): every row
    is visible and writes work; the exact children it promised are owed."""
    holders = advisory_holders(conn, sql.Literal(journal.advisory_key(table.oid)))
    return UnfinishedFix(
        "recut",
        str(run.params.get("span_child")),
        run.run_id,
        run.state,
        run.started_at,
        running=holders[0].describe() if holders else None,
    )


def _from_run(
    conn: Conn,
    table: Table,
    run: journal.FixRun,
    helpers: dict[int, tuple[bool, bool]],
    cap: int | None,
) -> UnfinishedFix:
    p = run.params
    holders = advisory_holders(conn, sql.Literal(journal.advisory_key(table.oid)))
    running = holders[0].describe() if holders else None
    quarantine = p.get("quarantine")
    base = UnfinishedFix(
        run.strategy,
        str(p.get("source") or ""),
        run.run_id,
        run.state,
        run.started_at,
        quarantine=quarantine,
        running=running,
    )
    if run.strategy == "copy":
        holding = str(p.get("holding") or "")
        hidden, exact = (
            (0, True)
            if run.state in _COPY_ALL_COPIED
            else uncopied_rows(
                conn, table.schema, holding, journal.chunk_ranges(conn, run.run_id), cap
            )
        )
        return replace(base, relation=holding, hidden_rows=hidden, hidden_exact=exact)
    trg, chk = (False, False)
    if run.state in journal.INSTANT_BEFORE_SWAP and table.default is not None:
        trg, chk = helpers.get(table.default.oid, (False, False))
    hidden = quarantined_since(conn, quarantine, run.started_at) if quarantine else 0
    return replace(base, trigger=trg, check=chk, hidden_rows=hidden)


def _stray(conn: Conn, table: Table, name: str, cap: int | None) -> UnfinishedFix:
    rows, exact = uncopied_rows(conn, table.schema, name, [], cap)
    return UnfinishedFix(
        "detached_default",
        name,
        hidden_rows=rows,
        hidden_exact=exact,
        adoptable=table.default is None,
    )


def uncopied_rows(
    conn: Conn, schema: str, name: str, done: Sequence[tuple[int, int]], cap: int | None = COUNT_CAP
) -> tuple[int, bool]:
    """Rows of ``schema.name`` outside the block ranges ``done``: (count, exact).

    Counted with TID range scans over the ranges not copied yet, so a nearly finished copy
    costs little; at ``cap`` rows the count stops and the rest is estimated from
    ``reltuples`` by pages (never below what was counted). A role that may not read the
    table gets the estimate alone."""
    row = conn.execute(
        """SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) / current_setting('block_size')::int,
                  has_table_privilege(c.oid, 'SELECT')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'""",
        (schema, name),
    ).fetchone()
    if row is None:
        return 0, True
    reltuples, relpages, pages, may_read = float(row[0]), int(row[1]), int(row[2]), bool(row[3])
    gaps = _gaps(done)
    todo_pages = sum((pages if e is None else min(e, pages)) - min(f, pages) for f, e in gaps)
    estimate = round(reltuples * todo_pages / relpages) if reltuples > 0 and relpages > 0 else 0
    if not may_read:
        return max(estimate, 0), False
    rel = sql.Identifier(schema, name)
    counted = 0
    for first, end in gaps:
        cond = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
        if end is not None:
            cond = sql.SQL("{} AND ctid < {}::tid").format(cond, sql.Literal(f"({end},0)"))
        limit = (
            sql.SQL("") if cap is None else sql.SQL(" LIMIT {}").format(sql.Literal(cap - counted))
        )
        got = conn.execute(
            sql.SQL("SELECT count(*) FROM (SELECT FROM {} WHERE {}{}) s").format(rel, cond, limit)
        ).fetchone()
        counted += int(got[0]) if got else 0
        if cap is not None and counted >= cap:
            return max(counted, estimate), False
    return counted, True


def _gaps(done: Sequence[tuple[int, int]]) -> list[tuple[int, int | None]]:
    """Block ranges not covered by ``done``; the last one is open-ended."""
    out: list[tuple[int, int | None]] = []
    cursor = 0
    for first, end in sorted(done):
        if first > cursor:
            out.append((cursor, first))
        cursor = max(cursor, end)
    out.append((cursor, None))
    return out


def quarantined_since(conn: Conn, name: str, since: datetime | None) -> int:
    """Rows put into ``partguard.<name>`` since ``since`` (a run's start): what that run set aside."""
    if not _existing(conn, [name]):
        return 0
    query = sql.SQL("SELECT count(*) FROM {} WHERE partguard_quarantined_at >= {}").format(
        sql.Identifier(journal.SCHEMA, name), sql.Literal(since)
    )
    try:
        with conn.transaction():
            row = conn.execute(query).fetchone()
    except (pgerrors.InsufficientPrivilege, pgerrors.UndefinedColumn):
        return 0
    return int(row[0]) if row else 0


def _quarantine(conn: Conn, table: Table, name: str) -> Quarantine | None:
    k = sql.Identifier(table.key)
    query = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE {k} IS NULL), min({k}), max({k}) FROM {q}"
    ).format(k=k, q=sql.Identifier(journal.SCHEMA, name))
    try:
        with conn.transaction():  # a savepoint inside a caller's transaction
            row = conn.execute(query).fetchone()
    except (pgerrors.InsufficientPrivilege, pgerrors.UndefinedColumn, pgerrors.UndefinedTable):
        return None  # not ours to read, or not shaped like this table (a namesake's)
    if row is None:
        return None
    return Quarantine(name, int(row[0]), int(row[1]), row[2], row[3])


def _existing(conn: Conn, names: list[str]) -> set[str]:
    if not names:
        return set()
    return {
        str(r[0])
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind = 'r'",
            (journal.SCHEMA, names),
        )
    }


def _helpers_on_defaults(conn: Conn, oids: list[int]) -> dict[int, tuple[bool, bool]]:
    """(trigger, CHECK) of instant's helpers on each DEFAULT that has either."""
    if not oids:
        return {}
    rows = conn.execute(
        """SELECT r.oid,
                  EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = r.oid AND t.tgname = %(trg)s),
                  EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = r.oid AND c.conname = %(chk)s)
           FROM unnest(%(oids)s::oid[]) r(oid)""",
        {"trg": TRIGGER_NAME, "chk": CHECK_NAME, "oids": oids},
    ).fetchall()
    return {int(r[0]): (bool(r[1]), bool(r[2])) for r in rows if r[1] or r[2]}


def default_names(table: Table) -> list[str]:
    """Where a detached DEFAULT of ``table`` would be: ``<table>_default`` as partman names
    it (the parent's name cut to fit) and as PostgreSQL cuts an over-long name."""
    suffix = "_default"
    full = table.name + suffix
    if len(full.encode()) <= NAMEDATALEN:
        return [full]
    cut = table.name.encode()[: NAMEDATALEN - len(suffix)].decode(errors="ignore") + suffix
    return sorted({cut, full.encode()[:NAMEDATALEN].decode(errors="ignore")})


def _detached_defaults(conn: Conn, tables: Sequence[Table]) -> dict[int, str]:
    """Tables whose ``<table>_default`` stands alone with exactly their columns and holds
    rows: the old script detached it and was interrupted (fix adopts it)."""
    pairs = [
        (t, n) for t in tables for n in default_names(t) if t.default is None or t.default.name != n
    ]
    if not pairs:
        return {}
    found = {
        (str(s), str(n))
        for s, n in conn.execute(
            """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN unnest(%s::text[], %s::text[]) w(s, r) ON w.s = n.nspname AND w.r = c.relname
           WHERE c.relkind = 'r' AND NOT c.relispartition""",
            ([t.schema for t, _ in pairs], [n for _, n in pairs]),
        )
    }
    out: dict[int, str] = {}
    for t, name in pairs:
        if (
            (t.schema, name) in found
            and is_detached_copy(conn, t, name)
            and _has_rows(conn, t.schema, name)
        ):
            out[t.oid] = name
    return out


def _has_rows(conn: Conn, schema: str, name: str) -> bool:
    rows, _ = uncopied_rows(conn, schema, name, [], cap=1)
    return rows > 0
