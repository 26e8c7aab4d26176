"""split, the re-cut engine, under fire: a writer and a reader throughout, SIGKILL at every
phase, --abort, a blocker, the dry-run script in psql, and partman afterwards.

The incident after ``fix --strategy instant``: one wide child covers the outage days and
today. Every test re-cuts it while a writer INSERTs (now and into the wide days),
UPDATEs (some moving a row's key to another day, i.e. to another new child) and DELETEs.
The oracle is the full multiset of rows, values included: what the table held plus what
the writer committed, row for row. Tables with and without a primary key; the one without
also holds rows identical in every column, of which the writer deletes one copy.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from builders import Background, create_parent
from psycopg import sql

from partguard.commands.split import SplitRequest, split
from partguard.db import connect
from partguard.inspect.grid import Interval, time_grid
from partguard.plan import split_steps
from partguard.plan.split import IndexSpec, Source, SplitPlan, Target, spans

Conn = psycopg.Connection[Any]
COLS = "id, received_at, device_id, v, note, speed"
ROWS = 12_000  # in the wide child; as many again in the other children
WIDE_DAYS = 4  # the wide child: 3 outage days and today
STABLE = 7  # ids divisible by this are never touched by the writer: the reader counts them
DUPLICATES = range(900_000, 900_040)  # no-PK table: each of these ids is there twice, identical


# --- the table ----------------------------------------------------------------------------


@dataclass
class Wide:
    """What a test needs to know about the table it built."""

    today: date
    lo: datetime  # the wide child's bounds
    hi: datetime
    wide: str  # its name
    names: list[str]  # the names the per-day children had (partman's own, or the native pattern)
    pk: bool


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def build(conn: Conn, partman_version: str | None, *, pk: bool) -> Wide:
    """``public.fixes``: daily children from 10 days ago to 4 ahead (partman's, when it is
    installed), a DEFAULT, then the children of the last 3 days and today replaced by one
    wide child named like the first of them, as ``fix --strategy instant`` leaves it."""
    conn.execute(f"""
        CREATE TABLE public.fixes (
            id bigint NOT NULL, received_at timestamptz NOT NULL, device_id int NOT NULL, v int,
            note text, speed real GENERATED ALWAYS AS (v * 3.6) STORED
            {", PRIMARY KEY (id, received_at)" if pk else ""}
        ) PARTITION BY RANGE (received_at);
        CREATE INDEX ON public.fixes (received_at);
        CREATE INDEX ON public.fixes (device_id, received_at);""")
    today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    start = midnight(today - timedelta(days=10))
    if partman_version:
        create_parent(
            conn, "public.fixes", "received_at", "1 day", premake=4, start=start.isoformat()
        )
    else:
        for n in range(15):
            d = today - timedelta(days=10 - n)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} PARTITION OF public.fixes FOR VALUES FROM ({}) TO ({})"
                ).format(
                    sql.Identifier("public", f"fixes_p{d:%Y%m%d}"),
                    sql.Literal(midnight(d)),
                    sql.Literal(midnight(d + timedelta(days=1))),
                )
            )
        conn.execute("CREATE TABLE public.fixes_default PARTITION OF public.fixes DEFAULT")
    lo, hi = midnight(today - timedelta(days=WIDE_DAYS - 1)), midnight(today + timedelta(days=1))
    names = []
    for day in range(WIDE_DAYS):
        lower = lo + timedelta(days=day)
        (name,) = conn.execute(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'public.fixes'::regclass
                 AND pg_get_expr(c.relpartbound, c.oid)
                     LIKE 'FOR VALUES FROM (''' || %s || '''%%'""",
            (lower.strftime("%Y-%m-%d %H:%M:%S+00"),),
        ).fetchone()
        names.append(name)
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", name)))
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF public.fixes FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("public", names[0]), sql.Literal(lo), sql.Literal(hi)
        )
    )
    conn.execute(
        "INSERT INTO public.fixes (id, received_at, device_id, v, note) "
        "SELECT i, %s::timestamptz + (i * (%s::timestamptz - %s::timestamptz) / %s), i %% 50, i, "
        "       CASE WHEN i %% 5 = 0 THEN NULL ELSE 'n' || i END FROM generate_series(1, %s) i",
        (start, hi - timedelta(hours=1), start, 2 * ROWS, 2 * ROWS),
    )
    if not pk:
        conn.execute(
            "INSERT INTO public.fixes (id, received_at, device_id, v, note) "
            "SELECT i, %s::timestamptz + (i - %s) * interval '1 minute', 7, 1, 'twin' "
            "FROM generate_series(%s, %s) i, generate_series(1, 2)",
            (lo + timedelta(hours=5), DUPLICATES.start, DUPLICATES.start, DUPLICATES.stop - 1),
        )
    conn.execute("ANALYZE public.fixes")
    return Wide(today, lo, hi, names[0], names, pk)


