"""What the application feels while partguard waits for a lock.

A DDL waiting in the lock queue stalls every later query on its table. The incident's
case: a long transaction (a report) holds ACCESS SHARE on the table while ``fix`` or
``maintain`` needs ACCESS EXCLUSIVE; a writer keeps inserting every few milliseconds.
partguard asks for the lock in short attempts (``--lock-attempt``, 50 ms) with pauses in
between, so no insert waits much longer than one attempt, and in the end either names
the blocker with nothing changed or, once the blocker lets go, does its work.

The bound asserted is ten attempts: generous for a loaded 2-core machine, and still far
below the ~2 s stalls a full ``lock_timeout`` per try used to cause. Each test prints the
worst latency it measured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from conftest import Run
from psycopg import sql
from test_fix_live import OUTAGE_ROWS, assert_all_once, ids

from partguard.testing.build import create_parent, live_incident
from partguard.testing.live import Writer, fixes_writer
from partguard.testing.oracles import public_catalog

ATTEMPT = 0.05  # the default --lock-attempt
BOUND = 10 * ATTEMPT

Conn = psycopg.Connection[Any]


@pytest.fixture
def fixes(conn: Conn, partman_version: str | None) -> Conn:
    """test_fix_live's incident: three days of rows in the DEFAULT, their children missing."""
    live_incident(conn, partman=partman_version is not None, rows=OUTAGE_ROWS)
    return conn


@dataclass
class Holder:
    pid: int
    released_at: float | None = None


@contextmanager
def long_reader(dsn: str, hold: float | None = None) -> Iterator[Holder]:
    """A transaction that read public.fixes (ACCESS SHARE on it and its partitions) and
    stays open: for ``hold`` seconds, or until the block ends."""
    conn = psycopg.connect(dsn, application_name="long-report")
    conn.execute("SELECT count(*) FROM public.fixes")
    holder = Holder(conn.info.backend_pid)

    def release() -> None:
        conn.rollback()
        holder.released_at = time.monotonic()

    timer = threading.Timer(hold, release) if hold is not None else None
    if timer is not None:
        timer.start()
    try:
        yield holder
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        if holder.released_at is None:
            release()
        conn.close()


def worst(writer: Writer, until: float | None = None) -> float:
    """The slowest insert (seconds), of those started before ``until`` when given."""
    return max((lat for t0, lat in writer.samples if until is None or t0 < until), default=0.0)


def report(capsys: pytest.CaptureFixture[str], what: str, writer: Writer, waiting: float) -> None:
    with capsys.disabled():
        print(
            f"\n{what}: worst insert latency while partguard waited {waiting * 1000:.0f} ms, "
            f"over the whole run {writer.max_latency * 1000:.0f} ms ({len(writer.samples)} inserts; "
            f"bound {BOUND * 1000:.0f} ms)"
        )


@pytest.mark.parametrize("strategy", ["instant", "copy"])
def test_fix_that_cannot_get_its_lock_stalls_inserts_one_attempt_at_most(
    fixes: Conn, dsn: str, strategy: str, run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    before, rows_before = public_catalog(fixes), ids(fixes)
    writer = fixes_writer(dsn).start()
    with long_reader(dsn) as holder:
        rc, _, err = run(
            "fix",
            "-d",
            dsn,
            "public.fixes",
            "--yes",
            "--strategy",
            strategy,
            "--lock-timeout",
            "1s",
            "--retries",
            "1",
        )
    writer.stop()
    report(capsys, f"fix --strategy {strategy}, blocked", writer, worst(writer))
    assert rc == 75, err
    assert len(err.splitlines()) == 1
    assert (
        f"pid {holder.pid}" in err
        and "long-report" in err
        and "SELECT count(*) FROM public.fixes" in err
    )
    assert "after 2 tries" in err
    assert writer.errors == []
    assert worst(writer) < BOUND
    assert public_catalog(fixes) == before
    # Every row is where it was (the DEFAULT), with every row the writer added.
    assert_all_once(fixes, rows_before, writer)
    in_default = fixes.execute("SELECT count(*) FROM ONLY public.fixes_default").fetchone()
    assert in_default == (OUTAGE_ROWS + len(writer.committed),)


def test_fix_gets_its_lock_once_the_blocker_lets_go(
    fixes: Conn, dsn: str, run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    rows_before = ids(fixes)
    writer = fixes_writer(dsn).start()
    started = time.monotonic()
    with long_reader(dsn, hold=1.5) as holder:
        rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "copy")
    writer.stop()
    assert holder.released_at is not None
    waiting = worst(writer, until=holder.released_at)
    report(capsys, "fix --strategy copy, blocker released after 1.5 s", writer, waiting)
    assert rc == 0, out + err
    assert holder.released_at - started >= 1.4  # the fix really had to wait
    assert writer.errors == []
    assert waiting < BOUND
    assert_all_once(fixes, rows_before, writer)
    assert fixes.execute("SELECT count(*) FROM ONLY public.fixes_default").fetchone() == (0,)


# --- maintain ----------------------------------------------------------------------------


def partman_fixes(conn: Conn) -> list[str]:
    """public.fixes (the writer's columns), daily under pg_partman, its two newest children
    gone: maintenance has two children to create, each under ACCESS EXCLUSIVE."""
    conn.execute(
        "CREATE TABLE public.fixes (id bigint NOT NULL, received_at timestamptz NOT NULL, "
        "device_id int NOT NULL, v int) PARTITION BY RANGE (received_at)"
    )
    create_parent(conn, "public.fixes", "received_at", "1 day", premake=4)
    kids = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'public.fixes'::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' "
            "ORDER BY pg_get_expr(c.relpartbound, c.oid)"
        )
    ]
    for kid in kids[-2:]:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", kid)))
    return kids[:-2]


@pytest.mark.parametrize("hold", [None, 1.5], ids=["blocked", "released"])
def test_maintain_waiting_for_a_lock_stalls_inserts_one_attempt_at_most(
    dsn: str,
    conn: Conn,
    partman: str,
    hold: float | None,
    run: Run,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Creating a child takes SHARE UPDATE EXCLUSIVE on the parent (no insert waits for
    that) but ACCESS EXCLUSIVE on the DEFAULT: the writer sends every other row there
    (late rows, older than every child), and those inserts queue behind maintain."""
    kept = partman_fixes(conn)
    writer = fixes_writer(
        dsn, when=("timestamptz '2001-01-01' + random() * interval '1 day'", "now()")
    ).start()
    with long_reader(dsn, hold=hold) as holder:
        rc, out, err = run("maintain", "-d", dsn, "--lock-timeout", "1s", "--lock-retries", "1")
    writer.stop()
    waiting = worst(writer, until=holder.released_at)
    report(
        capsys,
        f"maintain, {'blocked' if hold is None else 'blocker released after 1.5 s'}",
        writer,
        waiting,
    )
    assert writer.errors == []
    assert waiting < BOUND
    now = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'public.fixes'::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'"
        )
    ]
    # The late rows in the DEFAULT make the verdict CRITICAL either way (check's rules).
    assert rc == 2, out + err
    line = out.strip()
    if hold is None:
        assert line.startswith("public.fixes: critical (failed)"), line
        assert "lock not granted within 1s after 2 tries" in line
        assert f"pid {holder.pid}" in line and "long-report" in line
        assert sorted(now) == sorted(kept)  # nothing created
    else:
        assert line.startswith("public.fixes: critical, created 2 children"), line
        assert "lock not granted" not in line
        assert len(now) == len(kept) + 2
