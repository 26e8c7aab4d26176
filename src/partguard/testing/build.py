"""Building partitioned tables and their incidents on a real server: pg_partman-managed
(4.7 or 5.x, through :func:`create_parent`) or native.

The incident, at any grid: children from ``start_back`` intervals ago, none from ``outage``
intervals ago on (maintenance stopped), a DEFAULT for the rows written since
(:func:`make_incident`). Table shapes and rows are the callers'; :func:`partman_incident`,
:func:`native_incident`, :func:`fixes_incident` and :func:`live_incident` are the shapes the
tests, the demo and the benchmarks share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, timedelta
from typing import Any

from psycopg import sql

from .catalog import (
    Conn,
    Kid,
    key_type,
    kids,
    midnight,
    names_of,
    now,
    one,
    partman_major,
    utc_midnight,
    utc_today,
)

DAY = timedelta(days=1)
_UNIT = {"1 hour": "hour", "1 day": "day", "1 month": "month"}
_NATIVE_SUFFIX = {"1 hour": "%Y%m%d_%H%M%S", "1 day": "%Y%m%d", "1 month": "%Y%m%d"}


# --- pg_partman ---------------------------------------------------------------------------


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
    jobmon: bool | None = None,
) -> None:
    """``partman.create_parent`` with keyword arguments valid on 4.7 and 5.x.

    The grid is laid in the session's TimeZone, as partman does; ``tz`` pins it for the call.
    ``jobmon`` is passed as ``p_jobmon`` when given.
    """
    args: list[sql.Composable] = [
        sql.SQL("p_parent_table := {}").format(sql.Literal(parent)),
        sql.SQL("p_control := {}").format(sql.Literal(control)),
        sql.SQL("p_interval := {}").format(sql.Literal(interval)),
        sql.SQL("p_premake := {}").format(sql.Literal(premake)),
    ]
    if start is not None:
        args.append(sql.SQL("p_start_partition := {}").format(sql.Literal(start)))
    if jobmon is not None:
        args.append(sql.SQL("p_jobmon := {}").format(sql.Literal(jobmon)))
    args.extend(version_args(conn))
    with conn.transaction():
        if tz is not None:
            conn.execute("SELECT set_config('TimeZone', %s, true)", (tz,))
        conn.execute(sql.SQL("SELECT partman.create_parent({})").format(sql.SQL(", ").join(args)))


# --- tables and children ------------------------------------------------------------------


def make_table(
    conn: Conn,
    schema: str,
    table: str,
    *,
    key: str = "ts",
    key_type: str = "timestamptz",
    nullable: bool = False,
) -> sql.Identifier:
    """A table like the incident's ``fixes``: an identity GENERATED ALWAYS id, a generated
    STORED column, and indexes on the key and on (device_id, key). ``key='id'`` partitions
    by the identity column itself (partman's id-based sets)."""
    parent = sql.Identifier(schema, table)
    k = sql.Identifier(key)
    key_col = (
        sql.SQL("")
        if key == "id"
        else sql.SQL("{} {}{},").format(
            k, sql.SQL(key_type), sql.SQL("" if nullable else " NOT NULL")
        )
    )
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {parent} (id bigint GENERATED ALWAYS AS IDENTITY, device_id int NOT NULL, {key_col}"
            " payload text, val double precision, val2 double precision GENERATED ALWAYS AS (val * 2) STORED)"
            " PARTITION BY RANGE ({k})"
        ).format(parent=parent, key_col=key_col, k=k)
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(parent, k))
    conn.execute(sql.SQL("CREATE INDEX ON {} (device_id, {})").format(parent, k))
    return parent


def native_children(
    conn: Conn,
    parent: sql.Identifier,
    schema: str,
    bounds: Iterable[tuple[Any, Any, str]],
    *,
    default: str | None,
) -> None:
    """Hand-made children ``(lower, upper, name)`` and, optionally, a DEFAULT."""
    for lo, hi, name in bounds:
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(schema, name), parent, sql.Literal(lo), sql.Literal(hi)
            )
        )
    if default:
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                sql.Identifier(schema, default), parent
            )
        )


def native_daily(
    conn: Conn, schema: str, table: str, key: str, days: Iterable[date], *, default: bool = True
) -> sql.Identifier:
    """A hand-made daily table (no partman): one child per UTC day given, a DEFAULT, an
    index on the key (so the DEFAULT has one too)."""
    parent = sql.Identifier(schema, table)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, {} timestamptz NOT NULL, "
            "payload text) PARTITION BY RANGE ({})"
        ).format(parent, sql.Identifier(key), sql.Identifier(key))
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(parent, sql.Identifier(key)))
    native_children(
        conn,
        parent,
        schema,
        [(midnight(d), midnight(d + DAY), f"{table}_p{d:%Y%m%d}") for d in days],
        default=f"{table}_default" if default else None,
    )
    return parent


