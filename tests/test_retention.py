"""Native retention (``partguard.toml`` ``retention``) and pg_partman's, on a real cluster.

The scenario: daily children backdated 40 days, with one wide child (five days, as ``fix
--strategy instant`` leaves an outage span) straddling the 30-day window's edge. partguard
retires only children whose upper bound has left the window, so the wide child and its rows
survive; pg_partman's start + interval rule drops it, which ``check`` warns about first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from partguard.commands.retention import apply_retention
from partguard.config import parse
from partguard.db import connect
from partguard.errors import UsageError
from partguard.inspect.catalog import read_tables
from partguard.inspect.snapshot import Options, read_server, table_state
from partguard.testing.build import create_parent, native_daily
from partguard.testing.catalog import midnight, utc_today

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]
TABLE = 'app."Ev Log"'
WIDE = range(-33, -28)  # the days the wide child covers: it ends at day -28, inside the window


def backdated(conn: Conn, *, default: bool = True) -> date:
    """Children for days -40 … +4 (UTC), days -33 … -29 as one wide child; a row in each child
    at noon, and one in the wide child an hour before its end (inside the window)."""
    today = utc_today(conn)
    days = [today + timedelta(days=k) for k in range(-40, 5) if k not in WIDE]
    parent = native_daily(conn, "app", "Ev Log", "at", days, default=default)
    lo, hi = today + timedelta(days=WIDE[0]), today + timedelta(days=WIDE[-1] + 1)
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("app", f"Ev Log_p{lo:%Y%m%d}"),
            parent,
            sql.Literal(midnight(lo)),
            sql.Literal(midnight(hi)),
        )
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (at, payload) SELECT d + interval '12 hours', 'noon' "
            "FROM generate_series({}::timestamptz, {}::timestamptz, '1 day') d"
        ).format(
            parent,
            sql.Literal(midnight(today - timedelta(days=40))),
            sql.Literal(midnight(today + timedelta(days=4))),
        )
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (at, payload) VALUES ({}::timestamptz - interval '1 hour', 'late')"
        ).format(parent, sql.Literal(midnight(hi)))
    )
    return today


def config(tmp_path: Path, mode: str = "detach", extra: str = "") -> str:
    path = tmp_path / "partguard.toml"
    path.write_text(f"""[[table]]
name = '{TABLE}'
interval = "1 day"
premake = 4
retention = "30 days"
retention_mode = "{mode}"
{extra}""")
    return str(path)


def attached(conn: Conn) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY 1",
            (TABLE,),
        )
    ]


def plain_tables(conn: Conn) -> list[str]:
    """Tables in schema app that are neither partitioned nor a partition: detached children."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' "
            "AND NOT relispartition ORDER BY 1"
        )
    ]


def maintain(run: Run, dsn: str, cfg: str, *extra: str) -> tuple[int, dict[str, Any]]:
    rc, out, _ = run("maintain", "-d", dsn, "--config", cfg, "--format", "json", *extra)
    return rc, json.loads(out)


def old_names(today: date) -> list[str]:
    """The daily children whose upper bound is more than 30 days ago: days -40 … -34."""
    return [f"Ev Log_p{today + timedelta(days=k):%Y%m%d}" for k in range(-40, -33)]


def test_detach_retires_only_children_past_the_window_and_keeps_the_wide_one(
    dsn: str, conn: Conn, run: Run, tmp_path: Path
) -> None:
    today = backdated(conn)  # with a DEFAULT: the plain DETACH under lock_timeout
    rows_before = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(TABLE))
    ).fetchone()[0]  # type: ignore[index]
    rc, doc = maintain(run, dsn, config(tmp_path))
    (t,) = doc["tables"]
    assert rc == 0, t
    gone = old_names(today)
    assert t["retired"] == [f"app.{n}" for n in gone]
    assert "retention 30 days: detached 7 children" in t["message"]
    kids = attached(conn)
    assert not set(gone) & set(kids)
    wide = f"Ev Log_p{today + timedelta(days=WIDE[0]):%Y%m%d}"
    assert wide in kids  # its lower bound left the window 33 days ago; its upper has not
    # Detached, not dropped: each old child is a plain table with its row.
    assert plain_tables(conn) == sorted(gone)
    for name in gone:
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("app", name))
        ).fetchone() == (1,)
    left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(TABLE))).fetchone()[0]  # type: ignore[index]
    assert left == rows_before - 7
    late = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE payload = 'late'").format(sql.SQL(TABLE))
    ).fetchone()
    assert late == (1,)
    rc, out, err = run("check", "-d", dsn, "-t", TABLE)
    assert rc == 0, out + err  # no gap was left behind
    # Idempotent: nothing more to retire.
    rc, doc = maintain(run, dsn, config(tmp_path))
    assert (rc, doc["tables"][0]["retired"]) == (0, [])


