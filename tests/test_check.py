"""``partguard check`` on a real cluster: each test is an incident a DBA would recognise.

The CLI is driven in-process through ``partguard.cli.main`` with captured streams, so the
exit code, stdout and stderr are asserted exactly as a monitoring system would see them.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from partguard.errors import TableNotFound, UnsupportedTable
from partguard.inspect.data import loose_scan_sql, probe
from partguard.inspect.grid import Interval, time_grid
from partguard.sandbox import Sandbox
from partguard.testing.build import create_parent, drop_children, native_daily
from partguard.testing.catalog import children, midnight, partman_major, utc_today

Run = Callable[..., tuple[int, str, str]]


def check_json(run: Run, dsn: str, *args: str) -> tuple[int, dict[str, Any]]:
    rc, out, err = run("check", "-d", dsn, "--format", "json", *args)
    assert err == ""
    return rc, json.loads(out)


def codes(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in doc["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


def events_table(conn: Any, *, start_days_ago: int = 7, premake: int = 4) -> date:
    """app.events, daily children from partman; returns today's UTC date."""
    conn.execute("CREATE SCHEMA app")
    conn.execute(
        "CREATE TABLE app.events (id bigint GENERATED ALWAYS AS IDENTITY, "
        "ts timestamptz NOT NULL, payload text) PARTITION BY RANGE (ts)"
    )
    conn.execute("CREATE INDEX ON app.events (ts)")
    today = utc_today(conn)
    create_parent(
        conn,
        "app.events",
        "ts",
        "1 day",
        premake=premake,
        start=str(today - timedelta(days=start_days_ago)),
    )
    return today


def test_healthy_partman_table_is_ok(run: Run, dsn: str, conn: Any, partman: str) -> None:
    events_table(conn)
    conn.execute(
        "INSERT INTO app.events (ts, payload) SELECT now() - g * interval '1 hour', 'x' "
        "FROM generate_series(0, 48) g"
    )
    rc, out, err = run("check", "-d", dsn)
    assert (rc, err) == (0, "")
    assert out.startswith("partguard check OK: 1 table ")
    assert "app.events" in out and "1 day" in out
    rc, doc = check_json(run, dsn)
    assert (rc, doc["status"], doc["findings"]) == (0, "ok", [])
    (t,) = doc["tables"]
    assert t["grid_source"] == "partman" and t["partman_version"] == partman
    assert t["default_rows"] == 0 and t["runway_seconds"] > 4 * 86400


def test_incident_default_rows_names_exactly_the_missing_buckets(
    run: Run, dsn: str, conn: Any, partman: str
) -> None:
    """Maintenance stopped 3 days ago: no children since, the rows fell into the DEFAULT."""
    today = events_table(conn)
    gone = drop_children(
        conn, "app.events", lambda k: k.lower >= midnight(today - timedelta(days=2))
    )
    assert len(gone) == 7  # today-2 .. today+4
    conn.execute(
        "INSERT INTO app.events (ts, payload) SELECT g, 'late' FROM generate_series("
        "%s::timestamptz, %s::timestamptz, interval '10 minutes') g",
        (midnight(today - timedelta(days=2)), midnight(today) + timedelta(hours=23, minutes=50)),
    )
    rc, doc = check_json(run, dsn, "--exact")
    assert (rc, doc["status"]) == (2, "critical")
    found = codes(doc)
    (f,) = found["default_rows"]
    want = [midnight(today - timedelta(days=d)).isoformat() for d in (2, 1, 0)]
    assert f["severity"] == "critical" and f["table"] == "app.events"
    assert f["detail"]["buckets"] == want and f["detail"]["bucket_count"] == 3
    assert f["detail"]["rows_exact"] == 3 * 144 and f["detail"]["null_rows"] == 0
    assert f["detail"]["used_index"] is True
    label = f"{today - timedelta(days=2)} … {today}"
    assert f["detail"]["bucket_runs"][0]["label"] == label and label in f["message"]
    # The repair command repeats the connection options given: here -d as a conninfo string.
    assert f"partguard fix -d {shlex.quote(dsn)} app.events" in f["message"]
    (rw,) = found["runway"]
    assert rw["severity"] == "critical" and rw["detail"]["current_covered"] is False
    assert rw["detail"]["runway_seconds"] < -2 * 86400  # children ran out two days ago
    assert found["maintenance_stale"][0]["detail"]["source"] == "inferred"
    assert "gap" not in found  # the hole is at the end, not between children