def drop_children(conn: Conn, parent: str, doomed: Callable[[Kid], bool]) -> list[str]:
    """Drop the children ``doomed`` picks (how "maintenance stopped" looks afterwards);
    returns their names."""
    schema = names_of(conn, parent)[0]
    gone = []
    for kid in kids(conn, parent):
        if doomed(kid):
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, kid.name)))
            gone.append(kid.name)
    return gone


def set_db_timezone(conn: Conn, zone: str) -> None:
    """The role/database default TimeZone: the zone partman (and so partguard) computes in."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET TimeZone = {}").format(
            sql.Identifier(conn.info.dbname), sql.Literal(zone)
        )
    )


# --- rows ---------------------------------------------------------------------------------


def insert_spread(
    conn: Conn, parent: sql.Identifier, key: str, lo: Any, hi: Any, n: int, tag: str
) -> None:
    """``n`` rows with keys spread evenly over ``[lo, hi)``; payload ``tag-<i>``, val = i.

    The step is in seconds: ``timestamptz + '1 day'`` would follow the wall clock and
    overshoot ``hi`` by the hour a DST change adds."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} (device_id, {k}, payload, val) "
            "SELECT g %% 7, %(lo)s::timestamptz + make_interval(secs => extract(epoch FROM %(hi)s::timestamptz"
            " - %(lo)s::timestamptz) * g / %(n)s),"
            " %(tag)s || '-' || g, g FROM generate_series(0, %(n)s - 1) g"
        ).format(t=parent, k=sql.Identifier(key)),
        {"lo": lo, "hi": hi, "n": n, "tag": tag},
    )


def insert_keys(conn: Conn, parent: sql.Identifier, key: str, keys: list[Any], tag: str) -> None:
    """One row per given key (None for a NULL key)."""
    for i, value in enumerate(keys):
        conn.execute(
            sql.SQL("INSERT INTO {} (device_id, {}, payload, val) VALUES (1, %s, %s, %s)").format(
                parent, sql.Identifier(key)
            ),
            (value, f"{tag}-{i}", -1 - i),
        )


def insert_ids(conn: Conn, parent: sql.Identifier, lo: int, hi: int) -> None:
    """Rows with explicit ids ``lo .. hi-1`` (id is the partition key)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, device_id, payload, val) OVERRIDING SYSTEM VALUE "
            "SELECT g, g %% 7, 'id-' || g, g FROM generate_series(%s, %s - 1) g"
        ).format(parent),
        (lo, hi),
    )


def insert_outage(conn: Conn, rows: int, table: str = "events") -> None:
    """``rows`` more rows, evenly over the two days before today (UTC)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (ts, payload) SELECT %s::timestamptz + g * (interval '2 days' / %s), 'late' "
            "FROM generate_series(0, %s - 1) g"
        ).format(sql.Identifier("public", table)),
        (midnight(utc_today(conn) - DAY * 2), rows, rows),
    )


# --- the incident ---------------------------------------------------------------------------


def intervals_back(interval: str, n: int) -> sql.Composed:
    """SQL: the start of the interval ``n`` intervals before now's (in the session's zone)."""
    return sql.SQL("date_trunc({}, now()) - {} * {}::interval").format(
        sql.Literal(_UNIT[interval]), sql.Literal(n), sql.Literal(interval)
    )


def make_incident(
    conn: Conn,
    parent: str,
    *,
    key: str,
    partman: bool,
    interval: str = "1 day",
    start_back: int = 10,
    outage: int = 3,
    premake: int = 4,
    jobmon: bool | None = None,
    default: bool = True,
) -> Any:
    """The incident's grid on the (empty, partitioned) table ``parent``: children from
    ``start_back`` intervals ago up to the gap ``outage`` intervals ago, none from there on,
    and a DEFAULT (``default=False``: none, native tables only). With ``partman`` the
    children are pg_partman's (``create_parent`` from ``start_back``, then the ones from
    the gap on dropped: maintenance stopped); else hand-made, named ``<table>_p<suffix>``.
    Returns the gap's start, typed like the key."""
    typ = sql.SQL(key_type(conn, parent))
    start, gap = one(
        conn,
        sql.SQL("SELECT ({})::text, ({})::{}").format(
            intervals_back(interval, start_back), intervals_back(interval, outage), typ
        ),
    )
    if partman:
        create_parent(conn, parent, key, interval, premake=premake, start=start, jobmon=jobmon)
        drop_children(conn, parent, lambda k: k.lower >= gap)
        return gap
    schema, table = names_of(conn, parent)
    bounds = [
        one(
            conn,
            sql.SQL("SELECT ({})::{}, ({})::{}").format(
                intervals_back(interval, back), typ, intervals_back(interval, back - 1), typ
            ),
        )
        for back in range(start_back, outage, -1)
    ]
    fmt = _NATIVE_SUFFIX[interval]
    native_children(
        conn,
        sql.Identifier(schema, table),
        schema,
        [(lo, hi, f"{table}_p{lo.strftime(fmt)}") for lo, hi in bounds],
        default=f"{table}_default" if default else None,
    )
    return gap


