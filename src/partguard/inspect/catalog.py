"""Read partitioned tables, their children and bounds from the catalog into frozen records.

This is the only module that reads ``pg_class``/``pg_inherits`` for partitions. Bounds
come from ``pg_get_expr(relpartbound)``, never from child names: names lie (the old
repair script named children ``_p20261122`` on a partman 4.7 table), bounds do not.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import errors as pgerrors
from psycopg import sql

from ..db import Conn
from ..errors import TableNotFound, UnsupportedTable
from .grid import Key as Key  # re-exported: most modules take Key from here

TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
INT_TYPES = ("bigint", "integer", "smallint")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    generated: bool  # GENERATED ALWAYS AS (...) STORED: never written by INSERT
    identity: str  # 'a' ALWAYS (needs OVERRIDING SYSTEM VALUE), 'd' BY DEFAULT, '' none


@dataclass(frozen=True)
class Child:
    oid: int
    schema: str
    name: str
    lower: Key | None  # None: MINVALUE (or DEFAULT)
    upper: Key | None  # None: MAXVALUE (or DEFAULT)
    is_default: bool
    is_partitioned: bool
    est_rows: int  # pg_class.reltuples; -1 when never analysed
    bound: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Index:
    name: str
    parent_index: str | None  # the partitioned index it is attached to
    first_column: str | None
    definition: str  # '' when read with the tables (read_tables), see there


@dataclass(frozen=True)
class Table:
    """One top-level partitioned table with everything later layers need to decide."""

    oid: int
    schema: str
    name: str
    strategy: str  # 'range', 'list', 'hash'
    key_columns: tuple[str, ...]
    key_is_expression: bool
    key_type: str  # format_type of the single key column, '' for expressions
    key_not_null: bool
    owner: str
    children: tuple[Child, ...]  # non-default, ordered by lower bound
    default: Child | None
    columns: tuple[Column, ...]
    referenced_by: tuple[str, ...] = ()  # FKs of other tables pointing at this one
    default_key_index: str | None = None  # an index on the DEFAULT led by the key column
    indexes: tuple[str, ...] = field(default=())  # partitioned indexes of the parent
    # Every relation name in the table's schema: a new child must not take one, even one
    # outside the partition set (partman silently skips a name that exists: a hole). One
    # set shared by the schema's tables; empty when read without (snapshot.take: check
    # names no children).
    schema_names: frozenset[str] = field(default=frozenset())

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def key(self) -> str:
        return self.key_columns[0]

    @property
    def key_kind(self) -> str:
        """'time' or 'int', or '' when partguard cannot reason about the key."""
        if self.key_type in TIME_TYPES:
            return "time"
        if self.key_type in INT_TYPES:
            return "int"
        return ""

    def unsupported_reason(self) -> str | None:
        """Why this table is out of partguard's reach, in one line (or None)."""
        if self.strategy != "range":
            return f"{self.qualname} is {self.strategy}-partitioned; partguard handles RANGE partitioning only"
        if self.key_is_expression:
            return f"{self.qualname} is partitioned by an expression; partguard needs a plain column key"
        if len(self.key_columns) != 1:
            cols = ", ".join(self.key_columns)
            return f"{self.qualname} has a multi-column partition key ({cols}); partguard needs a single column"
        if not self.key_kind:
            return (
                f"{self.qualname}: partition key {self.key} has type {self.key_type}; "
                "supported: timestamptz, timestamp, date, integer types"
            )
        sub = [c.name for c in self.children if c.is_partitioned]
        if self.default and self.default.is_partitioned:
            sub.append(self.default.name)
        if sub:
            return (
                f"{self.qualname} has subpartitioned children ({', '.join(sub[:3])}); not supported"
            )
        return None

    @property
    def insertable_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.generated)

    @property
    def has_identity_always(self) -> bool:
        return any(c.identity == "a" for c in self.columns)


