"""Numbers and advice partguard prints must be true: row counts with stale statistics, the
copy rate after a resume, where rows go without a DEFAULT, repair commands that reach the
same server, and no ``fix`` suggested for a table fix refuses."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from partguard.inspect.data import COUNT_CAP, RowCount, estimate_rows
from partguard.testing.build import insert_outage, native_outage, partman_due
from partguard.testing.catalog import utc_today

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]


def check_json(run: Run, *args: str) -> tuple[int, dict[str, Any]]:
    rc, out, err = run("check", "--format", "json", *args)
    assert err == ""
    return rc, json.loads(out)


def finding(doc: dict[str, Any], code: str) -> dict[str, Any]:
    (f,) = [f for f in doc["findings"] if f["code"] == code]
    return f


def connection_args(dsn: str) -> list[str]:
    d = conninfo_to_dict(dsn)
    return [
        "-d",
        str(d["dbname"]),
        "-h",
        str(d["host"]),
        "-p",
        str(d["port"]),
        "-U",
        str(d["user"]),
    ]


# --- (a) the DEFAULT's row count when the statistics say nothing ------------------------------


def test_never_analysed_default_is_counted_not_guessed(run: Run, dsn: str, conn: Conn) -> None:
    native_outage(conn, 20_000)
    assert conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'public.events_default'::regclass"
    ).fetchone() == (-1,)
    rc, doc = check_json(run, "-d", dsn)
    f = finding(doc, "default_rows")
    assert (
        rc == 2 and f["detail"]["rows_estimate"] == 20_000 and f["detail"]["rows_exact"] == 20_000
    )
    assert "holds 20000 rows;" in f["message"]
    (table,) = doc["tables"]
    assert table["default_rows"] == 20_000

    # Analysed while empty (reltuples 0, the DEFAULT's state before an outage), then filled.
    conn.execute("TRUNCATE public.events_default")
    conn.execute("ANALYZE public.events_default")
    insert_outage(conn, 20_000)
    assert conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'public.events_default'::regclass"
    ).fetchone() == (0,)
    rc, doc = check_json(run, "-d", dsn)
    assert finding(doc, "default_rows")["detail"]["rows_estimate"] == 20_000


def test_stale_positive_statistics_are_scaled_to_the_current_size(
    run: Run, dsn: str, conn: Conn
) -> None:
    native_outage(conn, 1_000)
    conn.execute("ANALYZE public.events_default")
    insert_outage(conn, 19_000)  # the statistics still say 1000
    rc, doc = check_json(run, "-d", dsn)
    f = finding(doc, "default_rows")
    assert rc == 2
    assert f["detail"]["rows_exact"] is None and f["message"].count("(estimate)") == 1
    assert f["detail"]["rows_estimate"] == pytest.approx(20_000, rel=0.1)


def test_a_count_past_the_cap_says_at_least(run: Run, dsn: str, conn: Conn) -> None:
    native_outage(conn, COUNT_CAP + 500)
    rc, doc = check_json(run, "-d", dsn)
    f = finding(doc, "default_rows")
    assert rc == 2
    assert f["detail"]["rows_estimate"] == COUNT_CAP and f["detail"]["rows_at_least"] is True
    assert f["detail"]["rows_exact"] is None
    assert (
        f"holds at least {COUNT_CAP} rows (counted up to {COUNT_CAP}: its statistics are stale"
        in f["message"]
    )
    rel = sql.Identifier("public", "events_default")
    assert estimate_rows(conn, rel, cap=1000) == RowCount(1000, False, True)
    small = estimate_rows(conn, rel, cap=COUNT_CAP + 500)
    assert (small.rows, small.exact, small.at_least) == (COUNT_CAP + 500, True, False)


# --- (b) the copy rate after a resume ------------------------------------------------------------


def test_copy_rate_after_a_resume_counts_only_this_run(run: Run, dsn: str, conn: Conn) -> None:
    native_outage(conn, 20_000)
    args = ["fix", "-d", dsn, "public.events", "--yes", "--strategy", "copy", "--chunk-pages", "16"]
    killed = subprocess.run(
        [sys.executable, "-m", "partguard", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**_env(), "PARTGUARD_FAULT": "copy:3"},
    )
    assert killed.returncode == -9, killed.stderr
    row = conn.execute(
        "SELECT count(*), sum(rows_copied + rows_quarantined) FROM partguard.fix_chunk"
    ).fetchone()
    assert row is not None and row[0] == 3
    before = int(row[1])

    rc, out, err = run(*args, "--format", "json")
    assert rc == 0, err
    o = json.loads(out)
    assert o["resumed"] is True and o["rows_moved"] == 20_000
    assert o["rows_this_run"] == 20_000 - before and 0 < o["rows_this_run"] < o["rows_moved"]
    assert o["copy_s"] > 0
    assert o["rate_rows_s"] == pytest.approx(o["rows_this_run"] / o["copy_s"], rel=0.01)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PARTGUARD_FAULT"}


# --- (c) where rows go when no child covers them --------------------------------------------------


def test_without_a_default_runway_and_gap_say_inserts_fail(run: Run, dsn: str, conn: Conn) -> None:
    native_outage(conn, 0, default=False)
    conn.execute("DROP TABLE public.events_p" + f"{utc_today(conn) - timedelta(days=5):%Y%m%d}")
    rc, doc = check_json(run, "-d", dsn)
    runway, gap = finding(doc, "runway"), finding(doc, "gap")
    assert rc == 2
    assert "rows written now fail: there is no DEFAULT partition" in runway["message"]
    assert "rows in it fail: there is no DEFAULT partition" in gap["message"]
    assert not any("go to the DEFAULT" in f["message"] for f in doc["findings"])


def test_with_a_default_runway_and_gap_say_rows_go_there(run: Run, dsn: str, conn: Conn) -> None:
    native_outage(conn, 0)
    conn.execute("DROP TABLE public.events_p" + f"{utc_today(conn) - timedelta(days=5):%Y%m%d}")
    rc, doc = check_json(run, "-d", dsn)
    assert rc == 2
    assert "rows written now go to the DEFAULT" in finding(doc, "runway")["message"]
    assert "rows in it go to the DEFAULT" in finding(doc, "gap")["message"]
    assert not any("no DEFAULT partition" in f["message"] for f in doc["findings"])


# --- (d) repair commands carry the connection options given ------------------------------------


def printed_fix(message: str) -> list[str]:
    """The ``partguard fix …`` command in a message (up to its ';'), as argv after 'partguard'."""
    lexer = shlex.shlex(
        message[message.index("partguard fix ") :], posix=True, punctuation_chars=";"
    )
    lexer.whitespace_split = True
    words = list(lexer)
    return words[1 : words.index(";")] if ";" in words else words[1:]


def test_check_prints_a_repair_command_that_reaches_the_same_server(
    run: Run, dsn: str, conn: Conn
) -> None:
    native_outage(conn, 100)
    given = connection_args(dsn)
    rc, doc = check_json(run, *given)
    argv = printed_fix(finding(doc, "default_rows")["message"])
    assert argv == ["fix", *given, "public.events"]
    rc, out, err = run(*argv, "--dry-run")
    assert rc == 0 and "BEGIN;" in out, err

    d = conninfo_to_dict(dsn)
    uri = f"postgresql://{d['user']}:s3cret@{d['host']}:{d['port']}/{d['dbname']}"  # trust: not checked
    rc, out, err = run("check", "-d", uri)
    assert rc == 2 and "s3cret" not in out + err
    rc, doc = check_json(run, "-d", uri)
    argv = printed_fix(finding(doc, "default_rows")["message"])
    assert argv[:2] == ["fix", "-d"] and "password" not in argv[2]
    assert conninfo_to_dict(argv[2]) == {k: str(v) for k, v in d.items()}
    rc, out, err = run(*argv, "--dry-run")
    assert rc == 0 and "BEGIN;" in out, err


def test_maintain_prints_the_repair_with_the_connection_options(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """partman cannot premake over rows in the DEFAULT: maintain refuses and names the fix."""
    assert partman_due(conn)
    conn.execute(
        "INSERT INTO public.fixes VALUES (2, now() + interval '2 days')"
    )  # into the DEFAULT
    given = connection_args(dsn)
    rc, out, err = run("maintain", *given, "-t", "public.fixes")
    assert rc == 2, out + err
    assert f"repair: partguard fix {shlex.join(given)} public.fixes" in out
    rc, out, err = run(*printed_fix(out), "--dry-run")
    assert rc == 0 and "BEGIN;" in out, err


# --- (e) no fix suggested for a table fix refuses -------------------------------------------------


def test_check_says_why_fix_cannot_repair_a_table_referenced_by_foreign_keys(
    run: Run, dsn: str, conn: Conn
) -> None:
    native_outage(conn, 100)
    conn.execute("ALTER TABLE public.events ADD PRIMARY KEY (id, ts)")
    conn.execute(
        "CREATE TABLE public.notes (event_id bigint, event_ts timestamptz, "
        "FOREIGN KEY (event_id, event_ts) REFERENCES public.events (id, ts))"
    )
    rc, doc = check_json(run, "-d", dsn)
    msg = finding(doc, "default_rows")["message"]
    assert "partguard fix cannot repair it: public.events is referenced by foreign keys" in msg
    assert "repair:" not in msg
    rc, out, err = run("fix", "-d", dsn, "public.events", "--dry-run")
    assert (rc, out) == (65, "") and "referenced by foreign keys" in err


def test_check_suggests_the_interval_when_fix_would_need_it(run: Run, dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE public.bare (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE public.bare_default PARTITION OF public.bare DEFAULT")
    conn.execute(
        "INSERT INTO public.bare SELECT now() - g * interval '1 hour' FROM generate_series(0, 9) g"
    )
    given = connection_args(dsn)
    rc, doc = check_json(run, *given)
    msg = finding(doc, "default_rows")["message"]
    assert (
        f"repair, once the interval is known: partguard fix {shlex.join(given)} public.bare "
        "--interval <interval>"
    ) in msg
    rc, out, err = run("fix", *given, "public.bare", "--dry-run")
    assert rc == 67, err
    argv = [a if a != "<interval>" else "1 day" for a in printed_fix(msg)]
    rc, out, err = run(*argv, "--dry-run")
    assert rc == 0 and "BEGIN;" in out, err
