"""Time zones as PostgreSQL reads them (issue 7, items 6-8), on a real server.

- a zone means what the server says it means: '+01' is one hour east (a number, ISO sign),
  'UTC+01' and '+01:00' are POSIX specs, one hour west; partguard computes with the same offsets;
- on a partman table, ``--tz`` that contradicts the zone partman computes in is refused (64)
  unless ``--force-tz``; an alias of partman's zone is no contradiction;
- the old script's <timezone> is a hint: one that cannot be used is a warning, never a refused
  repair; an alias of the table's zone (UTC for Etc/UTC) is not even a warning;
- grid boundaries at wall times a forward jump skipped are where PostgreSQL puts them.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from partguard.cli import fix_partitioned_table_main
from partguard.db import connect
from partguard.inspect.grid import Interval, time_grid
from partguard.inspect.zones import (
    UnknownZone,
    fixed_zone_name,
    resolve,
    same_zone,
    zone_info,
    zone_label,
)
from partguard.testing.build import create_parent
from partguard.testing.catalog import children, utc_today

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]
DAY = timedelta(days=1)

# (what a user types, the offset east of Greenwich PostgreSQL's SET TimeZone gives it)
ACCEPTED = [
    ("+01", timedelta(hours=1)),  # a number of hours: ISO sign
    ("+00", timedelta(0)),
    ("+01:00", timedelta(hours=-1)),  # a POSIX spec: positive is west
    ("UTC+01", timedelta(hours=-1)),
    ("UTC-01", timedelta(hours=1)),
    ("Etc/GMT-1", timedelta(hours=1)),
    ("5.75", timedelta(hours=5, minutes=45)),
    ("<+0545>-05:45", timedelta(hours=5, minutes=45)),
    ("utc", timedelta(0)),
]
SAMPLES = [datetime(y, m, 15, 12, tzinfo=UTC) for y in (1975, 2001, 2026, 2050) for m in (1, 7)]


def server_offsets(conn: Conn, zone: str) -> list[timedelta]:
    """The oracle: what PostgreSQL's session TimeZone makes of ``zone`` at SAMPLES."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        rows = conn.execute(
            "SELECT extract(timezone FROM t)::int FROM unnest(%s::timestamptz[]) t", (SAMPLES,)
        ).fetchall()
    return [timedelta(seconds=r[0]) for r in rows]


# --- what a zone means ------------------------------------------------------------------


@pytest.mark.parametrize(("given", "east"), ACCEPTED, ids=[g for g, _ in ACCEPTED])
def test_a_zone_means_what_postgresql_says(conn: Conn, given: str, east: timedelta) -> None:
    before = conn.execute("SHOW TimeZone").fetchone()
    name = resolve(conn, given)
    assert conn.execute("SHOW TimeZone").fetchone() == before, "resolve must not change the session"
    assert server_offsets(conn, given) == [east] * len(SAMPLES)  # the oracle agrees with the table
    tz = zone_info(name)
    assert [t.astimezone(tz).utcoffset() for t in SAMPLES] == [east] * len(SAMPLES)
    assert server_offsets(conn, name) == [east] * len(SAMPLES), (
        f"{name} must mean the same to the server"
    )


def test_tz_database_zones_keep_their_name_and_their_rules(conn: Conn) -> None:
    assert resolve(conn, "europe/berlin") == "Europe/Berlin"
    assert resolve(conn, "UTC") == "UTC" and resolve(conn, "Etc/UTC") == "Etc/UTC"
    assert [
        t.astimezone(zone_info("Europe/Berlin")).utcoffset() for t in SAMPLES
    ] == server_offsets(conn, "Europe/Berlin")
    assert resolve(conn, "+01") == "Etc/GMT-1" and zone_label("Etc/GMT-1") == "UTC+01:00"


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("Mars/Olympus", "PostgreSQL does not accept it"),
        ("", "PostgreSQL does not accept it"),
        ("CET-1CEST,M3.5.0,M10.5.0/3", "POSIX rule with daylight saving"),
        ("+0100", "+100 hours"),  # a number of hours to PostgreSQL: one hundred of them
    ],
)
def test_zones_partguard_cannot_compute_in_are_usage_errors(
    conn: Conn, given: str, words: str
) -> None:
    with pytest.raises(UnknownZone, match=words.replace("+", r"\+")) as exc:
        resolve(conn, given)
    assert exc.value.exit_code == 64


