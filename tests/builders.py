"""Build partitioned test tables on a real server: partman-managed (4.7 or 5.x) or native.

Tests describe incidents in terms of days relative to the server's clock, so the helpers
speak UTC dates and find children by their bounds (child names differ between partman
versions; bounds do not).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]


def partman_major(conn: Conn) -> int:
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
    ).fetchone()
    assert row is not None, "pg_partman is not installed in this database"
    return int(str(row[0]).split(".")[0])


def version_args(conn: Conn) -> list[sql.Composable]:
    """What create_parent needs beyond the common arguments, by version: 4.x wants
    ``p_type := 'native'``; newer 5.x refuses a nullable control column unless told
    ``p_control_not_null := false`` (the tests need NULL keys to prove the quarantine)."""
    if partman_major(conn) < 5:
        return [sql.SQL("p_type := 'native'")]
    row = conn.execute(
        "SELECT bool_or('p_control_not_null' = ANY(proargnames)) FROM pg_proc WHERE proname = 'create_parent'"
    ).fetchone()
    return [sql.SQL("p_control_not_null := false")] if row and row[0] else []


def create_parent(
    conn: Conn,
    parent: str,
    control: str,
    interval: str,
    *,
    premake: int = 4,
    start: str | None = None,
    tz: str | None = None,
) -> None:
    """``partman.create_parent`` with keyword arguments valid on 4.7 and 5.x.

    ``tz`` pins the session TimeZone for the call: partman lays its grid in it.
    """
    args: list[sql.Composable] = [
        sql.SQL("p_parent_table := {}").format(sql.Literal(parent)),
        sql.SQL("p_control := {}").format(sql.Literal(control)),
        sql.SQL("p_interval := {}").format(sql.Literal(interval)),
        sql.SQL("p_premake := {}").format(sql.Literal(premake)),
    ]
    args.extend(version_args(conn))
    if start is not None:
        args.append(sql.SQL("p_start_partition := {}").format(sql.Literal(start)))
    with conn.transaction():
        if tz is not None:
            conn.execute("SELECT set_config('TimeZone', %s, true)", (tz,))
        conn.execute(sql.SQL("SELECT partman.create_parent({})").format(sql.SQL(", ").join(args)))


def utc_today(conn: Conn) -> date:
    row = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


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


def drop_children(conn: Conn, parent: str, keep: Any) -> list[str]:
    """Drop the children whose lower bound makes ``keep(lower)`` false; returns their names."""
    dropped = []
    for schema, name, lower in children(conn, parent):
        if not keep(lower):
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name)))
            dropped.append(name)
    return dropped


def native_daily(
    conn: Conn, schema: str, table: str, key: str, days: Iterable[date], *, default: bool = True
) -> sql.Identifier:
    """A hand-made daily table (no partman): one child per UTC day given, a DEFAULT, an
    index on the key (so the DEFAULT has one too)."""
    parent = sql.Identifier(schema, table)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, {} timestamptz NOT NULL, "
        "payload text) PARTITION BY RANGE ({})"
    ).format(parent, sql.Identifier(key), sql.Identifier(key)))
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(parent, sql.Identifier(key)))
    for d in days:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, f"{table}_p{d:%Y%m%d}"), parent,
            sql.Literal(midnight(d)), sql.Literal(midnight(d + timedelta(days=1))),
        ))
    if default:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            sql.Identifier(schema, f"{table}_default"), parent))
    return parent


def native_outage(conn: Conn, rows: int, *, table: str = "events", default: bool = True) -> sql.Identifier:
    """``public.<table>``: native daily children up to three days ago and ``rows`` rows spread
    over the two days since, in the DEFAULT (autovacuum off for it: its statistics stay as
    the test leaves them)."""
    today = utc_today(conn)
    parent = native_daily(conn, "public", table, "ts", [today - timedelta(days=d) for d in range(8, 2, -1)],
                          default=default)
    if default:
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)")
                     .format(sql.Identifier("public", f"{table}_default")))
    if rows:
        insert_outage(conn, rows, table)
    return parent


def insert_outage(conn: Conn, rows: int, table: str = "events") -> None:
    """``rows`` more rows, evenly over the two days before today (UTC)."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (ts, payload) SELECT %s::timestamptz + g * (interval '2 days' / %s), 'late' "
        "FROM generate_series(0, %s - 1) g").format(sql.Identifier("public", table)),
        (midnight(utc_today(conn) - timedelta(days=2)), rows, rows))


