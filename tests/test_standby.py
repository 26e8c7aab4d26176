"""On a hot standby: an HA pair runs partguard's timer on both nodes, and the standby must
neither alert hourly nor print raw "read-only transaction" errors.

The standby is a real streaming replica of the session's cluster (``pg_basebackup -R``);
every table is created on the primary and read on the standby once it has replayed it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from partguard.sandbox import Sandbox
from partguard.testing.build import native_outage, partman_due
from partguard.testing.catalog import children, count

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def replica(cluster: Sandbox) -> Iterator[Sandbox]:
    standby = cluster.replica()
    yield standby
    standby.stop()


def on_standby(replica: Sandbox, dsn: str) -> str:
    """The test's database on the standby, once everything written so far is replayed there."""
    replica.wait_replayed()
    return replica.dsn(str(conninfo_dbname(dsn)))


def conninfo_dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def test_check_and_metrics_say_the_server_is_a_standby(
    run: Run, dsn: str, conn: Conn, replica: Sandbox
) -> None:
    native_outage(conn, 48)
    standby = on_standby(replica, dsn)

    rc, out, err = run("check", "-d", dsn, "--format", "json")
    primary = json.loads(out)
    assert (rc, err, primary["server"]["in_recovery"]) == (2, "", False)
    rc, out, err = run("check", "-d", standby, "--format", "json")
    doc = json.loads(out)
    assert (rc, err, doc["server"]["in_recovery"]) == (2, "", True)
    # The standby replays the primary's tables: the same verdict, finding for finding.
    assert [f["code"] for f in doc["findings"]] == [f["code"] for f in primary["findings"]]

    rc, out, err = run("check", "-d", standby)
    assert rc == 2 and err == ""
    assert "a hot standby (in recovery, read-only)" in out.splitlines()[0]
    rc, out, _ = run("check", "-d", dsn)
    assert "standby" not in out.splitlines()[0]

    rc, out, err = run("metrics", "-d", standby)
    assert (rc, err) == (0, "")
    assert (
        "partguard_in_recovery 1.0" in out.splitlines() and "partguard_up 1.0" in out.splitlines()
    )
    rc, out, _ = run("metrics", "-d", dsn)
    assert rc == 0 and "partguard_in_recovery 0.0" in out.splitlines()


def test_maintain_on_a_standby_does_nothing_and_says_why_in_one_line(
    run: Run, dsn: str, conn: Conn, replica: Sandbox, partman: str
) -> None:
    """The primary's maintenance is due (its newest children are gone); on the standby
    maintain exits 0 with one line, touches nothing, and is not recorded as a failure."""
    assert len(partman_due(conn)) == 4
    before = children(conn, "public.fixes")
    standby = on_standby(replica, dsn)

    rc, out, err = run("maintain", "-d", standby)
    assert (rc, err) == (0, "")
    assert out == (
        "partguard maintain: nothing to do: the server is a hot standby (in recovery, "
        "read-only); maintenance runs on the primary\n"
    )
    rc, out, err = run("maintain", "-d", standby, "--format", "json")
    report = json.loads(out)
    assert (rc, err, report["status_text"], report["tables"]) == (0, "", "ok", [])
    assert "hot standby" in report["skipped"]
    with psycopg.connect(standby) as s:
        assert children(s, "public.fixes") == before
    assert children(conn, "public.fixes") == before
    assert conn.execute("SELECT to_regclass('partguard.maintenance_run')").fetchone() == (None,)

    # The same command on the primary has the work to do.
    rc, out, err = run("maintain", "-d", dsn)
    assert rc == 0, out + err
    assert len(children(conn, "public.fixes")) == len(before) + 4


def test_fix_on_a_standby_refuses_with_its_own_code(
    run: Run, dsn: str, conn: Conn, replica: Sandbox
) -> None:
    native_outage(conn, 48)
    rows = count(conn, "public.events_default")
    standby = on_standby(replica, dsn)
    want = (
        "partguard: fix changes the database and the server is a hot standby (in recovery, "
        "read-only): run it against the primary\n"
    )
    for extra in (["--yes"], ["--dry-run"], ["--yes", "--strategy", "copy"]):
        rc, out, err = run("fix", "-d", standby, "public.events", *extra)
        assert (rc, out, err) == (69, "", want), extra
    rc, out, err = run("fix", "-d", standby, "--status")
    assert (rc, out, err) == (0, "no fix runs recorded\n", "")
    assert count(conn, "public.events_default") == rows
    # The primary takes the repair the standby refused.
    rc, out, err = run("fix", "-d", dsn, "public.events", "--yes")
    assert rc == 0, out + err
    assert count(conn, "public.events_default") == 0
