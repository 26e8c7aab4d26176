"""fix under fire: live writers and readers, SIGKILL at the worst moments, lock contention.

The incident, every time: pg_partman maintenance stopped three days ago, so three days
of rows sit in the DEFAULT and the children for them are missing. A writer keeps
inserting (for now and for the outage days) while fix runs. Every row carries a unique
id; afterwards the set of ids in the table must equal the set inserted before plus the
set the writer committed, each exactly once.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from partguard.cli import main
from partguard.commands.fix import advisory_key
from partguard.testing.build import live_incident
from partguard.testing.live import Reader, Writer, fixes_writer
from partguard.testing.oracles import assert_exactly_once, public_catalog

OUTAGE_ROWS = 30_000


@pytest.fixture
def incident(conn: psycopg.Connection, partman_version: str | None) -> psycopg.Connection:
    live_incident(conn, partman=partman_version is not None, rows=OUTAGE_ROWS)
    return conn


def ids(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM public.fixes ORDER BY id")]


def default_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM public.fixes_default").fetchone()[0]


def assert_all_once(conn: psycopg.Connection, before: list[int], writer: Writer) -> None:
    """The rows before plus every row the writer committed, each exactly once."""
    assert_exactly_once(Counter(before) + Counter(writer.committed), Counter(ids(conn)))


def run_cli(dsn: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, so it can be SIGKILLed like an OOM-killed job."""
    env = dict(os.environ)
    env.pop("PARTGUARD_FAULT", None)
    if fault:
        env["PARTGUARD_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "partguard", "fix", "-d", dsn, "public.fixes", "--yes", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("strategy", ["instant", "copy"])
def test_fix_under_live_writes_keeps_every_row_exactly_once(
    incident: psycopg.Connection, dsn: str, strategy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = ids(incident)
    writer = fixes_writer(dsn).start()
    try:
        rc = main(
            [
                "fix",
                "-d",
                dsn,
                "public.fixes",
                "--yes",
                "--strategy",
                strategy,
                "--jobs",
                "2",
                "--chunk-pages",
                "32",
            ]
        )
    finally:
        writer.stop()
    print(
        f"{strategy}: writer max insert latency {writer.max_latency * 1000:.1f} ms, {len(writer.committed)} rows"
    )
    assert rc == 0, capsys.readouterr().err
    assert writer.errors == []
    assert len(writer.committed) > 50
    assert_all_once(incident, before, writer)
    assert default_rows(incident) == 0
    # Every outage row now lives in a proper child.
    assert (
        incident.execute(
            "SELECT count(*) FROM public.fixes WHERE tableoid = 'public.fixes_default'::regclass"
        ).fetchone()[0]
        == 0
    )


def test_instant_readers_see_every_outage_row_at_every_moment(
    incident: psycopg.Connection, dsn: str
) -> None:
    reader = Reader(
        dsn,
        OUTAGE_ROWS,
        sql.SQL("SELECT count(*) FROM public.fixes WHERE id < %s"),
        (OUTAGE_ROWS + 1,),
    ).start()
    writer = fixes_writer(dsn).start()
    try:
        rc = main(["fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant"])
    finally:
        writer.stop()
        time.sleep(0.05)
        reader.stop()
    assert rc == 0
    assert reader.reads > 10
    assert reader.shortfalls == []
    assert writer.errors == []


@pytest.mark.parametrize(
    ("strategy", "fault"),
    [
        ("instant", "swap"),
        ("instant", "validate"),
        ("copy", "swap"),
        ("copy", "copy:3"),
        ("copy", "before-drop"),
    ],
)
def test_sigkill_then_rerun_finishes_without_loss(
    incident: psycopg.Connection, dsn: str, strategy: str, fault: str
) -> None:
    before = ids(incident)
    writer = fixes_writer(dsn).start()
    try:
        crashed = run_cli(dsn, "--strategy", strategy, "--chunk-pages", "16", fault=fault)
        assert crashed.returncode == -9, crashed.stderr
        status = subprocess.run(
            [sys.executable, "-m", "partguard", "fix", "-d", dsn, "--status"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if fault != "swap":  # a kill inside the swap rolls it back: nothing left to resume
            assert "INTERRUPTED" in status.stdout
        resumed = run_cli(dsn, "--strategy", strategy, "--chunk-pages", "16")
        assert resumed.returncode == 0, resumed.stderr
    finally:
        writer.stop()
    assert writer.errors == []
    assert_all_once(incident, before, writer)
    assert default_rows(incident) == 0
    leftovers = incident.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'fixes_default_%' AND relkind = 'r'"
    ).fetchall()
    assert leftovers == []


def test_second_fix_on_the_same_table_is_refused(
    incident: psycopg.Connection, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    oid = incident.execute("SELECT 'public.fixes'::regclass::oid").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (advisory_key(oid),))
        pid = other.info.backend_pid
        rc = main(["fix", "-d", dsn, "public.fixes", "--yes"])
    err = capsys.readouterr().err
    assert rc == 73
    assert f"pid {pid}" in err and "another partguard fix" in err
    assert default_rows(incident) == OUTAGE_ROWS


@pytest.mark.parametrize("strategy", ["instant", "copy"])
def test_lock_not_granted_names_the_blocker_and_changes_nothing(
    incident: psycopg.Connection, dsn: str, strategy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = public_catalog(incident)
    with psycopg.connect(dsn) as blocker:  # a long transaction that read the table
        blocker.execute("SELECT count(*) FROM public.fixes")
        pid = blocker.info.backend_pid
        started = time.monotonic()
        rc = main(
            [
                "fix",
                "-d",
                dsn,
                "public.fixes",
                "--yes",
                "--strategy",
                strategy,
                "--lock-timeout",
                "200ms",
                "--retries",
                "2",
            ]
        )
        waited = time.monotonic() - started
        blocker.rollback()
    err = capsys.readouterr().err
    assert rc == 75, err
    assert f"pid {pid}" in err and "SELECT count(*) FROM public.fixes" in err
    assert len(err.strip().splitlines()) == 1 or "lock_timeout" in err
    assert public_catalog(incident) == before
    assert default_rows(incident) == OUTAGE_ROWS
    assert waited < 15


def test_live_writes_continue_while_fix_waits_for_a_lock(
    incident: psycopg.Connection, dsn: str
) -> None:
    """A DDL waiting in the lock queue would stall every insert behind it; ours gives up
    after lock_timeout, so the writer's latency stays bounded by it."""
    writer = fixes_writer(dsn).start()
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT count(*) FROM public.fixes")
        main(
            ["fix", "-d", dsn, "public.fixes", "--yes", "--lock-timeout", "100ms", "--retries", "3"]
        )
        blocker.rollback()
    writer.stop()
    assert writer.errors == []
    assert writer.max_latency < 2.0


def test_auto_ends_with_exact_children_under_live_writes(
    incident: psycopg.Connection,
    dsn: str,
    partman_version: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``fix`` (auto): the instant swap gives live writes real children within seconds, then the
    wide child is re-cut online; the table ends with one child per day, every row exactly once,
    no write failed, and partman's own maintenance (premake raised) works."""
    from partguard.testing.catalog import kids
    from partguard.testing.oracles import PARTMAN_FORMATS, assert_partman_healthy

    before = ids(incident)
    writer = fixes_writer(dsn).start()
    reader = Reader(
        dsn,
        OUTAGE_ROWS,
        sql.SQL("SELECT count(*) FROM public.fixes WHERE id < %s"),
        (OUTAGE_ROWS + 1,),
    ).start()
    try:
        rc = main(["fix", "-d", dsn, "public.fixes", "--yes", "--jobs", "2"])
    finally:
        writer.stop()
        reader.stop()
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "fixed with instant+recut" in out and "re-cut online into" in out, out
    assert writer.errors == [] and len(writer.committed) > 20
    assert reader.reads > 0 and reader.shortfalls == [], (
        f"{len(reader.shortfalls)} reads missed outage rows"
    )
    assert_all_once(incident, before, writer)
    assert default_rows(incident) == 0
    ks = kids(incident, "public.fixes")
    assert all(k.upper - k.lower == timedelta(days=1) for k in ks), [
        (k.name, k.lower, k.upper) for k in ks
    ]
    assert all(a.upper == b.lower for a, b in itertools.pairwise(ks)), "a hole or an overlap"
    if partman_version is not None:
        assert_partman_healthy(
            dsn, "public.fixes", PARTMAN_FORMATS[int(partman_version[0])]["1 day"], "UTC"
        )
    rc = main(["check", "-d", dsn, "-t", "public.fixes"])
    assert rc == 0, capsys.readouterr().out