_STRATEGY = {"r": "range", "l": "list", "h": "hash"}

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, p.partstrat,
       (SELECT coalesce(array_agg(a.attname ORDER BY k.ord), '{}')
          FROM unnest(p.partattrs::int2[]) WITH ORDINALITY k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum) AS key_columns,
       p.partexprs IS NOT NULL AS key_is_expression,
       coalesce((SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum = p.partattrs[0] AND p.partnatts = 1), ''),
       coalesce((SELECT a.attnotnull FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum = p.partattrs[0]), false),
       pg_get_userbyid(c.relowner)
FROM pg_partitioned_table p
JOIN pg_class c ON c.oid = p.partrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (%(oids)s::oid[] IS NULL OR c.oid = ANY(%(oids)s::oid[]))
ORDER BY n.nspname, c.relname
"""

# pg_get_expr(relpartbound, 0): a bound holds only constants, so no relation is needed to
# deparse it; passing the child's oid makes the server open every child (100,000 children:
# 15 s of a 16 s query, and a wait on any child someone holds locked).
_CHILDREN_SQL = """
SELECT i.inhparent, c.oid, n.nspname, c.relname, pg_get_expr(c.relpartbound, 0),
       c.relkind = 'p', c.reltuples::bigint
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = ANY(%(oids)s::oid[])
"""

# Every partitioned table's children, for a read of all tables: without the list of parents
# the planner knows how many rows come and hash-joins (an index probe per child otherwise).
# Children of subpartitions come too; the caller keeps its tables' own.
_ALL_CHILDREN_SQL = _CHILDREN_SQL.replace(
    "WHERE i.inhparent = ANY(%(oids)s::oid[])",
    "JOIN pg_partitioned_table p ON p.partrelid = i.inhparent",
)

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated <> '', a.attidentity::text
FROM pg_attribute a
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_REFERENCED_SQL = """
SELECT confrelid, conrelid::regclass::text || ' (' || conname || ')'
FROM pg_constraint WHERE contype = 'f' AND confrelid = ANY(%s::oid[])
"""

_INDEXES_SQL = """
SELECT i.indrelid, ic.relname, pi.relname,
       (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]),
       CASE WHEN %(definitions)s THEN pg_get_indexdef(i.indexrelid) ELSE '' END
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_inherits h ON h.inhrelid = i.indexrelid
LEFT JOIN pg_class pi ON pi.oid = h.inhparent
WHERE i.indrelid = ANY(%(oids)s::oid[])
ORDER BY ic.relname
"""


def resolve(conn: Conn, name: str) -> int:
    """Find a table by a name as a DBA types it (``schema.table``, quoted or not)."""
    row: Any = None
    try:
        with conn.transaction():  # a savepoint: a bad name must not abort the caller's work
            row = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()
    except (pgerrors.InvalidName, pgerrors.SyntaxError, pgerrors.FeatureNotSupported):
        pass  # before PG 16 to_regclass raises on e.g. unquoted spaces or quotes
    if row is None or row[0] is None:
        # to_regclass needs quoting for odd names; accept a plain schema.table split too.
        schema, _, rel = name.rpartition(".")
        row = conn.execute(
            """SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname = %s AND (%s = '' AND pg_table_is_visible(c.oid) OR n.nspname = %s)""",
            (rel, schema, schema),
        ).fetchone()
    if row is None or row[0] is None:
        raise TableNotFound(f"table {name} does not exist (or is not visible in search_path)")
    return int(row[0])


def read_tables(
    conn: Conn,
    names: list[str] | None = None,
    *,
    strict: bool = True,
    with_schema_names: bool = True,
) -> list[Table]:
    """All top-level partitioned tables, or the named ones.

    With ``strict``, a named table that is missing or not partitioned is an error; the
    caller still decides what to do with list/hash/expression keys (``unsupported_reason``).
    ``with_schema_names=False`` leaves ``Table.schema_names`` empty: only a planner that
    names new children needs them (100,000 relations in a schema: 100,000 more rows).
    """
    oids: list[int] | None = None
    if names:
        oids = [resolve(conn, n) for n in names]
    rows = conn.execute(_TABLES_SQL, {"oids": oids}).fetchall()
    if strict and oids is not None:
        found = {r[0] for r in rows}
        for name, oid in zip(names or [], oids, strict=False):
            if oid not in found:
                kind = conn.execute(
                    "SELECT relkind::text, relispartition FROM pg_class WHERE oid = %s", (oid,)
                ).fetchone()
                if kind and kind[1]:
                    raise UnsupportedTable(
                        f"{name} is a partition, not a top-level partitioned table"
                    )
                raise UnsupportedTable(f"{name} is not a partitioned table")
    table_oids = [r[0] for r in rows]
    children: dict[int, list[Child]] = {o: [] for o in table_oids}
    for parent, oid, schema, relname, bound, is_part, tuples in conn.execute(
        _CHILDREN_SQL if oids is not None else _ALL_CHILDREN_SQL, {"oids": table_oids}
    ):
        if parent not in children:
            continue  # a subpartition's child
        lower, upper, is_default = parse_bound(bound or "")
        children[parent].append(
            Child(
                oid,
                schema,
                relname,
                lower,
                upper,
                is_default,
                bool(is_part),
                int(tuples),
                bound or "",
            )
        )
    rel_oids = table_oids + [c.oid for cs in children.values() for c in cs if c.is_default]
    columns: dict[int, list[Column]] = {o: [] for o in table_oids}
    for relid, name, typ, notnull, gen, ident in conn.execute(_COLUMNS_SQL, (table_oids,)):
        columns[relid].append(Column(name, typ, notnull, gen, ident or ""))
    referenced: dict[int, list[str]] = {o: [] for o in table_oids}
    for relid, desc in conn.execute(_REFERENCED_SQL, (table_oids,)):
        referenced[relid].append(desc)
    indexes: dict[int, list[Index]] = {o: [] for o in rel_oids}
    # No definitions here: pg_get_indexdef locks the table, and one table a DDL holds
    # would stall the read of every other.
    for relid, iname, parent_index, first_col, idef in conn.execute(
        _INDEXES_SQL, {"oids": rel_oids, "definitions": False}
    ):
        indexes[relid].append(Index(iname, parent_index, first_col, idef))

    names_in = schema_names(conn, sorted({r[1] for r in rows})) if with_schema_names else {}
    tables = []
    for oid, schema, name, strat, keycols, is_expr, keytype, notnull, owner in rows:
        kids = children[oid]
        default = next((c for c in kids if c.is_default), None)
        regular = sorted((c for c in kids if not c.is_default), key=_sort_key)
        key_index = None
        if default is not None and keycols:
            key_index = next(
                (i.name for i in indexes.get(default.oid, []) if i.first_column == keycols[0]), None
            )
        tables.append(
            Table(
                oid=oid,
                schema=schema,
                name=name,
                strategy=_STRATEGY.get(strat, strat),
                key_columns=tuple(keycols),
                key_is_expression=bool(is_expr),
                key_type=keytype,
                key_not_null=bool(notnull),
                owner=owner,
                children=tuple(regular),
                default=default,
                columns=tuple(columns[oid]),
                referenced_by=tuple(referenced[oid]),
                default_key_index=key_index,
                indexes=tuple(i.name for i in indexes.get(oid, [])),
                schema_names=names_in.get(schema, _NO_NAMES),
            )
        )
    return tables


_NO_NAMES: frozenset[str] = frozenset()


def schema_names(conn: Conn, schemas: list[str]) -> dict[str, frozenset[str]]:
    """Every relation name in each schema, one shared set per schema.

    Every table of a schema refers to the same frozenset: a copy per table made ``check``
    grow with tables x relations (300 tables x 100 children in one schema: 686 MB).
    """
    names_in: dict[str, set[str]] = {}
    for nsp, relname in conn.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = ANY(%s)""",
        (schemas,),
    ):
        names_in.setdefault(nsp, set()).add(relname)
    return {nsp: frozenset(names) for nsp, names in names_in.items()}