def test_drop_mode_without_default_detaches_concurrently_then_drops(
    dsn: str, conn: Conn, run: Run, tmp_path: Path
) -> None:
    today = backdated(conn, default=False)
    cfg = config(tmp_path, "drop")
    rc, out, err = run("maintain", "-d", dsn, "--config", cfg, "--dry-run")
    assert rc == 0 and err == ""
    gone = old_names(today)
    for name in gone:
        assert f'ALTER TABLE "app"."Ev Log" DETACH PARTITION "app"."{name}" CONCURRENTLY;' in out
        assert f'DROP TABLE "app"."{name}";' in out
    rc, doc = maintain(run, dsn, cfg)
    assert rc == 0, doc
    assert doc["tables"][0]["retired"] == [f"app.{n}" for n in gone]
    assert plain_tables(conn) == []  # dropped, not left behind
    assert len(attached(conn)) == 45 - 7 - 5 + 1


def test_interrupted_concurrent_detach_is_finalized_by_the_next_run(
    dsn: str, conn: Conn, run: Run, tmp_path: Path
) -> None:
    today = backdated(conn, default=False)
    cfg = config(tmp_path)
    with psycopg.connect(dsn) as reader:  # a long report: its snapshot still sees the old child
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(TABLE)))
        rc, doc = maintain(run, dsn, cfg, "--lock-timeout", "500ms", "--lock-retries", "0")
        (t,) = doc["tables"]
        assert (rc, t["retired"]) == (2, [])
        oldest = old_names(today)[0]
        assert (
            f"retention stopped at {oldest}: " in t["message"]
            and "lock not granted" in t["message"]
        )
        assert "pid" in t["message"]  # the blocking reader is named
        pending = conn.execute(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass",
            (f'app."{oldest}"',),
        ).fetchone()
        assert pending == (True,)  # the first half committed: writes no longer route to it
    rc, doc = maintain(run, dsn, cfg)
    assert (rc, doc["tables"][0]["retired"]) == (0, [f"app.{n}" for n in old_names(today)])
    assert plain_tables(conn) == sorted(old_names(today))


def test_retention_stops_at_a_child_it_cannot_prove_is_the_tables_own(
    dsn: str, conn: Conn, run: Run, tmp_path: Path
) -> None:
    today = backdated(conn)
    old = today - timedelta(days=41)
    conn.execute(
        sql.SQL(
            "CREATE TABLE app.archive_2020 PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
        ).format(
            sql.SQL(TABLE),
            sql.Literal(midnight(old)),
            sql.Literal(midnight(old + timedelta(days=1))),
        )
    )
    before = attached(conn)
    rc, out, err = run("maintain", "-d", dsn, "--config", config(tmp_path))
    assert rc == 1, out + err
    assert (
        f"retention stops at archive_2020 (its name does not follow the table's pattern "
        f"(expected Ev Log_p{old:%Y%m%d})), and keeps the 7 children out of the window behind it"
    ) in out
    assert attached(conn) == before  # nothing retired: no gap may open behind the stranger


def test_a_child_holding_rows_inside_the_window_is_refused(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """The guard reads each child's largest key before it goes: a plan made from a stale picture
    (here the oldest child replaced by a restored table with recent rows) is refused."""
    today = backdated(conn)
    spec = parse(Path(config(tmp_path)).read_text()).tables[0]
    with connect(dsn) as c:
        server = read_server(c)
        (table,) = read_tables(c, [TABLE])
        state = table_state(c, server, table, None, Options(interval="1 day"))
        oldest = old_names(today)[0]
        c.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.SQL(TABLE), sql.Identifier("app", oldest)
            )
        )
        c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("app", oldest)))
        c.execute(
            sql.SQL("CREATE TABLE {} AS SELECT now() - interval '1 day' AS at").format(
                sql.Identifier("app", oldest)
            )
        )
        got = apply_retention(c, state, spec, server, "UTC", lock_timeout=1, retries=0)
    assert got.retired == () and got.severity == 2
    assert got.message.startswith(f"refusing to detach {oldest}: it holds rows up to ")
    assert "inside the retention window (from " in got.message
    assert len(attached(conn)) == 45 - 5 + 1 - 1 + 1  # the rest untouched, DEFAULT included


