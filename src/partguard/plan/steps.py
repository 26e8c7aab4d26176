"""The statements of a repair, as data: what runs, in which transaction, taking which locks.

The executor runs these; ``--dry-run`` prints them. Both come from the same functions, so
the script a DBA reviews is the script that runs (pgslice's rule). Parts that depend on
what the swap finds under its lock (rows that arrived since the analysis, index names)
are marked as such in the printed plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from ..inspect.catalog import Index, Key, Table
from ..inspect.partman import Partman
from .children import bound_literal, create_child, partman_create
from .fix import ChildSpec, FixParams, short_name

__all__ = ["Step", "copy_steps", "index_renames", "instant_steps", "make_children", "short_name"]

SCHEMA = "partguard"
CHECK_NAME = "partguard_span"
TRIGGER_NAME = "partguard_divert"


@dataclass(frozen=True)
class Step:
    name: str
    statements: tuple[sql.Composed, ...]
    locks: str
    note: str = ""
    kind: str = "ddl"  # ddl: one short transaction under lock_timeout; scan; copy; maintenance
    extra: tuple[str, ...] = field(default=())  # comments for the printed plan


def ident(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def quarantine_ident(p: FixParams) -> sql.Identifier:
    return ident(SCHEMA, p.quarantine)


def _k(p: FixParams) -> sql.Identifier:
    return sql.Identifier(p.key)


def outside(p: FixParams, lo: Key | None, hi: Key | None, table: Table, prefix: str = "") -> sql.Composable:
    """``key IS NULL OR key < lo OR key >= hi`` (with ``NEW.`` in a trigger's WHEN)."""
    k: sql.Composable = _k(p) if not prefix else sql.SQL("{}.{}").format(sql.SQL(prefix), _k(p))
    parts: list[sql.Composable] = [sql.SQL("{} IS NULL").format(k)]
    if lo is not None:
        parts.append(sql.SQL("{} < {}").format(k, bound_literal(lo, table)))
    if hi is not None:
        parts.append(sql.SQL("{} >= {}").format(k, bound_literal(hi, table)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))


def create_quarantine(p: FixParams, table: Table, like: str) -> tuple[sql.Composed, ...]:
    """A plain copy of the source's columns (generated values kept as data), plus when."""
    return (
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {q} (LIKE {src}, partguard_quarantined_at timestamptz DEFAULT now())"
        ).format(q=quarantine_ident(p), src=ident(table.schema, like)),
    )


def move_to_quarantine(p: FixParams, table: Table, src: str, lo: Key | None, hi: Key | None) -> sql.Composed:
    return sql.SQL(
        "WITH moved AS (DELETE FROM {src} WHERE {cond} RETURNING *) INSERT INTO {q} SELECT * FROM moved"
    ).format(src=ident(table.schema, src), cond=outside(p, lo, hi, table), q=quarantine_ident(p))


def insert_into_parent(table: Table, source: sql.Composable) -> sql.Composed:
    """``INSERT INTO parent (cols) SELECT cols FROM <source>``: generated columns left out
    (PostgreSQL computes them), identity ALWAYS columns keep their values."""
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.insertable_columns)
    override = sql.SQL(" OVERRIDING SYSTEM VALUE") if table.has_identity_always else sql.SQL("")
    return sql.SQL("INSERT INTO {parent} ({cols}){override} SELECT {cols} FROM {source}").format(
        parent=table.ident, cols=cols, override=override, source=source
    )


def release_quarantine(p: FixParams, table: Table, keep_outliers: bool) -> sql.Composed:
    """Rows the divert trigger caught that now have a child go back to the parent; true
    outliers stay (or, with ``--outliers keep``, go back too and land in the DEFAULT)."""
    cond: sql.Composable = sql.SQL("true") if keep_outliers else sql.SQL("NOT {}").format(
        outside(p, p.plausible_lo, p.plausible_hi, table)
    )
    moved = sql.SQL("(DELETE FROM {q} WHERE {cond} RETURNING *)").format(q=quarantine_ident(p), cond=cond)
    return sql.SQL("WITH moved AS {moved} {insert}").format(
        moved=moved, insert=insert_into_parent(table, sql.SQL("moved"))
    )


def make_children(children: tuple[ChildSpec, ...], table: Table, partman: Partman | None) -> list[sql.Composed]:
    """partman makes its on-grid children itself (template, privileges, naming); the rest,
    clipped next to off-grid neighbours, are plain ``PARTITION OF`` tables."""
    stmts: list[sql.Composed] = []
    batch = [c.lower for c in children if c.via_partman]
    if batch and partman is not None:
        stmts.append(partman_create(partman, table, batch))
    for c in children:
        if not (c.via_partman and partman is not None):
            stmts.append(create_child(table, table.schema, c.name, c.lower, c.upper))
    return stmts