def test_a_posix_sign_is_said_out_loud(conn: Conn, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="partguard"):
        assert resolve(conn, "+01:00") == "Etc/GMT+1"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "UTC-01:00" in warning and "'Etc/GMT-1'" in warning
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="partguard"):
        assert resolve(conn, "+01") == "Etc/GMT-1"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_aliases_are_the_same_zone_and_others_are_not() -> None:
    assert same_zone("UTC", "Etc/UTC") and same_zone("Etc/UTC", "<+00>-00")
    assert same_zone("Etc/GMT-1", "<+01>-01")  # PostgreSQL's own spelling of SET TimeZone = 1
    # A link in tzdata proper (Debian 13 moved US/Eastern and the like to tzdata-legacy, which
    # PostgreSQL and zoneinfo then both lack).
    assert same_zone("Europe/Rome", "Europe/Vatican")
    assert not same_zone("UTC", "Etc/GMT-1")
    assert not same_zone("Europe/Berlin", "Etc/GMT-1")  # equal in winter only
    assert not same_zone("Europe/Berlin", "Europe/London")
    assert not same_zone(
        "Europe/Berlin", "Europe/Paris"
    )  # France had DST from 1976, Germany from 1980
    assert fixed_zone_name(timedelta(hours=-3, minutes=-30)) == "<-03:30>+03:30"
    assert zone_info("<-03:30>+03:30").utcoffset(None) == timedelta(hours=-3, minutes=-30)
    with pytest.raises(UnknownZone):
        zone_info("<+01>+01")  # label and POSIX offset disagree: not a name partguard makes


# --- grid boundaries at wall times that never happened -----------------------------------


@pytest.mark.parametrize(
    ("zone", "step", "walls"),
    [
        ("Asia/Kathmandu", Interval(months=3), ["1985-10-01", "1986-01-01", "1986-04-01"]),
        ("America/Santiago", Interval(days=1), ["2026-09-05", "2026-09-06", "2026-09-07"]),
    ],
)
def test_boundaries_in_a_forward_jump_are_where_postgresql_puts_them(
    conn: Conn, zone: str, step: Interval, walls: list[str]
) -> None:
    """The middle wall time does not exist (Kathmandu +05:30 -> +05:45 at 1986-01-01 00:00;
    Santiago springs forward at midnight). PostgreSQL reads it with the offset before the
    jump; the grid agrees, also when anchored on that very boundary."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        pg = [
            r[0]
            for r in conn.execute(
                "SELECT w::timestamp::timestamptz FROM unnest(%s::text[]) w", (walls,)
            ).fetchall()
        ]
    g = time_grid(step, zone)
    h = time_grid(step, zone, pg[1].astimezone(ZoneInfo(zone)))
    for grid in (g, h):
        assert [grid.floor(b + timedelta(minutes=1)) for b in pg] == pg
        assert grid.next(pg[0]) == pg[1] and grid.next(pg[1]) == pg[2]
    assert pg[1].astimezone(ZoneInfo(zone)).time() != datetime.min.time(), (
        "the jump moved the boundary"
    )
    assert pg[2].astimezone(ZoneInfo(zone)).time() == datetime.min.time(), "and only that one"


# --- a partman table: --tz against partman's zone (every partman version) ----------------


def set_db_timezone(conn: Conn, zone: str) -> None:
    """The role/database default TimeZone: the zone partman's maintenance computes in."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET TimeZone = {}").format(
            sql.Identifier(conn.info.dbname), sql.Literal(zone)
        )
    )


def partman_outage(dsn: str, zone: str = "UTC") -> str:
    """public.fixes, daily partman children in ``zone`` (the database default); maintenance
    stopped three days ago, so the DEFAULT holds every row since."""
    with psycopg.connect(dsn, autocommit=True) as c:
        set_db_timezone(c, zone)
    with psycopg.connect(dsn, autocommit=True) as c:  # a session with the new default, like cron's
        c.execute(
            "CREATE TABLE public.fixes (id bigint GENERATED ALWAYS AS IDENTITY, "
            "ts timestamptz NOT NULL, payload text) PARTITION BY RANGE (ts)"
        )
        c.execute("CREATE INDEX ON public.fixes (ts)")
        start = c.execute("SELECT (date_trunc('day', now()) - interval '10 days')::text").fetchone()
        assert start is not None
        create_parent(c, "public.fixes", "ts", "1 day", start=start[0])
        gap = c.execute("SELECT date_trunc('day', now()) - interval '3 days'").fetchone()
        assert gap is not None
        for _, name, lower in children(c, "public.fixes"):
            if lower >= gap[0]:
                c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", name)))
        c.execute(
            "INSERT INTO public.fixes (ts, payload) SELECT now() - g * interval '5 minutes', 'p' || g "
            "FROM generate_series(0, 5 * 24 * 12) g"
        )
    return "public.fixes"


def layout(conn: Conn) -> tuple[list[tuple[str, str, Any]], int]:
    """Children (bounds from the catalog) and the DEFAULT's row count: what a refusal keeps."""
    n = conn.execute("SELECT count(*) FROM public.fixes_default").fetchone()
    return children(conn, "public.fixes"), n[0] if n else -1