def rows(conn: Conn) -> Counter[tuple[Any, ...]]:
    return Counter(conn.execute(f"SELECT {COLS} FROM public.fixes").fetchall())


def children(conn: Conn) -> list[tuple[str, str]]:
    return conn.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'public.fixes'::regclass ORDER BY 2"""
    ).fetchall()


def fingerprint(conn: Conn) -> list[Any]:
    """The catalog of the table and partguard's schema (but its journal): relations with
    their oids and bounds, constraints, indexes, triggers, functions."""
    rels = conn.execute("""
        SELECT n.nspname, c.relname, c.oid::bigint, c.relkind::text,
               coalesce(pg_get_expr(c.relpartbound, c.oid), '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('public', 'partguard') AND c.relname NOT LIKE 'split\\_run%'
        ORDER BY 1, 2""").fetchall()
    cons = conn.execute("""
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(x.oid), convalidated
        FROM pg_constraint x WHERE connamespace IN ('public'::regnamespace)
        ORDER BY 1, 2""").fetchall()
    trig = conn.execute(
        "SELECT tgrelid::regclass::text, tgname, tgenabled::text FROM pg_trigger "
        "WHERE NOT tgisinternal ORDER BY 1, 2"
    ).fetchall()
    funcs = conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace::regnamespace::text = 'partguard' "
        "ORDER BY 1"
    ).fetchall()
    return [rels, cons, trig, funcs]


# --- the writer and the reader ------------------------------------------------------------------


class Writer(Background):
    """INSERTs, UPDATEs (a third of them moving the key a day) and DELETEs, one every ~3 ms,
    each in its own transaction; keeps the multiset the table must end with."""

    def __init__(self, dsn: str, expected: Counter[tuple[Any, ...]], wide: Wide) -> None:
        super().__init__(dsn, pause=0.003)
        self.expected, self.wide = expected, wide
        self.pool = sorted(
            {r[0] for r in expected if r[0] % STABLE and r[0] not in DUPLICATES}
        )  # ids it may change
        self.ops: Counter[str] = Counter()
        self.next_id, self.i, self.rnd = 10_000_000, 0, random.Random(7)

    def step(self, c: Conn) -> None:
        self.i += 1
        i, rnd = self.i, self.rnd
        op = ("insert", "insert", "update", "move", "delete", "insert", "twin")[i % 7]
        if op == "insert":
            self.next_id += 1
            when = "now()" if i % 2 else f"{self._sql_ts(rnd)}"
            (row,) = c.execute(
                f"INSERT INTO public.fixes (id, received_at, device_id, v, note) "  # test-only SQL
                f"VALUES (%s, {when}, %s, %s, %s) RETURNING {COLS}",
                (self.next_id, self.next_id % 50, i, None if i % 3 else f"w{i}"),
            ).fetchall()
            self.expected[row] += 1
            self.pool.append(self.next_id)
        elif op == "twin" and self.wide.pk is False:
            twin = DUPLICATES.start + (i // 7) % len(DUPLICATES)
            for row in c.execute(
                "DELETE FROM public.fixes WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM "
                "public.fixes "
                f"WHERE id = %s LIMIT 1) RETURNING {COLS}",
                (twin,),
            ).fetchall():
                self.expected[row] -= 1
        elif op in ("update", "move", "delete") and self.pool:
            self._change(c, op, self.pool[rnd.randrange(len(self.pool))])
        self.ops[op] += 1

    def _change(self, c: Conn, op: str, rid: int) -> None:
        with c.transaction():
            old = c.execute(
                f"SELECT tableoid, ctid, {COLS} FROM public.fixes WHERE id = %s FOR UPDATE", (rid,)
            ).fetchone()
            if old is None:
                return
            where = "WHERE tableoid = %s AND ctid = %s::tid"
            new = None
            if op == "delete":
                c.execute(f"DELETE FROM public.fixes {where}", (old[0], old[1]))
                self.pool.remove(rid)
            else:
                key: datetime = old[3]
                shift = timedelta(days=1 if key + timedelta(days=1) < self.wide.hi else -1)
                step = (
                    f"received_at + interval '{shift.days} day'" if op == "move" else "received_at"
                )
                new = c.execute(
                    f"UPDATE public.fixes SET received_at = {step}, v = coalesce(v, 0) + 1 "
                    f"{where} RETURNING {COLS}",
                    (old[0], old[1]),
                ).fetchone()
        self.expected[tuple(old[2:])] -= 1
        if new is not None:
            self.expected[tuple(new)] += 1

    def _sql_ts(self, rnd: random.Random) -> str:
        """A moment of the wide child's days, up to now."""
        span = min(self.wide.hi, datetime.now(UTC)) - self.wide.lo
        return f"'{(self.wide.lo + span * rnd.random()).isoformat()}'::timestamptz"


class Reader(Background):
    """Counts the rows the writer never touches, as fast as it can: never fewer, never more."""

    def __init__(self, dsn: str, expected: int) -> None:
        super().__init__(dsn, pause=0.001)
        self.expected, self.reads = expected, 0
        self.wrong: list[int] = []

    def step(self, c: Conn) -> None:
        n = stable_count(c)
        self.reads += 1
        if n != self.expected:
            self.wrong.append(n)


def stable_count(conn: Conn) -> int:
    return conn.execute(
        "SELECT count(*) FROM public.fixes WHERE id %% %s = 0 AND id < %s", (STABLE, 2 * ROWS + 1)
    ).fetchone()[0]


# --- the end state -------------------------------------------------------------------------


def assert_recut(conn: Conn, w: Wide) -> None:
    """The wide child is gone; one child per day in its place, named as the days' children
    were; nothing of partguard's is left on the table."""
    kids = dict(children(conn))
    assert w.names == [n for n in w.names if n in kids], kids
    for day, name in enumerate(w.names):
        lower = w.lo + timedelta(days=day)
        assert kids[name] == (
            f"FOR VALUES FROM ('{lower:%Y-%m-%d %H:%M:%S}+00') "
            f"TO ('{lower + timedelta(days=1):%Y-%m-%d %H:%M:%S}+00')"
        ), (name, kids[name])
    assert (
        conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'partguard%'").fetchone()[0]
        == 0
    )
    assert (
        conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'partguard%'"
        ).fetchone()[0]
        == 0
    )
    left = conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'split\\_%' AND relname NOT LIKE "
        "'split\\_run%'"
    ).fetchall()
    assert left == []
    # every child's indexes are attached to the parent's (ATTACH adopted the ones built)
    unattached = conn.execute("""
        SELECT ic.relname FROM pg_inherits i JOIN pg_index x ON x.indrelid = i.inhrelid
        JOIN pg_class ic ON ic.oid = x.indexrelid
        WHERE i.inhparent = 'public.fixes'::regclass
          AND NOT EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)""").fetchall()
    assert unattached == []