def count(conn: Conn, rel: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*rel.split(".")))).fetchone()
    assert row is not None
    return int(row[0])


def partman_due(conn: Conn, parent: str = "public.fixes") -> list[str]:
    """A daily pg_partman table from three days ago whose future children are gone (its
    maintenance is due) and a row written now (partman 5 premakes from the newest row).
    Returns the names of the children dropped."""
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
                 .format(sql.Identifier(*parent.split("."))))
    today = utc_today(conn)
    create_parent(conn, parent, "ts", "1 day", premake=4, start=str(today - timedelta(days=3)))
    dropped = drop_children(conn, parent, lambda lo: lo <= midnight(today))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, now())").format(sql.Identifier(*parent.split("."))))
    return dropped


def fixes_incident(conn: Conn, *, partman: bool, rows: int = 3000, schema: str = "public") -> sql.Identifier:
    """The incident on ``<schema>.fixes`` (daily, UTC): children end four days ago, so the
    DEFAULT holds ``rows`` rows spread over the last three days; managed by pg_partman when asked."""
    today = utc_today(conn)
    if partman:
        parent = native_daily(conn, schema, "fixes", "ts", [], default=False)
        create_parent(conn, f"{schema}.fixes", "ts", "1 day", premake=3,
                      start=midnight(today - timedelta(days=10)).isoformat())
        drop_children(conn, f"{schema}.fixes", lambda lower: lower < midnight(today - timedelta(days=3)))
    else:
        parent = native_daily(conn, schema, "fixes", "ts", [today - timedelta(days=d) for d in range(10, 3, -1)])
    conn.execute(sql.SQL(
        "INSERT INTO {} (ts, payload) SELECT date_trunc('day', now()) - interval '3 days' "
        "+ i * (now() - date_trunc('day', now()) + interval '3 days') / %s, 'outage' FROM generate_series(1, %s) i"
    ).format(parent), (rows + 1, rows))
    conn.execute(sql.SQL("ANALYZE {}").format(parent))
    return parent


def outside_partguard(conn: Conn) -> list[Any]:
    """What a fix that failed must leave as it found it: every relation outside partguard's
    own schema (bounds, constraints, triggers, indexes) and the rows of every table."""
    where = "n.nspname NOT IN ('partguard', 'pg_catalog', 'information_schema', 'pg_toast')"
    shape = conn.execute(f"""
        SELECT n.nspname, c.relname, c.relkind::text, c.relispartition,
               coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
               ARRAY(SELECT conname || ' ' || pg_get_constraintdef(x.oid) || ' ' || convalidated::text
                     FROM pg_constraint x WHERE x.conrelid = c.oid ORDER BY 1),
               ARRAY(SELECT tgname FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal ORDER BY 1)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {where} ORDER BY 1, 2""").fetchall()  # test-only SQL, no names interpolated
    contents = []
    for schema, name, kind, *_ in shape:
        if kind == "r":
            got = conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "
                                       "FROM {} r").format(sql.Identifier(schema, name))).fetchone()
            contents.append((schema, name, got))
    schemas = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname <> 'partguard' ORDER BY 1")]
    return [shape, contents, schemas]


class Background:
    """A loop on its own connection in a thread (a writer, a reader): ``step(conn)`` runs
    until ``stop()``; each error is recorded as its first line, never raised."""

    def __init__(self, dsn: str, pause: float = 0.002) -> None:
        import threading

        self.dsn, self.pause = dsn, pause
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def step(self, conn: Conn) -> None:
        raise NotImplementedError

    def start(self, settle: float = 0.0) -> Any:
        import time

        self._thread.start()
        time.sleep(settle)
        return self

    def _loop(self) -> None:
        import time

        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                try:
                    self.step(c)
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                time.sleep(self.pause)

    def stop(self) -> Any:
        self._stop.set()
        self._thread.join(30)
        return self
