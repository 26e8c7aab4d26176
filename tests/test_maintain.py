"""``partguard maintain`` against real clusters: it maintains what it can, and every way
maintenance can fail silently (connection exhaustion, partman's stuck advisory lock, a
locked table, a DEFAULT holding rows) ends in a named failure and a non-zero exit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from partguard.cli import main
from partguard.sandbox import Sandbox
from partguard.testing.build import create_parent, drop_children

Conn = psycopg.Connection[Any]


# --- helpers -------------------------------------------------------------------


def partman_table(conn: Conn, version: str, name: str, premake: int = 4) -> None:
    """A daily pg_partman table ``public.<name>`` with a DEFAULT and a row written now."""
    ident = sql.Identifier("public", name)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)"
        ).format(ident)
    )
    conn.execute(sql.SQL("CREATE INDEX ON {} (ts)").format(ident))
    create_parent(conn, f"public.{name}", "ts", "1 day", premake=premake)  # any partman version
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, now())").format(ident))


def children(conn: Conn, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' ORDER BY 1",
        (f"public.{name}",),
    ).fetchall()
    return [r[0] for r in rows]


def drop_newest(conn: Conn, name: str, n: int) -> list[str]:
    """Pretend maintenance stopped: the newest ``n`` children are gone."""
    kids = children(conn, name)[-n:]
    for kid in kids:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", kid)))
    return kids


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["maintain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    rc, out, _ = run(capsys, *argv, "--format", "json")
    return rc, json.loads(out)


def by_table(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["table"]: t for t in report["tables"]}


# --- the ordinary run and the state table ---------------------------------------------


def test_maintain_recreates_missing_children_and_records_the_run(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_table(conn, partman, "fixes")
    partman_table(conn, partman, "orders")
    dropped = drop_newest(conn, "fixes", 2)

    rc, out, err = run(capsys, "-d", dsn)

    assert rc == 0, out + err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert set(lines) == {"public.fixes", "public.orders"}
    assert lines["public.fixes"].startswith("ok, created 2 children, runway ")
    assert lines["public.orders"].startswith("ok, runway ")
    assert "days" in lines["public.fixes"]
    assert set(dropped) <= set(children(conn, "fixes"))
    run_row = conn.execute(
        "SELECT status, finished_at IS NOT NULL FROM partguard.maintenance_run"
    ).fetchall()
    assert run_row == [("ok", True)]
    rows = conn.execute(
        "SELECT table_name, status FROM partguard.maintenance_table ORDER BY 1"
    ).fetchall()
    assert rows == [("public.fixes", "ok"), ("public.orders", "ok")]


def test_second_successful_run_moves_the_last_success_forward(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from partguard.journal import last_maintenance

    partman_table(conn, partman, "events")
    assert run(capsys, "-d", dsn)[0] == 0
    first = last_maintenance(conn)["public.events"]
    time.sleep(0.05)
    rc, report = run_json(capsys, "-d", dsn, "--table", "public.events")
    assert rc == 0 and report["status_text"] == "ok"
    second = last_maintenance(conn)["public.events"]
    assert second > first
    runs = conn.execute(
        "SELECT run_id, status FROM partguard.maintenance_run ORDER BY run_id"
    ).fetchall()
    assert [r[1] for r in runs] == ["ok", "ok"]
    assert report["run_id"] == runs[-1][0]


# --- connection exhaustion ---------------------------------------------------------------


@pytest.fixture
def full_cluster(
    make_cluster: Callable[..., Sandbox], partman: str
) -> Iterator[tuple[Sandbox, str, list[Conn]]]:
    """A cluster whose every connection slot (superuser_reserved ones included) is held."""
    sb = make_cluster({"max_connections": 5, "superuser_reserved_connections": 1})
    db = sb.create_database("exhausted", partman_version=partman)
    with psycopg.connect(db, autocommit=True) as c:
        partman_table(c, partman, "events")
    held: list[Conn] = []
    while True:
        try:
            held.append(psycopg.connect(sb.dsn(), autocommit=True))
        except psycopg.OperationalError as exc:
            assert "too many clients" in str(exc)
            break
    assert len(held) == 5
    yield sb, db, held
    for c in held:
        c.close()


def test_maintain_waits_for_a_free_connection_slot_then_succeeds(
    full_cluster: tuple[Sandbox, str, list[Conn]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, db, held = full_cluster

    def free_two() -> None:
        time.sleep(3)
        for c in held[:2]:
            c.close()

    threading.Thread(target=free_two, daemon=True).start()
    t0 = time.monotonic()
    rc, report = run_json(capsys, "-d", db, "--retry-for", "60s")
    assert rc == 0, report
    assert time.monotonic() - t0 >= 2.5
    assert report["connect_attempts"] >= 2
    assert by_table(report)["public.events"]["status"] == "ok"
    attempts = [r.getMessage() for r in caplog.records if "connect attempt" in r.getMessage()]
    assert attempts and all("too many clients" in a for a in attempts)


def test_maintain_gives_up_after_retry_for_with_a_clear_message(
    full_cluster: tuple[Sandbox, str, list[Conn]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, db, _ = full_cluster
    t0 = time.monotonic()
    rc, out, err = run(capsys, "-d", db, "--retry-for", "3s")
    assert rc == 2
    assert 2.5 <= time.monotonic() - t0 < 15
    assert out == ""
    assert "maintenance not run" in err and "too many clients" in err and "attempts" in err


# --- pg_partman's stuck advisory lock ------------------------------------------------------


def test_stuck_partman_lock_is_reported_as_failure_naming_the_holder(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_table(conn, partman, "good")
    partman_table(conn, partman, "broken")
    # A row beyond the newest child lands in the DEFAULT: partman would have to create a child
    # over it (refused by maintain, which names the repair).
    conn.execute("UPDATE partman.part_config SET ignore_default_data = false")
    conn.execute("INSERT INTO public.broken VALUES (2, now() + interval '10 days')")
    # A timer's CALL run_maintenance_proc() that died half-way (here: statement_timeout while a
    # long transaction holds the table) keeps the procedure's session lock for as long as its
    # session lives; on every version, every later CALL then does nothing.
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute("BEGIN; LOCK TABLE public.good IN ACCESS EXCLUSIVE MODE")
    stuck = psycopg.connect(dsn, autocommit=True, application_name="old-cron-job")
    stuck.execute("SET statement_timeout = '300ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        stuck.execute("CALL partman.run_maintenance_proc()")
    holder.execute("ROLLBACK")
    holder.close()
    pid = stuck.info.backend_pid
    try:
        rc, report = run_json(capsys, "-d", dsn)
        assert rc == 2
        tables = by_table(report)
        good = tables["public.good"]
        if partman.startswith("4."):
            # 4.x: run_maintenance() takes the same key, so it did nothing either.
            assert good["status"] == "blocked" and good["severity"] == 2
            said = good["message"]
        else:
            # 5.x: run_maintenance(parent) takes another key and works; the leak is reported.
            assert good["status"] == "ok"
            (said,) = [m for m in report["messages"] if "run_maintenance_proc" in m]
            assert report["status_text"] == "critical"
        assert f"pid {pid}" in said and "old-cron-job" in said
        assert f"pg_terminate_backend({pid})" in said
        broken = tables["public.broken"]
        assert broken["status"] == "refused"
        assert "partguard fix -d " in broken["message"] and "public.broken" in broken["message"]
        recorded = dict(
            conn.execute("SELECT table_name, status FROM partguard.maintenance_table").fetchall()
        )
        assert recorded == {"public.good": good["status"], "public.broken": "refused"}
        # check (and so metrics and alerts) sees the leak too, before anyone runs maintain.
        rc, doc, _ = check_json(capsys, dsn)
        (leak,) = [f for f in doc["findings"] if f["code"] == "partman_lock_stuck"]
        assert rc == 2 and leak["severity"] == "critical" and leak["detail"]["pid"] == pid
    finally:
        stuck.close()
    # Once the holder is gone the same run succeeds: the lock was the whole problem.
    rc, report = run_json(capsys, "-d", dsn, "--table", "public.good")
    assert (
        rc == 0 and by_table(report)["public.good"]["status"] == "ok" and report["messages"] == []
    )


def test_partman_skipping_a_set_with_a_warning_is_a_failure(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """5.5 catches a set's error, sets maintenance_last_run NULL and raises only a WARNING; older
    versions raise. Either way maintain says failed, exits 2 and records no success."""
    partman_table(conn, partman, "skipped")
    drop_newest(conn, "skipped", 2)
    (template,) = conn.execute("SELECT template_table FROM partman.part_config").fetchone()  # type: ignore[misc]
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(*template.split("."))))
    rc, report = run_json(capsys, "-d", dsn)
    t = by_table(report)["public.skipped"]
    assert rc == 2 and t["status"] == "failed" and t["severity"] == 2, t
    assert "\n" not in t["message"] and template in t["message"]
    if partman == "5.5.0":
        assert "skipped partition set" in t["message"]
    recorded = conn.execute("SELECT status FROM partguard.maintenance_table").fetchall()
    assert recorded == [("failed",)]
    # check does not see a fresh success either: no maintenance is recorded as done.
    rc, out, _ = check_json(capsys, dsn)
    assert rc >= 1  # the runway is short: partman made nothing
    (tbl,) = [x for x in out["tables"] if x["table"] == "skipped"]
    assert tbl["last_maintenance"] is None


def check_json(capsys: pytest.CaptureFixture[str], dsn: str) -> tuple[int, dict[str, Any], str]:
    rc = main(["check", "-d", dsn, "--format", "json"])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


# --- lock contention ----------------------------------------------------------------


def test_locked_table_times_out_and_the_others_are_still_maintained(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_table(conn, partman, "a_locked")
    partman_table(conn, partman, "b_free")
    drop_newest(conn, "b_free", 2)
    locker = psycopg.connect(dsn, application_name="long-migration")
    locker.execute("LOCK TABLE public.a_locked IN ACCESS EXCLUSIVE MODE")
    locker_pid = locker.info.backend_pid
    try:
        t0 = time.monotonic()
        rc, out, err = run(capsys, "-d", dsn, "--lock-timeout", "1s", "--lock-retries", "1")
        assert time.monotonic() - t0 < 20
    finally:
        locker.rollback()
        locker.close()
    assert rc == 2, out + err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["public.b_free"].startswith("ok, created 2 children")
    blocked = lines["public.a_locked"]
    assert blocked.startswith("critical (failed)")
    assert "lock not granted within 1s" in blocked
    assert f"pid {locker_pid}" in blocked and "long-migration" in blocked


def test_connection_lost_mid_run_reconnects_and_finishes(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_table(conn, partman, "a_first")
    partman_table(conn, partman, "b_second")
    drop_newest(conn, "b_second", 1)
    locker = psycopg.connect(dsn)
    locker.execute("LOCK TABLE public.a_first IN ACCESS EXCLUSIVE MODE")

    def kill_waiting_maintainer() -> None:
        """Terminate partguard's backend while it waits on the lock, then let go of it."""
        with psycopg.connect(dsn, autocommit=True) as admin:
            for _ in range(200):
                row = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'partguard maintain' AND wait_event_type = 'Lock'"
                ).fetchone()
                if row:
                    break
                time.sleep(0.05)
        locker.rollback()

    threading.Thread(target=kill_waiting_maintainer, daemon=True).start()
    try:
        rc, report = run_json(capsys, "-d", dsn, "--lock-timeout", "10s")
    finally:
        locker.close()
    assert rc == 0, report
    assert report["connect_attempts"] == 2
    tables = by_table(report)
    assert tables["public.a_first"]["status"] == "ok"
    assert len(tables["public.b_second"]["created"]) == 1