def read_table(conn: Conn, name: str) -> Table:
    """One named table, refusing anything partguard cannot reason about."""
    (table,) = read_tables(conn, [name])
    reason = table.unsupported_reason()
    if reason:
        raise UnsupportedTable(reason)
    return table


def privileges(conn: Conn, table: Table) -> tuple[bool, bool]:
    """(may alter ``table``: owner, member of its owner, or superuser; may CREATE schemas)."""
    row = conn.execute(
        """SELECT pg_has_role(current_user, %s, 'USAGE')
                  OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                  has_database_privilege(current_database(), 'CREATE')""",
        (table.owner,),
    ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def relation_pages(conn: Conn, schema: str, name: str) -> int:
    """Heap pages on disk now (not the planner's estimate): the copy's block ranges."""
    row = conn.execute(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchone()
    return int(row[0]) if row else 0


def relation_name(conn: Conn, oid: int) -> tuple[str, str]:
    """(schema, name) of a relation, unquoted, as pg_partman spells them."""
    row = conn.execute(
        """SELECT n.nspname::text, c.relname::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s""",
        (oid,),
    ).fetchone()
    if row is None:
        raise TableNotFound(f"relation {oid} disappeared while partguard was looking at it")
    return str(row[0]), str(row[1])


def relation_oids(conn: Conn, schema: str, names: list[str]) -> list[int]:
    rows = conn.execute(
        """SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = ANY(%s)""",
        (schema, [n for n in names if n]),
    ).fetchall()
    return [int(r[0]) for r in rows]


def has_key_index(conn: Conn, schema: str, rel: str, key: str) -> bool:
    """An index on ``rel`` led by ``key``: what lets the bucket walk skip the heap."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                 JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s)""",
        (schema, rel, key),
    ).fetchone()
    return bool(row and row[0])


def is_detached_copy(conn: Conn, table: Table, name: str) -> bool:
    """``name`` is a plain table in ``table``'s schema with exactly its columns: a DEFAULT
    that an earlier repair detached and left behind."""
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r' AND NOT c.relispartition""",
        (table.schema, name),
    ).fetchall()
    return bool(rows) and {(r[0], r[1]) for r in rows} == {(c.name, c.type) for c in table.columns}