def run_cli(dsn: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, so it can be SIGKILLed like an OOM-killed job."""
    env = dict(os.environ)
    env.pop("PARTGUARD_FAULT", None)
    if fault:
        env["PARTGUARD_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "partguard", "split", "-d", dsn, "public.fixes", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(params=[True, False], ids=["pk", "no-pk"])
def pk(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


# --- the tests ----------------------------------------------------------------------------------


def test_recut_under_writer_and_reader_keeps_every_row_and_every_write(
    conn: Conn, dsn: str, partman_version: str | None, pk: bool, run: Any
) -> None:
    recut_under_fire(conn, dsn, partman_version, pk, run)


def test_recut_of_a_table_without_partman_under_writer_and_reader(
    conn: Conn, dsn: str, pk: bool, run: Any
) -> None:
    recut_under_fire(conn, dsn, None, pk, run)


def recut_under_fire(conn: Conn, dsn: str, partman_version: str | None, pk: bool, run: Any) -> None:
    w = build(conn, partman_version, pk=pk)
    writer = Writer(dsn, rows(conn), w).start(0.2)
    reader = Reader(dsn, stable_count(conn)).start()
    try:
        rc, out, err = run(
            "split",
            "-d",
            dsn,
            "public.fixes",
            "--yes",
            "--jobs",
            "2",
            "--chunk-pages",
            "8",
            "--format",
            "json",
        )
    finally:
        time.sleep(0.1)
        writer.stop()
        reader.stop()
    assert rc == 0, err
    assert writer.errors == []
    assert min(writer.ops[k] for k in ("insert", "update", "move", "delete")) > 3, writer.ops
    assert reader.reads > 20 and reader.wrong == []
    assert rows(conn) == +writer.expected
    assert_recut(conn, w)
    outcome = json.loads(out)
    (recut,) = outcome["recuts"]
    assert recut["sources"] == [w.wide] and len(recut["targets"]) == WIDE_DAYS
    assert (
        recut["changes_replayed"] > 0
    )  # the writer's changes during the copy came through the log
    codes = {f["code"] for f in outcome["findings_after"]}
    assert not codes & {"wide_child", "misaligned", "gap", "default_rows"}, outcome[
        "findings_after"
    ]
    if partman_version:
        assert_partman_healthy(conn, ZoneInfo("UTC"))


@pytest.mark.parametrize(
    "fault",
    [
        "split:captured",
        "split:in-prepared",
        "split:copy",
        "split:copied",
        "split:index",
        "split:replay",
        "split:in-swapped",
        "split:swapped",
    ],
)
def test_sigkill_at_each_phase_then_rerun_finishes(
    conn: Conn, dsn: str, fault: str, run: Any
) -> None:
    w = build(conn, None, pk=False)
    writer = Writer(dsn, rows(conn), w).start(0.2)
    try:
        crashed = run_cli(dsn, "--yes", "--chunk-pages", "8", fault=fault)
        assert crashed.returncode == -9, crashed.stderr
        # check sees partguard's own unfinished work: the capture trigger is still there.
        rc, out, _ = run("check", "-d", dsn, "--format", "json")
        left = [f for f in json.loads(out)["findings"] if f["code"] == "unfinished_fix"]
        assert rc == 2 and [f["detail"]["kind"] for f in left] == ["split"], left
        assert left[0]["severity"] == "critical" and "partguard split" in left[0]["message"]
        status = run_cli(dsn, "--status")
        assert "INTERRUPTED" in status.stdout, (
            status.stdout
        )  # a kill inside a transaction rolls it back
        resumed = run_cli(dsn, "--yes", "--chunk-pages", "8", "--jobs", "2")
        assert resumed.returncode == 0, resumed.stderr
    finally:
        writer.stop()
    assert writer.errors == []
    assert rows(conn) == +writer.expected
    assert_recut(conn, w)


@pytest.mark.parametrize(
    "fault", ["split:captured", "split:guarded", "split:copy", "split:index", "split:replay"]
)
def test_abort_after_a_kill_restores_the_exact_original(
    conn: Conn, dsn: str, partman_version: str | None, fault: str
) -> None:
    w = build(conn, partman_version, pk=True)
    before = fingerprint(conn)
    writer = Writer(dsn, rows(conn), w).start(0.2)
    try:
        crashed = run_cli(dsn, "--yes", "--chunk-pages", "8", fault=fault)
        assert crashed.returncode == -9, crashed.stderr
        assert fingerprint(conn) != before  # the trigger at least
        aborted = run_cli(dsn, "--abort", "--yes")
        assert aborted.returncode == 0, aborted.stderr
    finally:
        writer.stop()
    assert writer.errors == []
    assert fingerprint(conn) == before
    assert rows(conn) == +writer.expected
    assert conn.execute("SELECT state FROM partguard.split_run").fetchall() == [("aborted",)]


def test_a_blocker_is_named_and_nothing_changes(conn: Conn, dsn: str, run: Any) -> None:
    w = build(conn, None, pk=True)
    before, data = fingerprint(conn), rows(conn)
    with psycopg.connect(dsn) as blocker:  # a long transaction that read the table
        blocker.execute("SELECT count(*) FROM public.fixes")
        pid = blocker.info.backend_pid
        rc, _, err = run(
            "split", "-d", dsn, "public.fixes", "--yes", "--lock-timeout", "100ms", "--retries", "1"
        )
        blocker.rollback()
    assert rc == 75, err
    assert (
        f"pid {pid}" in err
        and "SELECT count(*) FROM public.fixes" in err
        and "nothing changed" in err
    )
    assert len(err.strip().splitlines()) == 1
    assert fingerprint(conn) == before and rows(conn) == data
    assert w.wide in dict(children(conn))


def test_dry_run_is_a_psql_script_that_performs_the_recut(
    conn: Conn, dsn: str, partman_version: str | None, cluster: Any, run: Any, tmp_path: Path
) -> None:
    w = build(conn, partman_version, pk=False)
    before = fingerprint(conn)
    rc, script, err = run("split", "-d", dsn, "public.fixes", "--dry-run")
    assert rc == 0, err
    assert fingerprint(conn) == before  # the dry run changed nothing
    plan = tmp_path / "plan.sql"
    plan.write_text(script)
    writer = Writer(dsn, rows(conn), w).start(0.2)
    try:
        psql = subprocess.run(
            [
                str(cluster.pg_bin / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                dsn,
                "-f",
                str(plan),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        writer.stop()
    assert psql.returncode == 0, psql.stderr
    assert writer.errors == []
    assert rows(conn) == +writer.expected
    assert_recut(conn, w)
    assert conn.execute(
        "SELECT state, finished_at IS NOT NULL FROM partguard.split_run"
    ).fetchall() == [("done", True)]
    if partman_version:
        assert_partman_healthy(conn, ZoneInfo("UTC"))


def test_hostile_names_stay_inside_their_quotes(
    conn: Conn, dsn: str, cluster: Any, run: Any, tmp_path: Path
) -> None:
    """A child named to break out of a comment or a quote: the script still only re-cuts."""
    wide = build(conn, None, pk=True).wide
    evil = "ev'\n*/ DROP TABLE victim; --\r$$"
    conn.execute("CREATE TABLE public.victim (x int)")
    conn.execute(
        sql.SQL("ALTER TABLE public.{} RENAME TO {}").format(
            sql.Identifier(wide), sql.Identifier(evil)
        )
    )
    rc, script, err = run("split", "-d", dsn, "public.fixes", "--dry-run", "--child", evil)
    assert rc == 0, err
    plan = tmp_path / "plan.sql"
    plan.write_text(script)
    psql = subprocess.run(
        [
            str(cluster.pg_bin / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn,
            "-f",
            str(plan),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert psql.returncode == 0, psql.stderr
    assert conn.execute("SELECT to_regclass('public.victim') IS NOT NULL").fetchone()[0]
    assert evil not in dict(children(conn))
    assert len(children(conn)) == 15 + 1  # a child per day again, and the DEFAULT


def test_library_call_for_fix(conn: Conn, dsn: str) -> None:
    """What ``fix`` will call on the wide child its instant swap leaves."""
    w = build(conn, None, pk=True)
    data = rows(conn)
    c = connect(dsn)
    try:
        outcome = split(c, dsn, SplitRequest("public.fixes", children=(w.wide,), lock_timeout=2.0))
    finally:
        c.close()
    assert outcome.status == "done"
    (recut,) = outcome.recuts
    assert recut.rows_copied == sum(n for r, n in data.items() if w.lo <= r[1] < w.hi)
    assert 0 < recut.swap_lock_s < 5
    assert rows(conn) == data
    assert_recut(conn, w)
    again = connect(dsn)
    try:
        assert split(again, dsn, SplitRequest("public.fixes")).status == "nothing_to_do"
    finally:
        again.close()


# --- the planner, offline ----------------------------------------------------------------------


def test_spans_clip_the_grid_to_the_group() -> None:
    grid = time_grid(Interval(days=1), "Europe/Berlin")
    lo = datetime(2026, 11, 28, 23, tzinfo=UTC)  # Berlin midnight
    hi = datetime(2026, 11, 30, 0, tzinfo=UTC)  # a UTC-bounded child's end
    got = [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in spans(grid, lo, hi)]
    assert got == [
        (lo, datetime(2026, 11, 29, 23, tzinfo=UTC)),
        (datetime(2026, 11, 29, 23, tzinfo=UTC), hi),
    ]


def _plan() -> SplitPlan:
    lo = datetime(2026, 11, 28, tzinfo=UTC)
    day = timedelta(days=1)
    return SplitPlan(
        tag="t",
        table="public.ev",
        schema="public",
        parent_schema="public",
        parent="ev",
        key="ts",
        key_type="timestamp with time zone",
        sources=(Source("public", "ev_p20261128", lo, lo + 2 * day, "h"),),
        targets=(
            Target(
                "split_t_t1",
                "ev_p20261128",
                lo,
                lo + day,
                ("ev_p20261128_ts_idx",),
                ("split_t_t1_i1",),
            ),
            Target(
                "ev_p20261129",
                "ev_p20261129",
                lo + day,
                lo + 2 * day,
                ("ev_p20261129_ts_idx",),
                ("ev_p20261129_ts_idx",),
            ),
        ),
        columns=("id", "ts"),
        generated=(),
        identity=(),
        indexes=(IndexSpec("btree (ts)", False, "", False, False),),
        replay_index=False,
        default=None,
        owner="o",
        grants=(("app", "SELECT", False),),
        reloptions=("fillfactor=90",),
        tablespace=None,
        unlogged=False,
        checks=(),
        keep_source=False,
    )


def test_plan_round_trips_through_the_journal() -> None:
    p = _plan()
    assert SplitPlan.from_json(p.as_json()) == p
    assert split_steps.steps(SplitPlan.from_json(p.as_json())) == split_steps.steps(p)


def test_steps_golden() -> None:
    p = _plan()
    kinds = [(s.kind, s.name) for s in split_steps.steps(p)]
    assert kinds == [
        ("catalog_tx", "captured"),
        ("catalog_tx", "prepared"),
        ("copy_ranges", "copied"),
        ("catalog_tx", "unrouted"),
        ("build_index", "indexed"),
        ("replay", ""),
        ("swap", "swapped"),
        ("cleanup", "done"),
    ]
    swap = [s.as_string(None) for s in split_steps.swap(p).statements]
    assert not any(
        s.startswith("DROP") for s in swap
    )  # a DROP unlinks files at commit, under the lock
    assert (
        swap[0]
        == 'LOCK TABLE ONLY "public"."ev", ONLY "public"."ev_p20261128" IN ACCESS EXCLUSIVE MODE'
    )
    assert 'ALTER TABLE "public"."split_t_t1" RENAME TO "ev_p20261128"' in swap
    assert 'ALTER INDEX "public"."split_t_t1_i1" RENAME TO "ev_p20261128_ts_idx"' in swap
    assert not any(
        "ev_p20261129_ts_idx" in s and "RENAME" in s for s in swap
    )  # built under its own name
    copy = split_steps.copy(p)
    ((stmt,),) = copy.groups
    filled = split_steps.fill(stmt, {"lo": sql.SQL("'(0,0)'::tid"), "hi": sql.SQL("'(8,0)'::tid")})
    assert filled.as_string(None).endswith("WHERE ctid >= '(0,0)'::tid AND ctid < '(8,0)'::tid")
    with pytest.raises(TypeError):
        stmt.as_string(None)  # a hole must be filled before it runs
    script = split_steps.script([p], 2.0)
    assert "pg_relation_size" in script and "%(" not in script
    comments = [line for line in script.splitlines() if line.startswith("--")]
    assert not any("ev_p" in line for line in comments)  # names never go into comments


def test_incident_berlin_grid_and_the_old_scripts_utc_child_end_on_partmans_grid(
    conn: Conn, dsn: str, partman: str, run: Any
) -> None:
    """The incident's likely real state: partman on a Europe/Berlin grid, a UTC-bounded day
    the old script made in the gap (named by its UTC date), and the two off-grid slivers
    ``fix`` then filled the gaps with. split lays them on partman's grid, named its way,
    and partman's maintenance works again."""
    zone = ZoneInfo("Europe/Berlin")
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET TimeZone = 'Europe/Berlin'").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    with psycopg.connect(
        dsn, autocommit=True
    ) as c:  # a session in the database's zone, as cron's psql
        c.execute("""
            CREATE TABLE public.fixes (id bigint NOT NULL, received_at timestamptz NOT NULL,
                device_id int NOT NULL, v int, note text,
                speed real GENERATED ALWAYS AS (v * 3.6) STORED, PRIMARY KEY (id, received_at))
            PARTITION BY RANGE (received_at);
            CREATE INDEX ON public.fixes (received_at);""")
        today: date = c.execute("SELECT (now() AT TIME ZONE 'Europe/Berlin')::date").fetchone()[0]
        start = datetime(today.year, today.month, today.day, tzinfo=zone) - timedelta(days=10)
        create_parent(
            c,
            "public.fixes",
            "received_at",
            "1 day",
            premake=4,
            start=start.isoformat(),
            tz="Europe/Berlin",
        )
        stopped = datetime.combine(today - timedelta(days=3), datetime.min.time(), zone)
        for name, bound in children(c):
            if bound != "DEFAULT" and datetime.fromisoformat(bound.split("'")[1]) >= stopped:
                c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", name)))
        utc_day = today - timedelta(days=2)
        c.execute(
            sql.SQL(
                "CREATE TABLE {} PARTITION OF public.fixes FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier("public", f"fixes_p{utc_day:%Y%m%d}"),
                sql.Literal(midnight(utc_day)),
                sql.Literal(midnight(utc_day + timedelta(days=1))),
            )
        )
        c.execute(
            "INSERT INTO public.fixes (id, received_at, device_id, v) "
            "SELECT i, %s::timestamptz + (now() - %s::timestamptz) * i / 6000, i %% 50, i "
            "FROM generate_series(1, 6000) i",
            (start, start),
        )
    data = rows(conn)
    rc, _, err = run("fix", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0, err
    # fix (auto) ends with them re-cut: nothing is left off the Berlin grid, and partman's own
    # maintenance, which failed before on every version (4.7: "timestamp out of range"), works.
    off = [
        n
        for n, b in children(conn)
        if b != "DEFAULT"
        and "23:00:00+00" not in b.split("TO")[0]
        and "22:00:00+00" not in b.split("TO")[0]
    ]
    assert off == [], off
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT partman.run_maintenance('public.fixes')")

    rc, _, err = run("split", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0, err
    assert rows(conn) == data
    fmt = "%Y_%m_%d" if partman.startswith("4.") else "%Y%m%d"
    kids = [(n, b) for n, b in children(conn) if b != "DEFAULT"]
    for name, bound in kids:
        lo, hi = (
            datetime.fromisoformat(x.split("'")[1]).astimezone(zone) for x in bound.split(" TO ")
        )
        assert (lo.hour, lo.minute, hi.hour, hi.minute) == (0, 0, 0, 0), (name, bound)
        assert (hi.date() - lo.date()).days == 1, (name, bound)
        assert name == f"fixes_p{lo:{fmt}}", (name, bound)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert_partman_healthy(c, zone)


def assert_partman_healthy(c: Conn, zone: ZoneInfo) -> None:
    """partman's maintenance works (several runs, premake raised) and the children tile the
    time line, one local day each."""
    c.execute("UPDATE partman.part_config SET premake = 8 WHERE parent_table = 'public.fixes'")
    for _ in range(3):
        c.execute("SELECT partman.run_maintenance('public.fixes')")
    c.execute("SELECT * FROM partman.show_partitions('public.fixes')").fetchall()
    kids = [b for _, b in children(c) if b != "DEFAULT"]
    spans_ = [
        tuple(datetime.fromisoformat(x.split("'")[1]).astimezone(zone) for x in b.split(" TO "))
        for b in kids
    ]
    for (_, hi1), (lo2, _) in itertools.pairwise(spans_):
        assert hi1 == lo2, f"gap or overlap between {hi1} and {lo2}"
    assert all((hi.date() - lo.date()).days == 1 and lo.hour == 0 for lo, hi in spans_), spans_


def _state(bounds: list[tuple[str, datetime, datetime]], zone: str) -> Any:
    from partguard.inspect.catalog import Child, Column, Table
    from partguard.inspect.snapshot import GridInfo, TableState

    kids = tuple(
        Child(n, "public", name, lo, hi, False, False, 0, "")
        for n, (name, lo, hi) in enumerate(bounds)
    )
    table = Table(
        1,
        "public",
        "fixes",
        "range",
        ("ts",),
        False,
        "timestamp with time zone",
        True,
        "o",
        kids,
        None,
        (Column("ts", "timestamp with time zone", True, False, ""),),
    )
    return TableState(
        table, None, GridInfo(time_grid(Interval(days=1), zone), "partman"), None, None, None
    )


def test_groups_join_an_off_grid_child_with_the_slivers_beside_it() -> None:
    """Berlin days start at 23:00 UTC: the old script's UTC day and the two slivers fix left
    around it are one group, whose span is exactly two Berlin days."""
    from partguard.plan.split import groups

    h = timedelta(hours=1)
    d = datetime(2026, 11, 29, tzinfo=UTC)
    bounds = [
        ("a", d - 25 * h, d - h),
        ("sliver1", d - h, d),
        ("utc", d, d + 24 * h),
        ("sliver2", d + 24 * h, d + 47 * h),
        ("b", d + 47 * h, d + 71 * h),
        ("wide", d + 71 * h, d + 119 * h),
    ]
    state = _state(bounds, "Europe/Berlin")
    got = [[c.name for c in g] for g in groups(state)]
    assert got == [["sliver1", "utc", "sliver2"], ["wide"]]
    assert [[c.name for c in g] for g in groups(state, ("utc",))] == [["sliver1", "utc", "sliver2"]]
    (g, _) = groups(state)
    assert len(spans(state.grid.grid, g[0].lower, g[-1].upper)) == 2


def test_a_table_partguard_cannot_handle_is_refused_as_fix_refuses_it(
    conn: Conn, dsn: str, run: Any
) -> None:
    """A LIST-partitioned table: exit 65 (unsupported), as for fix and check, not 67."""
    conn.execute(
        "CREATE TABLE public.by_region (region text, v int) PARTITION BY LIST (region); "
        "CREATE TABLE public.by_region_eu PARTITION OF public.by_region FOR VALUES IN ('eu')"
    )
    for argv in (("split", "--yes"), ("split", "--dry-run"), ("fix", "--yes")):
        rc, out, err = run(argv[0], "-d", dsn, "public.by_region", *argv[1:])
        assert (rc, out) == (65, ""), (argv, rc, err)
        assert len(err.strip().splitlines()) == 1 and "list-partitioned" in err, err