# --- native premaking from partguard.toml ----------------------------------------------------


NATIVE = 'public."Native Ev"'


def native_table(conn: Conn) -> None:
    conn.execute(
        'CREATE TABLE public."Native Ev" (id bigint, "At" timestamptz NOT NULL) PARTITION BY RANGE ("At")'
    )
    conn.execute('CREATE TABLE public."Native Ev_default" PARTITION OF public."Native Ev" DEFAULT')
    conn.execute('CREATE INDEX ON public."Native Ev" ("At")')


def write_config(tmp_path: Path, premake: int = 3) -> str:
    path = tmp_path / "partguard.toml"
    path.write_text(
        "[[table]]\n"
        f"name = '{NATIVE}'\n"
        'interval = "1 day"\n'
        f"premake = {premake}\n"
        'tz = "Europe/Berlin"\n'
        'naming = "{parent}_p{YYYYMMDD}"\n'
    )
    return str(path)


def native_children(conn: Conn) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass "
        "AND NOT c.relname LIKE '%%default' ORDER BY 1",
        (NATIVE,),
    ).fetchall()


def test_native_premaking_creates_berlin_days_named_from_the_config(
    dsn: str, conn: Conn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    native_table(conn)
    config = write_config(tmp_path)
    rc, out, err = run(capsys, "-d", dsn, "--config", config)
    assert rc == 0, out + err
    assert out.startswith("public.Native Ev: ok, created 4 children, runway 3 days")
    kids = native_children(conn)
    berlin_today = conn.execute("SELECT (now() AT TIME ZONE 'Europe/Berlin')::date").fetchone()[0]  # type: ignore[index]
    assert kids[0][0] == f"Native Ev_p{berlin_today:%Y%m%d}"
    for _, bound in kids:  # Berlin midnight, whatever the season (+01 or +02)
        assert " 23:00:00+00" in bound or " 22:00:00+00" in bound
    # Idempotent: a second run finds nothing to do and still records a success.
    rc, out, _ = run(capsys, "-d", dsn, "--config", config)
    assert rc == 0 and "created" not in out
    assert native_children(conn) == kids
    last = conn.execute(
        "SELECT count(*) FROM partguard.maintenance_table WHERE status = 'ok'"
    ).fetchone()
    assert last == (2,)


def test_native_premaking_refuses_a_range_the_default_holds_rows_of(
    dsn: str, conn: Conn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    native_table(conn)
    conn.execute("INSERT INTO public.\"Native Ev\" VALUES (1, now() + interval '2 days')")
    rc, out, err = run(capsys, "-d", dsn, "--config", write_config(tmp_path))
    assert rc == 2, out + err
    line = out.strip()
    assert line.startswith("public.Native Ev: critical (refused), created 2 children")
    assert "the DEFAULT holds rows" in line
    assert "partguard fix -d " in line and "Native Ev" in line
    # Today and tomorrow exist; nothing at or after the day holding the row.
    assert len(native_children(conn)) == 2
    where = conn.execute('SELECT tableoid::regclass::text FROM public."Native Ev"').fetchall()
    assert where == [('"Native Ev_default"',)]


def test_premake_plan_probes_the_default_before_each_create(dsn: str, conn: Conn) -> None:
    """The plan's EXISTS probe finds rows even when the snapshot did not know of them, and
    the CREATE it guards would indeed fail (after scanning the DEFAULT under lock)."""
    from dataclasses import replace
    from datetime import timedelta

    from partguard.db import session_timezone
    from partguard.inspect.catalog import read_tables
    from partguard.inspect.snapshot import Options, read_server, table_state
    from partguard.plan.premake import plan_premake

    native_table(conn)
    conn.execute("INSERT INTO public.\"Native Ev\" VALUES (1, now() + interval '1 day')")
    server = read_server(conn)
    (table,) = read_tables(conn, [NATIVE])
    state = table_state(conn, server, table, None, Options(interval="1 day", tz="UTC"))
    blind = replace(state, default_probe=None)
    plan = plan_premake(blind, 2, server.now, session_timezone(conn))
    assert plan.refused is None and len(plan.steps) == 3
    tomorrow = plan.steps[1]
    assert tomorrow.upper - tomorrow.lower == timedelta(days=1)  # type: ignore[operator]
    assert tomorrow.probe is not None
    assert [conn.execute(s.probe).fetchone()[0] for s in plan.steps if s.probe] == [
        False,
        True,
        False,
    ]  # type: ignore[index]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(tomorrow.create)


# --- partman's own errors, and the repair --------------------------------------------------


def test_partman_error_is_surfaced_with_the_statement_it_failed_on(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_table(conn, partman, "tmpl")
    drop_newest(conn, "tmpl", 1)
    (template,) = conn.execute("SELECT template_table FROM partman.part_config").fetchone()  # type: ignore[misc]
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(*template.split("."))))
    rc, report = run_json(capsys, "-d", dsn)
    assert rc == 2
    t = by_table(report)["public.tmpl"]
    assert t["status"] == "failed"
    assert template in t["message"] and "while running" in t["message"]
    assert "CONTEXT" in t["detail"] and "run_maintenance" in t["detail"]
    assert t["runway"] is not None  # judged from what was read before the failure


def incident(conn: Conn, partman: str, name: str) -> None:
    """Maintenance stopped two days ago and the last day and a half of rows fell into the DEFAULT."""
    partman_table(conn, partman, name)
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("public", name)))
    # The day the first row falls on (yesterday from 06:00 on, the day before in the hours
    # before): every child from there on goes, so all 1000 rows land in the DEFAULT.
    cutoff = conn.execute("SELECT date_trunc('day', now() - interval '30 hours')").fetchone()[0]  # type: ignore[index]
    drop_children(conn, f"public.{name}", lambda k: k.lower >= cutoff)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g, %s::timestamptz + g * interval '1 minute' "
            "FROM generate_series(1, 1000) g"
        ).format(sql.Identifier("public", name)),
        (cutoff,),  # yesterday from midnight on: ~17 hours, all in the DEFAULT at any hour
    )


