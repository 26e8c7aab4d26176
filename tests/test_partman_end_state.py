"""The end state pg_partman itself must find, on every version (4.7.2, 5.2.4, 5.5.0).

partman computes its next child as the newest child's *start* + interval, never reading the
upper bound; 5.x counts premade children from the slot of any row of the newest non-empty
child. A repair that leaves a wide child as the newest child therefore breaks every later
maintenance run ("would overlap"), while ``fix`` said "fixed" and ``check`` said OK. These
tests build those states on purpose and prove that ``fix`` never leaves them, that ``check``
predicts partman's failure before partman hits it, and that partman's own maintenance runs
clean afterwards.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from partguard.testing.build import insert_keys, partman_incident
from partguard.testing.catalog import kids, now
from partguard.testing.oracles import (
    PARTMAN_FORMATS,
    Run,
    assert_check_ok,
    assert_children_sane,
    assert_exactly_once,
    assert_partman_healthy,
    fix_cli,
    row_set,
    run_partman_maintenance,
)

Conn = psycopg.Connection[Any]
DAY = timedelta(days=1)


@pytest.mark.parametrize("how", ["bad-clock-row", "premake-1"])
def test_instant_never_leaves_the_wide_child_last(
    run: Run, dsn: str, conn: Conn, partman: str, how: str
) -> None:
    """One DEFAULT row three days ahead (a device with a bad clock), or premake 1, used to make
    instant create nothing after the wide child: partman then failed on every run."""
    parent, gap = partman_incident(conn)
    if how == "bad-clock-row":
        insert_keys(
            conn,
            sql.Identifier("public", "fixes"),
            "ts",
            [now(conn) + 3 * DAY + timedelta(hours=1)],
            "clock",
        )
    else:
        conn.execute("UPDATE partman.part_config SET premake = 1")
    premake = int(conn.execute("SELECT premake FROM partman.part_config").fetchone()[0])  # type: ignore[index]
    before = row_set(conn, "public.fixes")

    fix_cli(run, dsn, parent, "instant")

    assert_exactly_once(before, row_set(conn, parent))
    ks = assert_children_sane(conn, parent)
    wide = next(k for k in ks if k.lower == gap)
    after_wide = [k for k in ks if k.lower >= wide.upper]
    assert after_wide, "the wide child is the newest child: partman's next child overlaps it"
    assert all(k.upper - k.lower == DAY for k in after_wide)
    assert len([k for k in after_wide if k.lower > now(conn)]) >= premake
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, PARTMAN_FORMATS[int(partman[0])]["1 day"], "UTC")


def _wide_last(conn: Conn) -> tuple[str, str]:
    """A partman set whose newest child spans a week (what the old instant left): returns
    (parent, the wide child's name)."""
    parent, _gap = partman_incident(conn, outage=0, n=300)
    today = conn.execute("SELECT date_trunc('day', now())").fetchone()[0]  # type: ignore[index]
    for k in kids(conn, parent):
        if k.lower >= today:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", k.name)))
    conn.execute("DELETE FROM fixes_default")
    name = f"fixes_wide_{today:%Y%m%d}"
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF fixes FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("public", name), sql.Literal(today), sql.Literal(today + 7 * DAY)
        )
    )
    return parent, name


def test_check_predicts_partmans_overlap_before_partman_hits_it(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    parent, wide = _wide_last(conn)

    rc, out, _ = run("check", "-d", dsn, "-t", parent, "--format", "json")
    doc = json.loads(out)
    (f,) = [f for f in doc["findings"] if f["code"] == "partman_next_overlaps"]
    assert rc == 2 and f["severity"] == "critical" and f["detail"]["child"] == wide
    assert "would overlap" in f["message"] and "partguard split" in f["message"]

    # And partman does exactly what check predicted, on every version.
    if partman == "5.5.0":  # 5.5 catches the set's error and only warns
        warnings = run_partman_maintenance(dsn, parent, times=1)
        assert any("skipped partition set" in w and "would overlap" in w for w in warnings), (
            warnings
        )
    else:
        with pytest.raises(psycopg.errors.RaiseException, match="would overlap"):
            run_partman_maintenance(dsn, parent, times=1)


def test_maintain_reports_the_overlap_as_a_failure(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """maintain never says ok while partman fails (5.5.0: only a WARNING from partman)."""
    parent, _ = _wide_last(conn)
    rc, out, _ = run("maintain", "-d", dsn, "-t", parent, "--format", "json")
    doc = json.loads(out)
    (t,) = doc["tables"]
    assert rc == 2 and t["status"] == "failed" and "would overlap" in t["message"], t
    assert "\n" not in t["message"]


def test_fix_exit_code_is_not_zero_while_partman_still_fails(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """A fix that moved every row but leaves the table CRITICAL (here: an off-grid overlap
    that predates it) says so and exits 2, never 0."""
    parent, _ = _wide_last(conn)
    # rows in the DEFAULT, so there is something for fix to do
    conn.execute(
        "INSERT INTO fixes (device_id, ts, payload, val) SELECT 1, now() - interval '40 days', 'old-' || g, g "
        "FROM generate_series(1, 5) g"
    )
    rc, out, err = run("fix", "-d", dsn, parent, "--yes", "--strategy", "copy", "--format", "json")
    doc = json.loads(out)
    assert rc == 2 and doc["exit_code"] == 2, (rc, err)
    assert any("partman_next_overlaps" in s for s in doc["still_wrong"]), doc["still_wrong"]
    last = err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("fix: every row is in place, but public.fixes is not healthy yet: ")
    assert "maintenance failed" in last and "would overlap" in last
