"""``--interval`` is checked against what the table says, and no plan runs away.

- An ``--interval`` that contradicts pg_partman's ``partition_interval`` (partman table) or the
  one step the children evidently follow (native table) is refused with exit 64 and one line,
  before anything changes, by check, fix and split; ``--force-interval`` overrides it.
- The same interval spelled another way ('daily', '1 days', '@ 1 day') agrees; '24 hours' is
  another value ('1 day' lasts 23 or 25 hours across DST) and is refused like any other.
- Where nothing tells (a DEFAULT only), ``--interval`` is what tells, as before.
- No plan creates more than MAX_NEW_CHILDREN children: '1 second' forced onto a three-day
  outage is refused at once, in bounded memory, with the table untouched.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from partguard.inspect.grid import IntGrid, count_buckets, parse_interval, time_grid
from partguard.plan.cap import MAX_NEW_CHILDREN
from partguard.testing.build import fixes_incident
from partguard.testing.oracles import fingerprint

Conn = psycopg.Connection[TupleRow]
Run = Callable[..., tuple[int, str, str]]
T = "public.fixes"


def _refusals(run: Run, dsn: str, interval: str) -> list[tuple[list[str], int, str, str]]:
    cmds = [
        ["fix", "-d", dsn, T, "--yes", "--interval", interval],
        ["fix", "-d", dsn, T, "--dry-run", "--interval", interval],
        ["fix", "-d", dsn, T, "--yes", "--strategy", "copy", "--interval", interval],
        ["check", "-d", dsn, "-t", T, "--interval", interval],
        ["split", "-d", dsn, T, "--yes", "--interval", interval],
    ]
    return [(cmd, *run(*cmd)) for cmd in cmds]


def _assert_refused(run: Run, dsn: str, conn: Conn, interval: str, says: str) -> None:
    before = fingerprint(conn)
    for cmd, rc, out, err in _refusals(run, dsn, interval):
        assert rc == 64, (cmd, rc, err)
        assert len(err.strip().splitlines()) == 1, err
        assert f"contradicts {says}" in err and "--force-interval" in err, err
        assert out == "", (cmd, out)
    assert fingerprint(conn) == before, "a refused --interval changes nothing"


def test_interval_contradicting_partmans_is_refused(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    fixes_incident(conn, partman=True, rows=300)
    _assert_refused(run, dsn, conn, "7 hours", "pg_partman's partition_interval (1 day)")
    _assert_refused(run, dsn, conn, "1 second", "pg_partman's partition_interval (1 day)")


def test_interval_contradicting_the_childrens_is_refused(run: Run, dsn: str, conn: Conn) -> None:
    fixes_incident(conn, partman=False, rows=300)
    _assert_refused(run, dsn, conn, "7 hours", "the interval its children follow (1 day)")
    _assert_refused(run, dsn, conn, "monthly", "the interval its children follow (1 day)")


@pytest.mark.parametrize(
    "spelling", ["1 day", "daily", "1 days", "@ 1 day", "1d", "1 day 00:00:00"]
)
def test_the_tables_interval_spelled_another_way_is_accepted(
    run: Run, dsn: str, conn: Conn, spelling: str
) -> None:
    fixes_incident(conn, partman=False, rows=300)
    rc, _, err = run("check", "-d", dsn, "-t", T, "--interval", spelling)
    assert rc == 2 and "contradicts" not in err, (rc, err)  # CRITICAL: the DEFAULT's rows
    before = fingerprint(conn)
    rc, out, err = run("fix", "-d", dsn, T, "--dry-run", "--interval", spelling)
    assert rc == 0 and "BEGIN" in out, (rc, err)
    assert fingerprint(conn) == before


def test_24_hours_is_not_1_day(run: Run, dsn: str, conn: Conn, partman: str) -> None:
    """Equal means the same interval value: '24 hours' lays another grid wherever a day is
    23 or 25 hours long, so on a '1 day' table it is a contradiction like any other."""
    fixes_incident(conn, partman=True, rows=300)
    rc, _, err = run("check", "-d", dsn, "-t", T, "--interval", "24 hours")
    assert rc == 64 and "(24:00:00) contradicts pg_partman's partition_interval (1 day)" in err


def test_force_interval_uses_it_anyway(
    run: Run, dsn: str, conn: Conn, partman: str, caplog: pytest.LogCaptureFixture
) -> None:
    fixes_incident(conn, partman=True, rows=300)
    with caplog.at_level(logging.WARNING, logger="partguard"):
        rc, out, err = run(
            "check", "-d", dsn, "-t", T, "--interval", "12 hours", "--force-interval"
        )
    assert rc == 2 and "12:00:00" in out, (rc, out, err)
    assert any("using it as --force-interval asks" in r.getMessage() for r in caplog.records)
    before = fingerprint(conn)
    rc, out, err = run(
        "fix", "-d", dsn, T, "--dry-run", "--interval", "12 hours", "--force-interval"
    )
    assert rc == 0 and "BEGIN" in out, (rc, err)
    assert fingerprint(conn) == before


def test_where_nothing_tells_the_interval_decides(run: Run, dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE public.bare (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    conn.execute("CREATE TABLE public.bare_default PARTITION OF public.bare DEFAULT")
    conn.execute(
        "INSERT INTO public.bare SELECT now() - i * interval '1 hour' FROM generate_series(0, 47) i"
    )
    for interval in ("1 day", "7 hours"):
        rc, out, err = run("fix", "-d", dsn, "public.bare", "--dry-run", "--interval", interval)
        assert rc == 0 and "BEGIN" in out, (interval, rc, err)


def test_mixed_children_say_nothing_so_the_interval_decides(run: Run, dsn: str, conn: Conn) -> None:
    """Half hourly, half daily children: no evident step, nothing to contradict."""
    conn.execute("CREATE TABLE public.mix (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    day = datetime(2026, 1, 1, tzinfo=UTC)
    bounds = [day + timedelta(hours=h) for h in range(5)]
    bounds += [bounds[-1] + timedelta(days=d) for d in range(1, 6)]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF public.mix FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier("public", f"mix_{i}"), sql.Literal(lo), sql.Literal(hi)
            )
        )
    for interval in ("1 hour", "1 day"):
        rc, _, err = run("check", "-d", dsn, "-t", "public.mix", "--interval", interval)
        assert rc != 64 and "contradicts" not in err, (interval, rc, err)


# --- the cap -------------------------------------------------------------------------------


def _partguard(*argv: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """The CLI in its own process: (result, seconds, its peak RSS in KiB)."""
    env = dict(os.environ)
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run(
        [sys.executable, "-m", "partguard", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return p, time.monotonic() - start, max(peak, before)


@pytest.mark.parametrize("strategy", ["auto", "copy"])
def test_one_second_forced_onto_an_outage_is_capped(dsn: str, conn: Conn, strategy: str) -> None:
    """auto: the swap's wide child would be re-cut into 259,200 children; copy: one child per
    second of the outage. (--strategy instant alone makes one wide child and a few seconds of
    future children: within the cap, and what --force-interval asked for.)"""
    fixes_incident(conn, partman=False, rows=3000)
    before = fingerprint(conn)
    p, secs, peak_kib = _partguard(
        "fix", "-d", dsn, T, "--yes", "--strategy", strategy,
        "--interval", "1 second", "--force-interval",
    )  # fmt: skip
    assert p.returncode == 64, (p.returncode, p.stderr[-2000:])
    line = p.stderr.strip().splitlines()[-1]
    assert "would create" in line and f"more than the {MAX_NEW_CHILDREN:,}" in line, line
    assert "--interval" in line and "--outliers quarantine" in line, line
    assert fingerprint(conn) == before, "refused before any change"
    # Millions of planned children would take gigabytes; a refusal takes what Python does.
    assert peak_kib < 400 * 1024, f"peak RSS {peak_kib} KiB ({secs:.1f}s)"


def test_split_onto_one_second_is_capped(dsn: str, conn: Conn) -> None:
    fixes_incident(conn, partman=False, rows=300)
    before = fingerprint(conn)
    p, secs, peak_kib = _partguard(
        "split", "-d", dsn, T, "--yes", "--interval", "1 second", "--force-interval"
    )
    assert p.returncode == 64, (p.returncode, p.stderr[-2000:])
    assert "the re-cut would create" in p.stderr, p.stderr
    assert fingerprint(conn) == before
    assert peak_kib < 400 * 1024, f"peak RSS {peak_kib} KiB ({secs:.1f}s)"


def test_count_buckets_is_the_length_of_buckets() -> None:
    """The cap counts arithmetically what the planners would list."""
    base = datetime(2026, 3, 20, 5, 17, tzinfo=UTC)
    for zone in ("Europe/Berlin", "UTC", "Asia/Kathmandu", "Australia/Lord_Howe"):
        for step in ("1 day", "7 hours", "1 mon", "1 week", "15 minutes"):
            grid = time_grid(parse_interval(step), zone)
            for lo_h in (0, 7, 31, 500):
                for span_h in (-3, 0, 1, 23, 24, 25, 24 * 40, 24 * 400):
                    lo = base + timedelta(hours=lo_h)
                    for lo_ in (lo, grid.floor(lo)):
                        hi = lo_ + timedelta(hours=span_h)
                        assert count_buckets(grid, lo_, hi) == len(list(grid.buckets(lo_, hi))), (
                            zone, step, lo_, hi,
                        )  # fmt: skip
    grid = time_grid(parse_interval("1 second"), "UTC")
    assert count_buckets(grid, base, base + timedelta(days=3)) == 3 * 86_400  # no list made
    ints = IntGrid(1000, 7)
    for lo in (-2500, 0, 7, 999, 1007):
        for hi in (-3000, 0, 6, 7, 8, 5000):
            assert count_buckets(ints, lo, hi) == len(list(ints.buckets(lo, hi))), (lo, hi)