def test_dry_run_lists_what_would_go_and_changes_nothing(
    dsn: str, conn: Conn, run: Run, tmp_path: Path
) -> None:
    today = backdated(conn)
    before = attached(conn)
    rc, out, err = run("maintain", "-d", dsn, "--config", config(tmp_path), "--dry-run")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    detaches = [ln for ln in lines if "DETACH PARTITION" in ln]
    assert detaches == [
        f'ALTER TABLE "app"."Ev Log" DETACH PARTITION "app"."{n}";' for n in old_names(today)
    ]
    assert not any("DROP TABLE" in ln for ln in lines)  # detach mode
    assert '-- app."Ev Log": retention 30 days (detach), children ending at or before' in out
    assert attached(conn) == before


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ('retention = "30 days"', "retention needs an interval"),
        ('interval = "1 day"\nretention = 1000', "not of one kind"),
        ('interval = "1 day"\nretention = "forever"', "retention: invalid interval"),
        (
            'interval = "1 day"\nretention = "30 days"\nretention_mode = "purge"',
            'must be "detach" or "drop"',
        ),
    ],
)
def test_retention_mistakes_are_usage_errors(entry: str, complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        parse(f"[[table]]\nname = 'app.t'\n{entry}\n")


def test_check_warns_before_partman_retention_drops_a_wide_child_with_rows_in_the_window(
    dsn: str, conn: Conn, run: Run, partman: str
) -> None:
    today = utc_today(conn)
    conn.execute("CREATE SCHEMA app")
    conn.execute(
        "CREATE TABLE app.fixes (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at)"
    )
    conn.execute("CREATE INDEX ON app.fixes (at)")
    create_parent(conn, "app.fixes", "at", "1 day", start=str(today - timedelta(days=10)))
    lo, hi = today - timedelta(days=7), today - timedelta(days=3)
    for k in range(
        -7, -3
    ):  # the outage days become one wide child, as fix --strategy instant leaves them
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'app.fixes'::regclass AND pg_get_expr(c.relpartbound, c.oid) LIKE %s",
            (f"%FROM ('{today + timedelta(days=k)}%",),
        ).fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("app", name)))
    wide = f"fixes_p{lo:%Y%m%d}" if partman.startswith("5") else f"fixes_p{lo:%Y_%m_%d}"
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF app.fixes FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("app", wide), sql.Literal(midnight(lo)), sql.Literal(midnight(hi))
        )
    )
    conn.execute(
        "INSERT INTO app.fixes VALUES (1, %s), (2, %s)",
        (midnight(lo), midnight(hi) - timedelta(seconds=1)),
    )
    # retention_keep_table defaults to true (partman only detaches); false drops: the worst case.
    conn.execute(
        "UPDATE partman.part_config SET retention = '4 days', retention_keep_table = false "
        "WHERE parent_table = 'app.fixes'"
    )

    # maintain (partman's run through partguard) holds retention back for the wide child only,
    # inside its own transaction: the child and its in-window row survive, the config is intact.
    rc, out, err = run("maintain", "-d", dsn, "-t", "app.fixes", "--format", "json")
    (t,) = json.loads(out)["tables"]
    assert rc == 1 and t["status"] == "ok" and t["severity"] == 1, (t, err)
    assert (
        "retention held back" in t["message"]
        and wide in t["message"]
        and "partguard split" in t["message"]
    )
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"app.{wide}",)).fetchone() == (
        True,
    )
    assert conn.execute("SELECT count(*) FROM app.fixes WHERE id = 2").fetchone() == (1,)
    assert conn.execute(
        "SELECT retention FROM partman.part_config WHERE parent_table = 'app.fixes'"
    ).fetchone() == ("4 days",)

    rc, out, err = run("check", "-d", dsn, "-t", "app.fixes", "--format", "json")
    assert err == ""
    doc = json.loads(out)
    (f,) = [f for f in doc["findings"] if f["code"] == "partman_retention"]
    assert (rc, f["severity"], f["detail"]["child"], f["detail"]["action"]) == (
        1,
        "warning",
        wide,
        "drop",
    )
    assert f"pg_partman's retention (4 days) will drop {wide} at its next run" in f["message"]
    assert (
        f"the child's end to be {lo + timedelta(days=1)} (start + 1 day), but the child spans to {hi}"
        in f["message"]
    )
    assert "SET retention_keep_table = true WHERE parent_table = 'app.fixes'" in f["message"]
    # The older daily children partman drops too hold nothing inside the window: no finding.
    assert len([f for f in doc["findings"] if f["code"] == "partman_retention"]) == 1

    # What check foretold: partman's own retention drops the wide child and its in-window row.
    conn.execute("SELECT partman.run_maintenance('app.fixes')")
    assert conn.execute("SELECT to_regclass(%s)", (f"app.{wide}",)).fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM app.fixes WHERE id = 2").fetchone() == (0,)


def test_integer_keys_keep_the_ids_within_retention_of_the_largest(
    dsn: str, conn: Conn, run: Run, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE public.readings (id bigint NOT NULL, v int) PARTITION BY RANGE (id)")
    for lo in range(0, 11000, 1000):
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} PARTITION OF public.readings FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier("public", f"readings_p{lo}"), sql.Literal(lo), sql.Literal(lo + 1000)
            )
        )
    conn.execute("INSERT INTO public.readings SELECT i, 0 FROM generate_series(1, 10500) i")
    cfg = tmp_path / "partguard.toml"
    cfg.write_text(
        '[[table]]\nname = "public.readings"\ninterval = 1000\npremake = 1\n'
        'retention = 5000\nretention_mode = "drop"\n'
    )
    rc, out, _ = run("maintain", "-d", dsn, "--config", str(cfg), "--format", "json")
    (t,) = json.loads(out)["tables"]
    assert rc == 0, t
    # Largest id 10500: ids from 5500 on are inside the window, so [5000, 6000) stays.
    assert t["retired"] == [f"public.readings_p{lo}" for lo in range(0, 5000, 1000)]
    assert conn.execute("SELECT min(id) FROM public.readings").fetchone() == (5000,)