def test_default_with_rows_is_critical_and_fix_default_repairs_it(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    incident(conn, partman, "inc")
    rc, out, _ = run(capsys, "-d", dsn)
    assert rc == 2
    assert out.startswith("public.inc: critical (refused)")
    assert "partguard fix -d " in out and " public.inc" in out
    assert conn.execute("SELECT count(*) FROM ONLY public.inc_default").fetchone() == (1000,)

    rc, report = run_json(capsys, "-d", dsn, "--fix-default")
    assert rc == 0, report
    t = by_table(report)["public.inc"]
    assert t["fixed"] and t["status"] == "ok" and "repaired" in t["message"]
    assert conn.execute("SELECT count(*) FROM public.inc").fetchone() == (1000,)
    assert conn.execute("SELECT count(*) FROM ONLY public.inc_default").fetchone() == (0,)
    assert run(capsys, "-d", dsn)[0] == 0


# --- partguard.toml ----------------------------------------------------------------------


def test_example_config_parses_with_defaults_applied() -> None:
    from partguard.config import load

    example = Path(__file__).parents[1] / "docs" / "partguard.toml.example"
    cfg = load(example)
    specs = {s.name: s for s in cfg.tables}
    assert set(specs) == {"public.events", "public.measurements", "public.orders"}
    assert specs["public.events"].tz == "Europe/Berlin" and specs["public.events"].premake == 4
    assert (
        specs["public.measurements"].interval == "1000000"
        and specs["public.measurements"].tz == "UTC"
    )
    assert specs["public.orders"].interval is None  # partman's: only tz is taken


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[[table]]\nname = "a.b"\ninterval = "1 day"\npremak = 3\n', "unknown key(s) premak"),
        ('[[table]]\nname = "a.b"\ninterval = "1 day"\ntz = "Mars/Olympus"\n', "unknown time zone"),
        ('[[table]]\nname = "a.b"\ninterval = "1 fortnight"\n', "invalid interval"),
        (
            '[[table]]\nname = "a.b"\ninterval = "1 day"\nnaming = "p_YYYYMMDD"\n',
            "naming must look like",
        ),
        (
            '[[table]]\nname = "a.b"\ninterval = "1 day"\npremake = 0\n',
            "premake must be a positive",
        ),
        ('[defaults]\ninterval = "1 day"\n', "unknown key(s) interval"),
        ('[table]\nname = "a.b"\n', "use [[table]]"),
    ],
)
def test_config_mistakes_are_usage_errors_naming_the_entry(text: str, complaint: str) -> None:
    from partguard.config import parse
    from partguard.errors import UsageError

    with pytest.raises(UsageError) as info:
        parse(text, "x.toml")
    assert complaint in str(info.value) and "x.toml" in str(info.value)