def partman_incident(
    conn: Conn,
    *,
    schema: str = "public",
    table: str = "fixes",
    interval: str = "1 day",
    outage: int = 3,
    start_back: int = 10,
    n: int = 3000,
    key_type: str = "timestamptz",
) -> tuple[str, Any]:
    """The incident on a :func:`make_table` table: a partman-managed set whose maintenance
    stopped ``outage`` intervals ago, so the DEFAULT holds every row written since (``n``),
    and ``n // 10`` rows before the gap in children. Returns (parent, gap start)."""
    parent = f"{schema}.{table}"
    ident = make_table(conn, schema, table, key_type=key_type)
    gap = make_incident(
        conn,
        parent,
        key="ts",
        partman=True,
        interval=interval,
        start_back=start_back,
        outage=outage,
        jobmon=False,
    )
    earlier = one(conn, sql.SQL("SELECT {}").format(intervals_back(interval, outage + 2)))[0]
    insert_spread(conn, ident, "ts", earlier, gap, n // 10, "before")  # rows already in children
    insert_spread(conn, ident, "ts", gap, now(conn), n, "outage")
    return parent, gap


def native_incident(
    conn: Conn, table: str = "fixes", *, key: str = "ts", default: bool = True
) -> sql.Identifier:
    """A hand-made daily :func:`make_table` set whose children stop 3 days ago, the DEFAULT
    holding the 500 rows written since."""
    ident = make_table(conn, "public", table, key=key)
    make_incident(
        conn, f"public.{table}", key=key, partman=False, start_back=7, outage=3, default=default
    )
    insert_spread(conn, ident, key, utc_midnight(conn, 3), now(conn), 500, "outage")
    return ident


def fixes_incident(
    conn: Conn, *, partman: bool, rows: int = 3000, schema: str = "public"
) -> sql.Identifier:
    """The incident on a :func:`native_daily` ``<schema>.fixes`` (daily, UTC): children end
    three days ago, so the DEFAULT holds ``rows`` rows spread over the last three days;
    managed by pg_partman when asked."""
    parent = native_daily(conn, schema, "fixes", "ts", [], default=False)
    make_incident(conn, f"{schema}.fixes", key="ts", partman=partman, premake=3)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (ts, payload) SELECT date_trunc('day', now()) - interval '3 days' "
            "+ i * (now() - date_trunc('day', now()) + interval '3 days') / %s, 'outage' FROM generate_series(1, %s) i"
        ).format(parent),
        (rows + 1, rows),
    )
    conn.execute(sql.SQL("ANALYZE {}").format(parent))
    return parent


def live_incident(conn: Conn, *, partman: bool, rows: int) -> None:
    """``public.fixes`` the way :func:`partguard.testing.live.fixes_writer` writes it (PK
    (id, received_at), a generated column), daily: children stop 3 days ago and ``rows`` rows
    over the three days since sit in the DEFAULT, ids 1..rows."""
    conn.execute("""
        CREATE TABLE public.fixes (
            id bigint NOT NULL, received_at timestamptz NOT NULL, device_id int NOT NULL, v int,
            speed_kmh real GENERATED ALWAYS AS (v * 3.6) STORED,
            PRIMARY KEY (id, received_at)
        ) PARTITION BY RANGE (received_at);
        CREATE INDEX ON public.fixes (received_at);
        CREATE INDEX ON public.fixes (device_id, received_at);
    """)
    make_incident(conn, "public.fixes", key="received_at", partman=partman, premake=3)
    conn.execute(
        "INSERT INTO public.fixes (id, received_at, device_id, v) "
        "SELECT i, date_trunc('day', now()) - interval '3 days' + (i * interval '3 days' / %s), i %% 50, i "
        "FROM generate_series(1, %s) i",
        (rows, rows),
    )
    conn.execute("ANALYZE public.fixes")


def native_outage(
    conn: Conn, rows: int, *, table: str = "events", default: bool = True
) -> sql.Identifier:
    """``public.<table>``: native daily children up to three days ago and ``rows`` rows spread
    over the two days since, in the DEFAULT (autovacuum off for it: its statistics stay as
    the test leaves them)."""
    today = utc_today(conn)
    parent = native_daily(
        conn,
        "public",
        table,
        "ts",
        [today - timedelta(days=d) for d in range(8, 2, -1)],
        default=default,
    )
    if default:
        conn.execute(
            sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                sql.Identifier("public", f"{table}_default")
            )
        )
    if rows:
        insert_outage(conn, rows, table)
    return parent


def partman_due(conn: Conn, parent: str = "public.fixes") -> list[str]:
    """A daily pg_partman table from three days ago whose future children are gone (its
    maintenance is due) and a row written now (partman 5 premakes from the newest row).
    Returns the names of the children dropped."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)"
        ).format(sql.Identifier(*parent.split(".")))
    )
    today = utc_today(conn)
    create_parent(conn, parent, "ts", "1 day", premake=4, start=str(today - timedelta(days=3)))
    dropped = drop_children(conn, parent, lambda k: k.lower > midnight(today))
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (1, now())").format(sql.Identifier(*parent.split(".")))
    )
    return dropped
