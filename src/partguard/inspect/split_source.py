"""What re-cutting a partition must reproduce: the source children's indexes, constraints,
owner, privileges and storage, and the parent's indexes the new children must match.

The re-cut builds each target as a plain table and attaches it in the swap; ATTACH adopts
an index only if one matching the parent's exists, and validates nothing only if a CHECK
proves the bound. So the facts read here are exactly the ones the swap depends on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..db import Conn
from ..errors import UnsupportedTable
from ..humanize import display_ident, display_name
from .catalog import Child, Table


@dataclass(frozen=True)
class IndexFacts:
    """One index, as ``CREATE INDEX`` needs it again on another table.

    ``tail`` is ``pg_get_indexdef`` after ``USING `` (method, columns, INCLUDE, WITH,
    WHERE): it does not mention the table or the index name, so it applies to any table
    with the same columns. It is cut at a prefix computed by the server with the same
    quoting ``pg_get_indexdef`` uses, never by a pattern match.
    """

    name: str
    parent_index: str | None  # the partitioned index it is attached to
    tail: str
    unique: bool
    constraint: str  # 'p' primary key, 'u' unique constraint, '' a plain index
    deferrable: bool
    deferred: bool
    columns: tuple[str, ...]  # key columns (empty when an expression is among them)
    partial: bool


@dataclass(frozen=True)
class SourceFacts:
    child: Child
    owner: str
    persistence: str  # 'p' permanent, 'u' unlogged
    reloptions: tuple[str, ...]  # 'fillfactor=90', as pg_class stores them
    tablespace: str | None
    grants: tuple[tuple[str, str, bool], ...]  # (grantee or 'PUBLIC', privilege, grantable)
    indexes: tuple[IndexFacts, ...]
    local_checks: tuple[tuple[str, str], ...]  # (name, pg_get_constraintdef) not from the parent
    local_triggers: tuple[str, ...]  # row or statement triggers of this child alone


@dataclass(frozen=True)
class ParentFacts:
    indexes: tuple[IndexFacts, ...]  # the partitioned indexes every child must match
    foreign_keys: tuple[str, ...]  # outgoing FKs: ATTACH would validate them under its lock


_INDEXES_SQL = """
SELECT ic.relname, pi.relname, pg_get_indexdef(i.indexrelid),
       format('CREATE %%sINDEX %%s ON %%s%%s.%%s USING ',
              CASE WHEN i.indisunique THEN 'UNIQUE ' END,
              quote_ident(ic.relname), CASE WHEN t.relkind = 'p' THEN 'ONLY ' END,
              quote_ident(n.nspname), quote_ident(t.relname)),
       i.indisunique, coalesce(con.contype::text, ''), coalesce(con.condeferrable, false),
       coalesce(con.condeferred, false),
       CASE WHEN 0 = ANY (i.indkey::int2[]) THEN '{}'::text[] ELSE
         (SELECT array_agg(a.attname::text ORDER BY k.ord)
            FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE k.ord <= i.indnkeyatts) END,
       i.indpred IS NOT NULL, i.indisvalid
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_inherits h ON h.inhrelid = i.indexrelid
LEFT JOIN pg_class pi ON pi.oid = h.inhparent
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                            AND con.contype IN ('p', 'u', 'x')
WHERE i.indrelid = %s
ORDER BY ic.relname
"""

_SOURCE_SQL = """
SELECT pg_get_userbyid(c.relowner), c.relpersistence::text, coalesce(c.reloptions, '{}'),
       (SELECT spcname FROM pg_tablespace WHERE oid = c.reltablespace)
FROM pg_class c WHERE c.oid = %s
"""

_GRANTS_SQL = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type,
       a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = %s AND a.grantee <> c.relowner
ORDER BY 1, 2
"""

_CHECKS_SQL = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = %s AND contype = 'c' AND conislocal AND coninhcount = 0
  AND conname NOT LIKE 'partguard\\_%%'
ORDER BY conname
"""

_TRIGGERS_SQL = """
SELECT tgname FROM pg_trigger
WHERE tgrelid = %s AND NOT tgisinternal AND tgparentid = 0 AND tgname NOT LIKE 'partguard\\_%%'
ORDER BY tgname
"""

_FKS_SQL = (
    "SELECT conname FROM pg_constraint WHERE conrelid = %s AND contype = 'f' ORDER BY conname"
)


def _indexes(conn: Conn, oid: int, what: str) -> tuple[IndexFacts, ...]:
    out = []
    for (
        name,
        parent,
        definition,
        prefix,
        unique,
        contype,
        deferrable,
        deferred,
        columns,
        partial,
        valid,
    ) in conn.execute(_INDEXES_SQL, (oid,)):
        if not valid:
            continue  # an invalid index is not one ATTACH matches, nor one worth copying
        if contype == "x":
            raise UnsupportedTable(
                f"{what}: exclusion constraint on index {display_ident(name)} is not supported"
            )
        if not definition.startswith(prefix):
            raise UnsupportedTable(
                f"{what}: cannot reproduce index {display_ident(name)} (unexpected definition)"
            )
        out.append(
            IndexFacts(
                name,
                parent,
                definition[len(prefix) :],
                bool(unique),
                contype,
                bool(deferrable),
                bool(deferred),
                tuple(columns or ()),
                bool(partial),
            )
        )
    return tuple(out)


def parent_facts(conn: Conn, table: Table) -> ParentFacts:
    return ParentFacts(
        indexes=_indexes(conn, table.oid, display_name(table)),
        foreign_keys=tuple(r[0] for r in conn.execute(_FKS_SQL, (table.oid,))),
    )


def source_facts(conn: Conn, child: Child) -> SourceFacts:
    row = conn.execute(_SOURCE_SQL, (child.oid,)).fetchone()
    if row is None:
        raise UnsupportedTable(
            f"{display_ident(child.name)} disappeared while partguard was looking at it"
        )
    owner, persistence, reloptions, tablespace = row
    return SourceFacts(
        child=child,
        owner=owner,
        persistence=persistence,
        reloptions=tuple(reloptions),
        tablespace=tablespace,
        grants=tuple((g, p, bool(o)) for g, p, o in conn.execute(_GRANTS_SQL, (child.oid,))),
        indexes=_indexes(conn, child.oid, ".".join(map(display_ident, (child.schema, child.name)))),
        local_checks=tuple((n, d) for n, d in conn.execute(_CHECKS_SQL, (child.oid,))),
        local_triggers=tuple(r[0] for r in conn.execute(_TRIGGERS_SQL, (child.oid,))),
    )