def test_config_entry_for_a_missing_table_is_a_warning_not_a_stop(
    dsn: str, conn: Conn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    native_table(conn)
    path = Path(write_config(tmp_path))
    path.write_text(path.read_text() + '\n[[table]]\nname = "public.nope"\ninterval = "1 day"\n')
    rc, out, _ = run(capsys, "-d", dsn, "--config", str(path))
    assert rc == 1
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["public.Native Ev"].startswith("ok, created 4 children")
    assert (
        lines["public.nope"]
        == "warning (skipped), partguard.toml names public.nope, which does not exist"
    )


def test_partman_computes_in_the_roles_time_zone_not_partguards_utc(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """partguard's sessions run in UTC; partman's boundaries must still be Berlin midnights
    (the zone a plain ``psql -c 'CALL run_maintenance_proc()'`` would have used)."""
    db = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET TimeZone = 'Europe/Berlin'").format(sql.Identifier(db))
    )
    with psycopg.connect(dsn, autocommit=True) as berlin:
        partman_table(berlin, partman, "local")
        drop_newest(berlin, "local", 2)
    rc, out, err = run(capsys, "-d", dsn)
    assert rc == 0, out + err
    assert out.startswith("public.local: ok, created 2 children")
    bounds = conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'public.local'::regclass AND c.relname NOT LIKE '%default'"
    ).fetchall()
    assert bounds and all(" 22:00:00+00" in b or " 23:00:00+00" in b for (b,) in bounds)