def set_zone(p: FixParams) -> list[sql.Composed]:
    """partman names and bounds children in the session TimeZone: pin it to the grid's."""
    if not p.zone:
        return []
    return [sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(p.zone))]


def index_renames(schema: str, indexes: list[Index], old: str, new: str) -> list[sql.Composed]:
    """Rename the former DEFAULT's indexes as PostgreSQL names a normal child's, so nothing
    is left called ``…_default_…`` (the fresh DEFAULT will want those names)."""
    out: list[sql.Composed] = []
    for idx in indexes:
        if idx.name.startswith(old):
            target = short_name(new, idx.name[len(old):])
            out.append(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(schema, idx.name), sql.Identifier(target)))
    return out


def rename_children(p: FixParams, table: Table) -> list[sql.Composed]:
    """Give misnamed children the names the convention gives them (their indexes follow
    in the swap, through ``index_renames``, once the server has told their names)."""
    return [sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(table.schema, old), sql.Identifier(new))
            for old, new in p.renames]


# --- the two strategies --------------------------------------------------------


def instant_steps(p: FixParams, table: Table, partman: Partman | None) -> list[Step]:
    src = ident(table.schema, p.source)
    assert p.span_lo is not None and p.span_hi is not None and p.span_child
    lo, hi = bound_literal(p.span_lo, table), bound_literal(p.span_hi, table)
    check = sql.SQL("{k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi}").format(k=_k(p), lo=lo, hi=hi)
    child = ident(table.schema, p.span_child)
    steps = [
        # Catalog changes only, in one transaction: if the lock cannot be had, nothing changed.
        Step("prepare", (
            *create_quarantine(p, table, p.source),
            sql.SQL(
                "CREATE TRIGGER {trg} BEFORE INSERT ON {src} FOR EACH ROW WHEN {cond} "
                "EXECUTE FUNCTION partguard.divert({q})"
            ).format(trg=sql.Identifier(TRIGGER_NAME), src=src, cond=outside(p, p.span_lo, p.span_hi, table, "NEW"),
                     q=sql.Literal(quarantine_ident(p).as_string(None))),
            sql.SQL("ALTER TABLE {src} ADD CONSTRAINT {c} CHECK ({check}) NOT VALID").format(
                src=src, c=sql.Identifier(CHECK_NAME), check=check),
        ), f"ACCESS EXCLUSIVE on {p.source} (milliseconds: NOT VALID skips the scan)",
            "from here on, live inserts that would not fit the span are diverted, never rejected"),
        Step("quarantine", (move_to_quarantine(p, table, p.source, p.span_lo, p.span_hi),),
             f"ROW EXCLUSIVE on {p.source}", "NULL keys and outliers leave the DEFAULT", kind="scan"),
        Step("validate", (
            sql.SQL("ALTER TABLE {src} VALIDATE CONSTRAINT {c}").format(src=src, c=sql.Identifier(CHECK_NAME)),
        ), f"SHARE UPDATE EXCLUSIVE on {p.source}: reads and writes go on", kind="scan"),
    ]
    swap: list[sql.Composed] = [
        *set_zone(p),
        *rename_children(p, table),
        sql.SQL("ALTER TABLE {parent} DETACH PARTITION {src}").format(parent=table.ident, src=src),
        sql.SQL("ALTER TABLE {src} RENAME TO {child}").format(src=src, child=sql.Identifier(p.span_child)),
        *make_children(p.children, table, partman),
        sql.SQL("ALTER TABLE {parent} ATTACH PARTITION {child} FOR VALUES FROM ({lo}) TO ({hi})").format(
            parent=table.ident, child=child, lo=lo, hi=hi),
        sql.SQL("DROP TRIGGER {trg} ON {child}").format(trg=sql.Identifier(TRIGGER_NAME), child=child),
        sql.SQL("ALTER TABLE {child} DROP CONSTRAINT {c}").format(child=child, c=sql.Identifier(CHECK_NAME)),
    ]
    if p.new_default:
        swap.append(sql.SQL("CREATE TABLE {d} PARTITION OF {parent} DEFAULT").format(
            d=ident(table.schema, p.new_default), parent=table.ident))
    steps.append(Step(
        "swap", tuple(swap), f"ACCESS EXCLUSIVE on {table.name} and {p.source} (milliseconds, under lock_timeout)",
        "ATTACH skips its validation scan: the CHECK already proves the bound",
        extra=(f"the former DEFAULT's indexes (and renamed children's) are renamed to match, e.g. {p.span_child}_…",),
    ))
    steps.extend(_finish(p, table, partman))
    return steps