def child_indexes(conn: Conn, oid: int) -> list[Index]:
    return [Index(*r[1:]) for r in conn.execute(_INDEXES_SQL, {"oids": [oid], "definitions": True})]


def _sort_key(c: Child) -> tuple[int, Any]:
    # MINVALUE first; mixed types never occur within one table.
    return (0, 0) if c.lower is None else (1, c.lower)


# --- bound parsing ---------------------------------------------------------

_RANGE_RE = re.compile(r"^FOR VALUES FROM \((?P<lo>.*)\) TO \((?P<hi>.*)\)$", re.DOTALL)


@functools.lru_cache(maxsize=8192)  # a schema's tables mostly share their bounds
def parse_bound(text: str) -> tuple[Key | None, Key | None, bool]:
    """Parse ``pg_get_expr(relpartbound)`` as rendered with DateStyle ISO.

    Returns (lower, upper, is_default); MINVALUE/MAXVALUE become None. List and hash
    bounds come back as (None, None, False): they are not ours to reason about.
    """
    if text == "DEFAULT":
        return None, None, True
    m = _RANGE_RE.match(text)
    if not m:
        return None, None, False
    return parse_literal(m["lo"]), parse_literal(m["hi"]), False


@functools.lru_cache(maxsize=8192)
def parse_literal(text: str) -> Key | None:
    """One bound value as rendered by the server (cached, as parse_bound: the values are
    immutable, and shared they cost memory once)."""
    t = text.strip()
    if t.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    if t.startswith("'"):
        body = t[1 : t.rindex("'")].replace("''", "'")
        if re.fullmatch(r"[+-]?\d+", body):  # integer bounds are rendered quoted too: ('0')
            return int(body)
        return _parse_time(body)
    try:
        return int(t)
    except ValueError:
        return None


def _parse_time(body: str) -> Key | None:
    if body in ("infinity", "-infinity"):
        return None
    if len(body) == 10:
        return date.fromisoformat(body)
    m = re.match(r"^(.*?)([+-]\d\d(?::?\d\d(?::?\d\d)?)?)$", body)
    if m and " " in body:
        stamp, off = m.groups()
        if len(off) == 3:
            off += ":00"
        return datetime.fromisoformat(f"{stamp}{off}")
    return datetime.fromisoformat(body)