def assert_on_grid(conn: Conn, zone: str) -> None:
    """Every child starts at local midnight of ``zone`` and none overlaps or leaves a hole."""
    kids = children(conn, "public.fixes")
    for _, name, lower in kids:
        local = lower.astimezone(zone_info(zone))
        assert local.time() == datetime.min.time(), f"{name} starts at {local}, off the {zone} grid"
    bounds = conn.execute(
        """SELECT count(*) FROM partman.show_partitions('public.fixes')"""
    ).fetchone()
    assert bounds is not None and bounds[0] == len(kids)


def assert_partman_runs(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        for _ in range(2):
            c.execute(
                "SELECT partman.run_maintenance(p_parent_table := 'public.fixes', p_jobmon := false)"
            )
        kids = children(c, "public.fixes")
    lowers = [lower for _, _, lower in kids]
    assert lowers == sorted(set(lowers))


def test_fix_tz_contradicting_partmans_zone_is_refused_unless_forced(
    run: Run, dsn: str, conn: Conn, partman: str, caplog: pytest.LogCaptureFixture
) -> None:
    parent = partman_outage(dsn, "UTC")
    before = layout(conn)

    for cmd in (
        ["fix", "-d", dsn, parent, "--yes", "--tz", "Europe/Berlin"],
        ["fix", "-d", dsn, parent, "--yes", "--tz", "UTC+01"],  # POSIX: one hour west
        ["check", "-d", dsn, "--tz", "Europe/Berlin"],
        ["check", "-d", dsn, "-t", parent, "--tz", "+01"],
    ):
        rc, out, err = run(*cmd)
        assert rc == 64, (cmd, rc, err)
        assert len(err.strip().splitlines()) == 1, err
        assert (
            "contradicts the zone pg_partman computes in (UTC, the role/database default TimeZone)"
            in err
        )
        assert "--force-tz" in err and out == ""
    assert layout(conn) == before, "a refused fix changes nothing"

    with caplog.at_level(logging.WARNING, logger="partguard"):
        rc, out, err = run(
            "check",
            "-d",
            dsn,
            "-t",
            parent,
            "--tz",
            "Europe/Berlin",
            "--force-tz",
            "--format",
            "json",
        )
    assert rc == 2 and "misaligned" in out, (
        "forced: judged on the Berlin grid, where partman's children are off"
    )
    assert any("using it as --force-tz asks" in r.getMessage() for r in caplog.records)
    rc, out, _ = run("fix", "-d", dsn, parent, "--dry-run", "--tz", "Europe/Berlin", "--force-tz")
    assert rc == 0 and "SET LOCAL TimeZone = 'Europe/Berlin'" in out
    assert layout(conn) == before


def test_fix_tz_that_names_partmans_zone_another_way_is_accepted(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """+01 is one hour east to PostgreSQL: the zone of a table whose partman runs in Etc/GMT-1."""
    parent = partman_outage(dsn, "Etc/GMT-1")
    rc, _, err = run("check", "-d", dsn, "-t", parent, "--tz", "<+01>-01")
    assert rc == 2 and "contradicts" not in err  # CRITICAL: the DEFAULT holds rows

    rc, out, err = run("fix", "-d", dsn, parent, "--yes", "--tz", "+01")

    assert rc == 0, err
    assert "contradicts" not in err and "disagrees" not in err
    assert_on_grid(conn, "Etc/GMT-1")
    assert conn.execute("SELECT count(*) FROM public.fixes_default").fetchone() == (0,)
    assert_partman_runs(dsn)
    rc, out, err = run("check", "-d", dsn, "-t", parent, "--tz", "+01", "--format", "json")
    assert rc in (0, 1), out  # instant leaves a wide child: information, or a warning on 5.x


# --- the old script's <timezone>: a hint ----------------------------------------------------


@pytest.mark.parametrize(("hint", "disagrees"), [("+01", True), ("+00", False)])
def test_fix_partitioned_table_takes_a_numeric_hint(
    dsn: str, conn: Conn, partman: str, hint: str, disagrees: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed guide's own command: `fix-partitioned-table soar fixes received_at '+01'`."""
    partman_outage(dsn, "UTC")
    with caplog.at_level(logging.WARNING, logger="partguard"):
        rc = fix_partitioned_table_main([dsn, "fixes", "ts", hint])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert rc == 0, warnings
    assert not [w for w in warnings if "unknown time zone" in w]
    assert any("disagrees with pg_partman's (UTC)" in w for w in warnings) == disagrees, warnings
    assert_on_grid(conn, "UTC")
    assert conn.execute("SELECT count(*) FROM public.fixes_default").fetchone() == (0,)
    assert_partman_runs(dsn)


def test_utc_is_no_disagreement_with_etc_utc(
    dsn: str, conn: Conn, partman: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Debian's postgresql.conf says timezone = 'Etc/UTC'; the old script was given UTC."""
    partman_outage(dsn, "Etc/UTC")
    with caplog.at_level(logging.WARNING, logger="partguard"):
        rc = fix_partitioned_table_main([dsn, "fixes", "ts", "UTC"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert rc == 0 and not warnings, warnings
    assert_on_grid(conn, "UTC")


def test_fix_partitioned_table_plus_one_as_a_user_runs_it(
    dsn: str, conn: Conn, partman: str
) -> None:
    """The real console script: exit 0, the hint's disagreement a WARNING line on stderr."""
    partman_outage(dsn, "UTC")
    script = Path(sys.executable).with_name("fix-partitioned-table")
    done = subprocess.run(
        [str(script), dsn, "fixes", "ts", "+01"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert any(
        "the time zone given (UTC+01:00) disagrees with pg_partman's (UTC)" in x for x in lines
    ), lines
    assert not [x for x in lines if "unknown time zone" in x or "error" in x.lower()], lines
    assert_on_grid(conn, "UTC")


def native_table(conn: Conn, zone: str, days: int = 6) -> str:
    """public.fixes without partman: daily children at midnight of ``zone`` until three days
    ago, a DEFAULT holding every row since."""
    conn.execute(
        "CREATE TABLE public.fixes (id bigint GENERATED ALWAYS AS IDENTITY, "
        "ts timestamptz NOT NULL, payload text) PARTITION BY RANGE (ts)"
    )
    conn.execute("CREATE INDEX ON public.fixes (ts)")
    today = utc_today(conn)
    tz = zone_info(zone)
    for i in range(days + 3, 3, -1):
        d = today - timedelta(days=i)
        lo = datetime(d.year, d.month, d.day, tzinfo=tz)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} PARTITION OF public.fixes FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier("public", f"fixes_p{d:%Y%m%d}"),
                sql.Literal(lo),
                sql.Literal(lo + DAY),
            )
        )
    conn.execute("CREATE TABLE public.fixes_default PARTITION OF public.fixes DEFAULT")
    conn.execute(
        "INSERT INTO public.fixes (ts, payload) SELECT now() - g * interval '7 minutes', 'n' || g "
        "FROM generate_series(0, 2 * 24 * 8) g"
    )
    return "public.fixes"


HINTS = [
    "+01",
    "+00",
    "+01:00",
    "UTC+01",
    "Etc/GMT-1",
    "UTC",
    "Mars/Olympus",
    "CET-1CEST,M3.5.0,M10.5.0/3",
]


@pytest.mark.parametrize("hint", HINTS)
def test_no_hint_refuses_a_repair(
    dsn: str, conn: Conn, hint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Known, unknown or unusable, the hint never stops the repair; the children's UTC grid
    wins, and a hint that cannot be used or disagrees is a warning."""
    native_table(conn, "UTC")
    with caplog.at_level(logging.WARNING, logger="partguard"):
        rc = fix_partitioned_table_main([dsn, "fixes", "ts", hint])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert rc == 0, warnings
    assert conn.execute("SELECT count(*) FROM public.fixes_default").fetchone() == (0,)
    for _, name, lower in children(conn, "public.fixes"):
        assert lower.astimezone(UTC).hour == 0, f"{name} is off the children's UTC grid"
    if hint in ("+00", "UTC"):
        assert not warnings
    elif hint in ("Mars/Olympus", "CET-1CEST,M3.5.0,M10.5.0/3"):
        assert any("ignoring the time zone hint" in w for w in warnings), warnings
    else:
        assert any("disagrees with the children's" in w for w in warnings), warnings


def test_a_hint_decides_where_the_children_agree(
    dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """Children at +01 midnights and the hint '+01': the grid is UTC+01, without a word."""
    native_table(conn, "Etc/GMT-1")
    with caplog.at_level(logging.WARNING, logger="partguard"):
        rc = fix_partitioned_table_main([dsn, "fixes", "ts", "+01"])
    assert rc == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    kids = children(conn, "public.fixes")
    assert len(kids) > 6 and all(lower.astimezone(UTC).hour == 23 for _, _, lower in kids)


def test_library_fix_resolves_the_hint_too(dsn: str, conn: Conn) -> None:
    """The library function takes the same zones as the CLI (fix(conn, …) resolves them)."""
    from partguard.commands.fix import FixRequest, fix

    native_table(conn, "UTC")
    with connect(dsn) as c:
        out = fix(
            c, dsn, FixRequest(table="public.fixes", tz="+00", tz_hint="+01:00", dry_run=True)
        )
    assert out.status == "planned" and out.params is not None and out.params["zone"] == "UTC"