def copy_steps(p: FixParams, table: Table, partman: Partman | None) -> list[Step]:
    src, hold = ident(table.schema, p.source), ident(table.schema, p.holding or "")
    swap: list[sql.Composed] = [*set_zone(p), *rename_children(p, table)]
    if not p.adopted:
        swap.append(sql.SQL("ALTER TABLE {parent} DETACH PARTITION {src}").format(parent=table.ident, src=src))
    swap.append(sql.SQL("ALTER TABLE {src} RENAME TO {hold}").format(src=src, hold=sql.Identifier(p.holding or "")))
    swap.extend(make_children(p.children, table, partman))
    if p.new_default:
        swap.append(sql.SQL("CREATE TABLE {d} PARTITION OF {parent} DEFAULT").format(
            d=ident(table.schema, p.new_default), parent=table.ident))
    steps = [
        Step("swap", (*create_quarantine(p, table, p.source), *swap),
             f"ACCESS EXCLUSIVE on {table.name} and {p.source} (milliseconds, under lock_timeout)",
             "the DEFAULT's rows are out of sight until copied back (use instant to avoid this window)",
             extra=("children for buckets that gained rows since the analysis are added under the same lock",)),
        Step("copy", copy_chunk_sql(p, table, sql.Placeholder("run_id"), sql.Placeholder("first_block"),
                                    sql.Placeholder("end_block")),
             f"ROW EXCLUSIVE on {table.name}; no blocking lock", "one transaction per block range, journalled",
             kind="copy"),
        Step("verify", (sql.SQL("SELECT count(*) FROM {hold}").format(hold=hold),), "ACCESS SHARE on holding",
             "must equal the journal's copied + quarantined rows", kind="check"),
        Step("drop", (sql.SQL("DROP TABLE {hold}").format(hold=hold),), f"ACCESS EXCLUSIVE on {p.holding} (private)",
             "skipped with --keep-source", kind="private"),
    ]
    steps.extend(_finish(p, table, partman))
    return steps


def copy_chunk_sql(
    p: FixParams, table: Table, run_id: sql.Composable, first: sql.Composable, end: sql.Composable
) -> tuple[sql.Composed, sql.Composed]:
    """One block range: quarantine its outliers, then copy the rest and write the journal row
    in the same statement. The executor runs both in one transaction, so a range is either
    wholly done and journalled or not at all.

    A TID range scan (PostgreSQL 14+) reads exactly those heap pages; the second scan of the
    same pages is served from cache. Counting ``RETURNING tableoid`` per child (grouped by
    oid, named afterwards) gives the report's per-child rows for little more than a count.
    Measured: a MATERIALIZED CTE shared by both inserts cost 27 % more than a plain
    ``INSERT … SELECT``; this form costs about 10 %.
    """
    hold = ident(table.schema, p.holding or "")
    rng = sql.SQL("ctid >= ('(' || {first}::bigint || ',0)')::tid AND ctid < ('(' || {end}::bigint || ',0)')::tid").format(
        first=first, end=end)
    out = outside(p, p.plausible_lo, p.plausible_hi, table)
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.insertable_columns)
    override = sql.SQL(" OVERRIDING SYSTEM VALUE") if table.has_identity_always else sql.SQL("")
    quarantine = sql.SQL("INSERT INTO {q} SELECT * FROM {hold} WHERE {rng} AND {out}").format(
        q=quarantine_ident(p), hold=hold, rng=rng, out=out)
    copy = sql.SQL(
        "WITH ins AS (INSERT INTO {parent} ({cols}){override} SELECT {cols} FROM {hold} WHERE {rng} AND NOT {out}"
        " RETURNING tableoid),\n"
        " per_child AS (SELECT tableoid, count(*) AS n FROM ins GROUP BY tableoid)\n"
        "INSERT INTO partguard.fix_chunk (run_id, first_block, end_block, rows_copied, rows_quarantined, per_child)\n"
        "SELECT {run}, {first}, {end}, coalesce(sum(n), 0), {quarantined},\n"
        "       coalesce(jsonb_object_agg(tableoid::regclass::text, n), '{{}}') FROM per_child"
    ).format(hold=hold, rng=rng, parent=table.ident, cols=cols, override=override, out=out,
             run=run_id, first=first, end=end, quarantined=sql.Placeholder("quarantined"))
    return quarantine, copy


def _finish(p: FixParams, table: Table, partman: Partman | None) -> list[Step]:
    """partman's maintenance first, then the quarantine's release: partman 4.x (with
    ignore_default_data off, its default) premakes up to the DEFAULT's largest key, so an
    outlier at 2999 that ``--outliers keep`` puts back would have it create children for
    nine centuries."""
    steps = []
    if partman is not None and p.managed:
        steps.append(Step("maintenance", (*set_zone(p), partman.run_maintenance_sql(p.table)),
                          "partman's own locks, under lock_timeout", kind="maintenance"))
    steps.append(Step("release", (release_quarantine(p, table, p.keep_outliers),), f"ROW EXCLUSIVE on {table.name}",
                      "quarantined rows that now have a child go back into the table"))
    return steps