def conninfo_dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]  # type: ignore[return-value]


def test_gap_between_children_is_critical(run: Run, dsn: str, conn: Any, partman: str) -> None:
    today = events_table(conn)
    hole = midnight(today - timedelta(days=3))
    drop_children(conn, "app.events", lambda k: k.lower == hole)
    rc, doc = check_json(run, dsn)
    assert rc == 2
    (gap,) = codes(doc)["gap"]
    assert gap["detail"] == {"from": hole.isoformat(), "to": (hole + timedelta(days=1)).isoformat()}
    assert set(codes(doc)) == {"gap"}
    assert doc["tables"][0]["gaps"] == 1


def test_children_created_at_plus_one_are_misaligned_on_a_utc_grid(
    run: Run, dsn: str, conn: Any, partman: str
) -> None:
    """partman ran once in a UTC+01 session; maintenance runs in UTC (the database default)."""
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.events (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    create_parent(conn, "app.events", "ts", "1 day", tz="Etc/GMT-1")
    rc, doc = check_json(run, dsn)
    assert rc == 2
    (f,) = codes(doc)["misaligned"]
    d = f["detail"]
    assert (d["zone"], d["interval"], d["grid_source"]) == ("UTC", "1 day", "partman")
    assert d["count"] == doc["tables"][0]["children"] > 0  # every child is off by an hour
    assert {c["offset"] for c in d["children"]} == {-3600.0}
    assert d["aligned_zone_label"] == "UTC+01:00" and "UTC+01:00" in f["message"]
    assert '"would overlap"' in f["message"] and "-01:00 off the grid" in f["message"]


def test_orphan_partman_config_is_critical(run: Run, dsn: str, conn: Any, partman: str) -> None:
    events_table(conn)
    conn.execute("CREATE TABLE app.gone (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    create_parent(conn, "app.gone", "ts", "1 day")
    conn.execute("DROP TABLE app.gone")
    rc, doc = check_json(run, dsn)
    assert rc == 2
    (f,) = codes(doc)["orphan_config"]
    assert f["table"] == "app.gone" and f["detail"]["reason"] == "the table does not exist"
    assert "run_maintenance_proc" in f["message"]
    assert "DELETE FROM partman.part_config" in f["message"]
    if partman_major(conn) == 4:  # measured on 4.7.2: what the finding warns about
        with pytest.raises(psycopg.errors.RaiseException, match="app.gone"):
            conn.execute("SELECT partman.run_maintenance()")


def test_short_runway_warns(run: Run, dsn: str, conn: Any, partman: str) -> None:
    today = events_table(conn)
    drop_children(conn, "app.events", lambda k: k.lower >= midnight(today + timedelta(days=3)))
    rc, doc = check_json(run, dsn)
    assert (rc, doc["status"]) == (1, "warning")
    (f,) = codes(doc)["runway"]
    assert f["severity"] == "warning"
    assert (f["detail"]["intervals_ahead"], f["detail"]["premake"]) == (2, 4)
    assert 2 * 86400 < f["detail"]["runway_seconds"] <= 3 * 86400


def test_missing_current_child_is_critical(run: Run, dsn: str, conn: Any, partman: str) -> None:
    today = events_table(conn)
    drop_children(conn, "app.events", lambda k: k.lower >= midnight(today))
    rc, doc = check_json(run, dsn)
    assert rc == 2
    (f,) = codes(doc)["runway"]
    assert f["severity"] == "critical" and "no child for the current interval" in f["message"]
    assert -86400 <= f["detail"]["runway_seconds"] <= 0


def test_integer_range_table(run: Run, dsn: str, conn: Any, partman: str) -> None:
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.items (id bigint NOT NULL, v text) PARTITION BY RANGE (id)")
    conn.execute("CREATE INDEX ON app.items (id)")
    create_parent(conn, "app.items", "id", "1000")
    conn.execute("INSERT INTO app.items SELECT g, 'x' FROM generate_series(1, 900) g")
    rc, doc = check_json(run, dsn)
    assert (rc, doc["findings"]) == (0, [])
    (t,) = doc["tables"]
    assert (t["interval"], t["zone"], t["last_upper"]) == ("1000", None, 5000)
    assert t["runway_ids"] == 5000 - 900
    # A burst of ids far ahead lands in the DEFAULT; its bucket has no child.
    conn.execute("INSERT INTO app.items SELECT g, 'x' FROM generate_series(7500, 7600) g")
    rc, doc = check_json(run, dsn)
    assert rc == 2
    (f,) = codes(doc)["default_rows"]
    assert f["detail"]["buckets"] == [7000] and f["detail"]["min_key"] == 7500
    (rw,) = codes(doc)["runway"]
    assert rw["detail"]["reference"] == 7600 and rw["detail"]["current_covered"] is False


def _dst_changes(zone: str, before: date, count: int) -> list[date]:
    """The last ``count`` days before ``before`` on which ``zone`` changed its UTC offset."""
    tz, d = ZoneInfo(zone), before
    out: list[date] = []
    while len(out) < count:
        a = datetime(d.year, d.month, d.day, tzinfo=tz).utcoffset()
        b = datetime(d.year, d.month, d.day, 23, tzinfo=tz).utcoffset()
        if a != b:
            out.append(d)
        d -= timedelta(days=1)
    return out


def test_berlin_daily_grid_across_dst_is_healthy(
    run: Run, dsn: str, conn: Any, partman: str
) -> None:
    """Days of 23 h and 25 h are on partman's grid when the grid is in Europe/Berlin."""
    dbname = conninfo_dbname(dsn)
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET TimeZone = 'Europe/Berlin'").format(sql.Identifier(dbname))
    )
    changes = _dst_changes("Europe/Berlin", utc_today(conn), 2)
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.events (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    create_parent(
        conn,
        "app.events",
        "ts",
        "1 day",
        start=str(changes[-1] - timedelta(days=3)),
        tz="Europe/Berlin",
    )
    lowers = [lo for _, _, lo in children(conn, "app.events")]
    lengths = {(b - a) for a, b in itertools.pairwise(lowers)}
    assert lengths == {timedelta(hours=23), timedelta(hours=24), timedelta(hours=25)}
    rc, doc = check_json(run, dsn)
    assert (rc, doc["findings"]) == (0, [])
    (t,) = doc["tables"]
    assert (t["zone"], t["misaligned_children"]) == ("Europe/Berlin", 0)
    # The same children judged on a UTC grid (--tz, forced: it contradicts partman's zone) are
    # off it: the zone matters.
    rc, doc = check_json(run, dsn, "--tz", "UTC", "--force-tz")
    assert rc == 2 and codes(doc)["misaligned"][0]["detail"]["aligned_zone"] == "Europe/Berlin"


ODD_SCHEMA, ODD_TABLE, ODD_KEY = 'Odd "Schema" ü', 'My Täble "x"', "Zeit Stempel"


def test_odd_identifiers(run: Run, dsn: str, conn: Any) -> None:
    """Quotes, spaces, capitals and non-ASCII in schema, table and key names."""
    today = utc_today(conn)
    parent = native_daily(
        conn, ODD_SCHEMA, ODD_TABLE, ODD_KEY, [today + timedelta(days=d) for d in range(-1, 6)]
    )
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES (%s), (%s)").format(parent, sql.Identifier(ODD_KEY)),
        (
            midnight(today - timedelta(days=3)) + timedelta(hours=5),
            midnight(today - timedelta(days=2)),
        ),
    )
    quoted = '"Odd ""Schema"" ü"."My Täble ""x"""'
    for args in ((), ("--table", quoted), ("-t", f"{ODD_SCHEMA}.{ODD_TABLE}")):
        rc, doc = check_json(run, dsn, *args)
        assert rc == 2
        (f,) = doc["findings"]
        assert (f["code"], f["table"]) == ("default_rows", f"{ODD_SCHEMA}.{ODD_TABLE}")
        assert f["detail"]["buckets"] == [
            midnight(today - timedelta(days=d)).isoformat() for d in (3, 2)
        ]
        assert f"'{quoted}'" in f["message"]  # a shell-safe, SQL-exact name to paste
        assert doc["tables"][0]["key"] == ODD_KEY
    rc, out, err = run("check", "-d", dsn)
    assert (rc, err) == (2, "") and f"{ODD_SCHEMA}.{ODD_TABLE}" in out


@pytest.mark.parametrize(
    ("ddl", "name", "error"),
    [
        ("CREATE TABLE public.plain (id int)", "public.plain", UnsupportedTable),
        ("CREATE TABLE public.lst (k text) PARTITION BY LIST (k)", "public.lst", UnsupportedTable),
        (None, "public.missing", TableNotFound),
    ],
    ids=["not-partitioned", "list-partitioned", "missing"],
)
def test_named_table_that_cannot_be_checked_is_a_one_line_error(
    run: Run, dsn: str, conn: Any, ddl: str | None, name: str, error: type[Exception]
) -> None:
    if ddl:
        conn.execute(ddl)
    rc, out, err = run("check", "-d", dsn, "--table", name)
    assert rc == error.exit_code  # type: ignore[attr-defined]
    assert rc in (65, 66)
    assert out == "" and err.count("\n") == 1 and err.startswith("partguard: ") and name in err


def test_role_without_read_access_gets_a_one_line_error(run: Run, dsn: str, conn: Any) -> None:
    today = utc_today(conn)
    native_daily(conn, "app", "events", "ts", [today + timedelta(days=d) for d in range(5)])
    role = f"monitor_{conninfo_dbname(dsn)}"  # roles are cluster-wide: one per test database
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        rc, out, err = run("check", "-d", f"{dsn} user={role}")
        assert (rc, out) == (77, "")
        assert err.count("\n") == 1 and "permission denied" in err and "pg_read_all_data" in err
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
        rc, out, err = run("check", "-d", f"{dsn} user={role}")
        assert (rc, err) == (0, "")
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_tables_found_by_scanning_are_judged_or_skipped(run: Run, dsn: str, conn: Any) -> None:
    """List tables are not ours (INFO); a range table without children has no knowable grid."""
    conn.execute("CREATE TABLE public.lst (k text) PARTITION BY LIST (k)")
    rc, doc = check_json(run, dsn)
    assert rc == 0
    assert [(f["code"], f["severity"]) for f in doc["findings"]] == [("unsupported", "info")]
    conn.execute("CREATE TABLE public.bare (ts timestamptz) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE public.bare_default PARTITION OF public.bare DEFAULT")
    rc, doc = check_json(run, dsn)
    assert rc == 3 and codes(doc)["grid_unknown"][0]["table"] == "public.bare"
    rc, doc = check_json(run, dsn, "-t", "public.bare", "--interval", "1 day")
    assert rc == 2 and set(codes(doc)) == {"runway"}  # with a grid it can be judged


def test_wide_child_left_by_instant_fix_is_information(run: Run, dsn: str, conn: Any) -> None:
    today = utc_today(conn)
    days = [today + timedelta(days=d) for d in range(6)]
    parent = native_daily(conn, "app", "events", "ts", days)
    wide = sql.SQL("CREATE TABLE app.events_p_wide PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
    conn.execute(
        wide.format(
            parent, sql.Literal(midnight(today - timedelta(days=3))), sql.Literal(midnight(today))
        )
    )
    rc, doc = check_json(run, dsn)
    assert rc == 0
    (f,) = doc["findings"]
    assert (f["code"], f["severity"], f["detail"]["buckets"]) == ("wide_child", "info", 3)


def test_json_output_matches_the_documented_schema(
    run: Run, dsn: str, conn: Any, partman: str
) -> None:
    today = events_table(conn)
    drop_children(conn, "app.events", lambda k: k.lower >= midnight(today + timedelta(days=2)))
    rc, doc = check_json(run, dsn)
    assert list(doc) == ["status", "exit_code", "server", "tables", "findings"]
    assert (doc["status"], doc["exit_code"]) == ("warning", rc)
    server_types = {
        "version": str,
        "version_num": int,
        "database": str,
        "current_user": str,
        "timezone": str,
        "now": str,
        "max_connections": int,
        "superuser_reserved": int,
        "reserved": int,
        "used": int,
        "available": int,
        "can_use_reserved": bool,
        "reserved_note": str,
        "partman_version": str,
        "in_recovery": bool,
    }
    assert {k: type(v) for k, v in doc["server"].items()} == server_types
    datetime.fromisoformat(doc["server"]["now"])
    (t,) = doc["tables"]
    assert list(t) == [
        "schema",
        "table",
        "status",
        "strategy",
        "key",
        "key_type",
        "interval",
        "zone",
        "grid_source",
        "children",
        "has_default",
        "default_rows",
        "runway_seconds",
        "runway_ids",
        "last_upper",
        "gaps",
        "misaligned_children",
        "last_maintenance",
        "partman_version",
    ]
    assert (t["schema"], t["table"], t["status"], t["children"]) == ("app", "events", "warning", 9)
    assert isinstance(t["runway_seconds"], float)
    assert datetime.fromisoformat(t["last_upper"]) == midnight(today + timedelta(days=2))
    for f in doc["findings"]:
        assert list(f) == ["code", "severity", "table", "message", "detail"]
        assert f["severity"] in ("info", "warning", "critical", "unknown")
        assert isinstance(f["message"], str) and isinstance(f["detail"], dict)
    assert {f["code"] for f in doc["findings"]} == {"runway", "maintenance_stale"}


def test_connections_near_the_limit(make_cluster: Callable[..., Sandbox], run: Run) -> None:
    sb = make_cluster({"max_connections": 10, "superuser_reserved_connections": 3})
    held = [psycopg.connect(sb.dsn()) for _ in range(5)]  # + check's own = 6 of 7
    try:
        rc, doc = check_json(run, sb.dsn())
        (f,) = codes(doc)["connections"]
        assert (rc, f["severity"]) == (1, "warning")
        assert (f["detail"]["used"], f["detail"]["available"]) == (6, 7)
        assert "reserved_connections" in f["message"]
        held.append(psycopg.connect(sb.dsn()))
        rc, doc = check_json(run, sb.dsn())
        assert (rc, codes(doc)["connections"][0]["severity"]) == (2, "critical")
    finally:
        for c in held:
            c.close()


def _plan_nodes(plan: dict[str, Any]) -> list[str]:
    return [plan["Node Type"], *(n for p in plan.get("Plans", []) for n in _plan_nodes(p))]


def test_loose_index_scan_reads_the_index_not_the_default(conn: Any) -> None:
    """200k rows in a DEFAULT: each probe step is one index descent under a Limit."""
    conn.execute("CREATE TABLE public.m (ts timestamptz NOT NULL, v text) PARTITION BY RANGE (ts)")
    conn.execute("CREATE INDEX ON public.m (ts)")
    conn.execute(
        "CREATE TABLE public.m_2030 PARTITION OF public.m "
        "FOR VALUES FROM ('2030-01-01 00:00+00') TO ('2030-02-01 00:00+00')"
    )
    conn.execute("CREATE TABLE public.m_default PARTITION OF public.m DEFAULT")
    days = [1, 2, 3, 6, 10]
    conn.execute(
        "INSERT INTO public.m SELECT timestamptz '2020-01-01 00:00+00' + (d - 1) * interval '1 day'"
        " + (g %% 86400) * interval '1 second', 'x' FROM unnest(%s::int[]) d, "
        "generate_series(1, 40000) g",
        (days,),
    )
    conn.execute("ANALYZE public.m")
    rel = sql.Identifier("public", "m_default")
    plan = conn.execute(
        sql.SQL("EXPLAIN (FORMAT JSON) {}").format(loose_scan_sql(rel, "ts")),
        (datetime(2020, 1, 2, tzinfo=UTC),),
    ).fetchone()[0][0]["Plan"]
    nodes = _plan_nodes(plan)
    assert nodes[0] == "Limit" and nodes[1] in ("Index Only Scan", "Index Scan")
    assert "Seq Scan" not in nodes and "Sort" not in nodes
    grid = time_grid(Interval(days=1), "UTC")
    p = probe(conn, rel, "ts", grid, has_index=True)
    assert p.used_index and not p.truncated and p.rows_exact is None
    assert list(p.buckets) == [datetime(2020, 1, d, tzinfo=UTC) for d in days]
    assert p.rows_estimate == pytest.approx(200_000, rel=0.05)
