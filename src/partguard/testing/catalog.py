"""Reading test tables back: children with typed bounds, the DEFAULT, names, counts.

Children are found by their bounds, never by their names (names differ between partman
versions; bounds do not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

Conn = psycopg.Connection[Any]


def session(dsn: str, **kw: Any) -> Conn:
    """A new connection with the database's default settings (like cron's ``psql -c``)."""
    return psycopg.connect(make_conninfo(dsn, **kw), autocommit=True)


def one(conn: Conn, query: Any, params: Any = None) -> tuple[Any, ...]:
    """The one row a query returns."""
    got: tuple[Any, ...] | None = conn.execute(query, params).fetchone()
    assert got is not None, query
    return got


def utc_today(conn: Conn) -> date:
    today: date = one(conn, "SELECT (now() AT TIME ZONE 'UTC')::date")[0]
    return today


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def utc_midnight(conn: Conn, days_ago: int = 0) -> datetime:
    at: datetime = one(
        conn,
        "SELECT date_trunc('day', now() AT TIME ZONE 'UTC') - %s * interval '1 day'",
        (days_ago,),
    )[0]
    return at.replace(tzinfo=UTC)


def now(conn: Conn) -> datetime:
    at: datetime = one(conn, "SELECT now()")[0]
    return at


def partman_major(conn: Conn) -> int:
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
    ).fetchone()
    assert row is not None, "pg_partman is not installed in this database"
    return int(str(row[0]).split(".")[0])


def count(conn: Conn, rel: str) -> int:
    return int(
        one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*rel.split("."))))[0]
    )


def names_of(conn: Conn, parent: str) -> tuple[str, str]:
    """(schema, table) of a table named as a DBA types it (quoted where needed)."""
    row = one(
        conn,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = %s::regclass",
        (parent,),
    )
    return str(row[0]), str(row[1])


def ident_of(conn: Conn, parent: str) -> sql.Identifier:
    return sql.Identifier(*names_of(conn, parent))


@dataclass(frozen=True)
class Kid:
    name: str
    lower: Any
    upper: Any


def key_type(conn: Conn, parent: str) -> str:
    row = one(
        conn,
        """SELECT format_type(a.atttypid, a.atttypmod) FROM pg_partitioned_table p
           JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
           WHERE p.partrelid = %s::regclass""",
        (parent,),
    )
    return str(row[0])


_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$")


def kids(conn: Conn, parent: str) -> list[Kid]:
    """Non-default children with typed bounds (read from relpartbound, never from names)."""
    rows = conn.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'""",
        (parent,),
    ).fetchall()
    typ = key_type(conn, parent)
    out = []
    for name, bound in rows:
        m = _BOUND.match(bound)
        assert m, bound
        texts = [t.strip("'") for t in m.groups()]
        typed = conn.execute(
            sql.SQL(
                "SELECT x::{} FROM unnest(%s::text[]) WITH ORDINALITY u(x, o) ORDER BY o"
            ).format(sql.SQL(typ)),
            (texts,),
        ).fetchall()
        out.append(Kid(name, typed[0][0], typed[1][0]))
    return sorted(out, key=lambda c: c.lower)


def default_of(conn: Conn, parent: str) -> str | None:
    row = conn.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'""",
        (parent,),
    ).fetchone()
    return None if row is None else str(row[0])


_FROM = re.compile(r"FROM \('?([^')]*)'?\)")


def children(conn: Conn, parent: str) -> list[tuple[str, str, Any]]:
    """(schema, name, lower bound) of each non-default child, ordered by lower bound."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'""",
        (parent,),
    ).fetchall()
    out = []
    for schema, name, bound in rows:
        m = _FROM.search(bound)
        assert m, bound
        text = m.group(1)
        lower: Any = int(text) if re.fullmatch(r"-?\d+", text) else datetime.fromisoformat(text)
        out.append((schema, name, lower))
    return sorted(out, key=lambda r: r[2])
