"""Benchmark: repairing a DEFAULT partition that holds an outage's rows, every known way.

    .venv/bin/python benchmarks/bench_fix.py [--rows 1000000] [--quick] [--rounds 5]

One throwaway cluster, one incident database built once (``base``), and for every method a
fresh, byte-identical copy of it (``CREATE DATABASE … TEMPLATE base``) whose DEFAULT is
prewarmed into shared_buffers, so every method starts from the same state. A writer thread
inserts a row every ~5 ms (alternately for now and for a moment of the outage days) during
each method and records failed writes and its longest insert. Every ratio printed is
computed from times measured in this run; nothing is hard-coded but the issue's targets.
Every method runs ``--rounds`` times, interleaved, and the median counts: on a shared 2-core
machine other work easily doubles one run. Server CPU seconds (the work done) and the CPU
pressure during each run are printed next to the times to tell the two apart.

The incident: ``public.fixes`` (26 columns like a GPS fix table, a generated STORED column,
PK (id, received_at), indexes (received_at) and (device_id, received_at)), daily children by
pg_partman (the sandbox's default version; ``partguard.testing.make_incident``, as the tests
and the demo build it); maintenance stopped three days ago, so the children from then on are
missing and N rows sit in the DEFAULT.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from partguard.commands.fix import FixOutcome, FixRequest, fix
from partguard.db import ConnParams, connect
from partguard.plan.fix import FixOptions
from partguard.sandbox import Sandbox
from partguard.testing.build import make_incident
from partguard.testing.live import Insert, Writer

# Tuned for bulk work. fsync/synchronous_commit/full_page_writes are off already (the
# sandbox's defaults); autovacuum is off so no background worker competes for the 2 cores
# in the middle of one method and not another.
SETTINGS: dict[str, str] = {
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "min_wal_size": "1GB",
    "maintenance_work_mem": "256MB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    # Where the time goes: every statement slower than this lands in the server log, which
    # is parsed at the end (per database, i.e. per method).
    "log_min_duration_statement": "10ms",
    "log_line_prefix": "%m [%p] db=%d app=%a ",
}

TABLE = sql.Identifier("public", "fixes")
DEFAULT = sql.Identifier("public", "fixes_default")
GENERATED = "speed_kmh"
WRITER_FIRST_ID = 10**12  # far above the dataset's ids
WRITER_PERIOD = 0.005

COLUMNS = (  # the insertable columns, in order (speed_kmh is GENERATED ALWAYS … STORED)
    "id",
    "received_at",
    "fix_uuid",
    "device_id",
    "device_serial",
    "source",
    "provider",
    "tags",
    "latitude",
    "longitude",
    "altitude_m",
    "accuracy_m",
    "speed_ms",
    "heading_deg",
    "hdop",
    "vdop",
    "satellites",
    "battery_pct",
    "signal_dbm",
    "seq_no",
    "odometer_m",
    "is_moving",
    "is_valid",
    "ignition",
    "device_time",
)

DDL = """
CREATE TABLE public.fixes (
    id            bigint NOT NULL,
    received_at   timestamptz NOT NULL,
    fix_uuid      uuid NOT NULL,
    device_id     integer NOT NULL,
    device_serial text NOT NULL,
    source        text NOT NULL,
    provider      text,
    tags          text[],
    latitude      double precision NOT NULL,
    longitude     double precision NOT NULL,
    altitude_m    double precision,
    accuracy_m    real,
    speed_ms      real,
    heading_deg   real,
    hdop          real,
    vdop          real,
    satellites    smallint,
    battery_pct   smallint,
    signal_dbm    integer,
    seq_no        integer,
    odometer_m    bigint,
    is_moving     boolean,
    is_valid      boolean NOT NULL DEFAULT true,
    ignition      boolean,
    device_time   timestamptz,
    speed_kmh     real GENERATED ALWAYS AS (speed_ms * 3.6) STORED,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX ON public.fixes (received_at);
CREATE INDEX ON public.fixes (device_id, received_at);
"""

# N rows evenly over [3 days ago 00:00 UTC, now - 1 min): four daily buckets, in time order
# (the heap is as correlated with time as a real insert-only table's).
LOAD = """
INSERT INTO public.fixes (id, received_at, fix_uuid, device_id, device_serial, source, provider, tags,
    latitude, longitude, altitude_m, accuracy_m, speed_ms, heading_deg, hdop, vdop, satellites,
    battery_pct, signal_dbm, seq_no, odometer_m, is_moving, is_valid, ignition, device_time)
SELECT i, t.t0 + (i - 1) * t.span / %(n)s, gen_random_uuid(), i %% 5000,
       'SN-' || lpad((i %% 5000)::text, 6, '0'),
       (ARRAY['gps', 'glonass', 'galileo', 'network'])[1 + i %% 4],
       CASE WHEN i %% 3 = 0 THEN 'carrier-a' ELSE 'carrier-b' END,
       CASE i %% 5 WHEN 0 THEN ARRAY['fleet', 'north'] WHEN 1 THEN ARRAY['fleet'] END,
       52.3 + random() * 0.4, 13.1 + random() * 0.6, 30 + random() * 80,
       (random() * 20)::real, (random() * 35)::real, (random() * 360)::real,
       (0.7 + random())::real, (0.9 + random())::real, (4 + i %% 12)::smallint,
       (i %% 101)::smallint, -50 - i %% 60, i %% 100000, i * 7,
       i %% 4 <> 0, true, i %% 9 <> 0, t.t0 + (i - 1) * t.span / %(n)s - interval '2 seconds'
FROM (SELECT date_trunc('day', now()) - interval '3 days' AS t0,
             now() - interval '1 minute' - (date_trunc('day', now()) - interval '3 days') AS span) t,
     generate_series(1, %(n)s) i
"""

# A writer row: now, or a random moment of the outage days (2-3 days ago).
WRITE_NOW = """INSERT INTO public.fixes (id, received_at, fix_uuid, device_id, device_serial, source,
    latitude, longitude, speed_ms) VALUES (%s, now(), gen_random_uuid(), %s, 'SN-W', 'gps', 52.5, 13.4, 11.5)"""
WRITE_OUTAGE = WRITE_NOW.replace(
    "now(), gen", "now() - interval '2 days' - random() * interval '1 day', gen"
)


def row(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> tuple[Any, ...]:
    """The one row a query returns."""
    got: tuple[Any, ...] | None = conn.execute(query, params).fetchone()
    assert got is not None, query
    return got


# --- the concurrent writer ---------------------------------------------------------


def bench_writer(dsn: str) -> Writer:
    """A row every ~5 ms on its own connection (alternately now and a moment of the outage
    days); records what failed and how long the slowest insert took (an insert waits for
    any lock on the parent or its DEFAULT)."""
    now_, outage = sql.SQL(WRITE_NOW), sql.SQL(WRITE_OUTAGE)

    def inserts(tick: int, rid: int) -> list[Insert]:
        return [("public.fixes", now_ if rid % 2 else outage, (rid, rid % 5000))]

    # a few rows before the method starts, and after it ends
    return Writer(
        dsn,
        inserts,
        next_id=WRITER_FIRST_ID,
        period=WRITER_PERIOD,
        warmup=0.2,
        linger=0.1,
        application_name="bench-writer",
    )


# --- results ------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    rows: int
    seconds: float | None = None
    error: str | None = None
    writer: Writer | None = None
    lock_s: float | None = None  # the parent's longest lock, where the method can tell
    lock_note: str = ""
    verified: str = "n/a"
    db: str = ""
    outcome: FixOutcome | None = None
    detail: list[str] = field(default_factory=list)
    cpu_stall: float | None = None  # share of the run some task waited for a CPU (PSI)
    server_cpu: float | None = None  # CPU seconds the cluster used during the run

    @property
    def failed(self) -> int | None:
        return None if self.writer is None else len(self.writer.errors)

    @property
    def latency_ms(self) -> float | None:
        return None if self.writer is None else self.writer.max_latency * 1000


def cpu_stall_us() -> int | None:
    """PSI: total µs some runnable task waited for a CPU. Other work on the machine shows here."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"total=(\d+)", first)
    return int(m.group(1)) if m else None


def server_cpu_s(datadir: Path) -> float | None:
    """CPU seconds used so far by this cluster: the postmaster, its live children (backends,
    checkpointer, walwriter…) and the children it has reaped. Unlike wall time this barely
    moves when other work on the machine competes for the cores."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")

        def fields(p: int) -> list[str]:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0
        for child in children:
            try:
                f = fields(int(child))
                total += int(f[11]) + int(f[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile: its time is in the postmaster's cutime/cstime
        f = fields(pid)
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
        return total / tick
    except (OSError, IndexError, ValueError):
        return None


# --- the bench ------------------------------------------------------------------------


class Bench:
    def __init__(self, sandbox: Sandbox, rows: int) -> None:
        self.sb = sandbox
        self.rows = rows
        self.counter = 0
        self.bases: dict[
            int, tuple[str, int, int]
        ] = {}  # rows -> (db, rows in DEFAULT, rows in table)
        self.dbs: dict[str, str] = {}  # copy db -> method label (for the server-log analysis)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- the incident dataset -----------------------------------------------------------

    def build(self, rows: int) -> None:
        name = f"base_{rows}"
        t0 = time.perf_counter()
        self.sb.create_database(name, partman=True)
        with psycopg.connect(self.sb.dsn(name), autocommit=True, application_name="bench") as c:
            c.execute("CREATE EXTENSION pg_prewarm")
            c.execute(DDL)
            # Daily children by pg_partman; maintenance "stopped" three days ago: every child
            # from then on is missing.
            gap = make_incident(
                c, "public.fixes", key="received_at", partman=True, premake=4, jobmon=False
            )
            c.execute(LOAD, {"n": rows})
            c.execute("VACUUM (ANALYZE) public.fixes")
            in_default = row(c, "SELECT count(*) FROM public.fixes_default")[0]
            total = row(c, "SELECT count(*) FROM public.fixes")[0]
            size = row(
                c,
                """SELECT pg_size_pretty(pg_table_size('public.fixes_default')),
                                    pg_size_pretty(pg_indexes_size('public.fixes_default')),
                                    (SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.fixes'::regclass)""",
            )
        self.bases[rows] = (name, in_default, total)
        self.log(
            f"built {name}: {in_default} rows in the DEFAULT (heap {size[0]}, indexes {size[1]}), "
            f"{size[2]} partitions incl. DEFAULT, none from {gap:%Y-%m-%d} on, "
            f"{time.perf_counter() - t0:.1f}s"
        )

    def fresh_copy(self, rows: int, label: str) -> str:
        base = self.bases[rows][0]
        self.counter += 1
        db = f"copy_{self.counter:02d}"
        with psycopg.connect(self.sb.dsn(), autocommit=True, application_name="bench") as c:
            # FILE_COPY: a plain file copy (no WAL for every page), much faster for a big template.
            c.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(db), sql.Identifier(base)
                )
            )
        with psycopg.connect(self.sb.dsn(db), autocommit=True, application_name="bench") as c:
            # The same cache state for everyone: the DEFAULT's heap and indexes in shared_buffers.
            row(
                c,
                """SELECT pg_prewarm('public.fixes_default'),
                                (SELECT sum(pg_prewarm(indexrelid)) FROM pg_index
                                 WHERE indrelid = 'public.fixes_default'::regclass)""",
            )
            c.execute("CHECKPOINT")
        self.dbs[db] = label
        return db

    def drop(self, db: str) -> None:
        with psycopg.connect(self.sb.dsn(), autocommit=True, application_name="bench") as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))

    # -- running one method -------------------------------------------------------------

    def run(
        self,
        label: str,
        method: Callable[[str, Result], None],
        *,
        rows: int | None = None,
        writer: bool = True,
        verify: bool = True,
    ) -> Result:
        rows = rows or self.rows
        db = self.fresh_copy(rows, label)
        dsn = self.sb.dsn(db)
        res = Result(label, rows, db=db)
        self.log(f"{label} @ {rows} rows ({db}) …")
        w = bench_writer(dsn).start() if writer else None
        t0, stall0, cpu0 = time.perf_counter(), cpu_stall_us(), server_cpu_s(self.sb.datadir)
        try:
            method(dsn, res)
        except Exception as exc:  # noqa: BLE001 - a method failing is a result
            res.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        wall, stall1, cpu1 = time.perf_counter() - t0, cpu_stall_us(), server_cpu_s(self.sb.datadir)
        if cpu0 is not None and cpu1 is not None:
            res.server_cpu = cpu1 - cpu0
        if stall0 is not None and stall1 is not None and wall > 0:
            res.cpu_stall = (stall1 - stall0) / 1e6 / wall
        if res.seconds is None:
            res.seconds = wall
        if w is not None:
            res.writer = w.stop()
        if verify:
            res.verified = self.verify(dsn, rows, res)
        self.log(
            f"  {res.seconds:.2f}s"
            + (f", error: {res.error}" if res.error else "")
            + (f", cpu stall {res.cpu_stall:.0%}" if res.cpu_stall is not None else "")
            + (f", server cpu {res.server_cpu:.2f}s" if res.server_cpu is not None else "")
            + (f", {res.failed} failed writes, max insert {res.latency_ms:.0f} ms" if w else "")
            + f", verified: {res.verified}"
        )
        self.drop(db)
        return res

    def verify(self, dsn: str, rows: int, res: Result) -> str:
        """Rows after == rows before + the writer's committed rows, each id once, the
        writer's ids exactly the committed ones, and nothing left in the DEFAULT."""
        before = self.bases[rows][2]
        committed = res.writer.committed if res.writer else set()
        with psycopg.connect(dsn, autocommit=True, application_name="bench") as c:
            n, distinct = row(c, "SELECT count(*), count(DISTINCT id) FROM public.fixes")
            mine = {
                r[0]
                for r in c.execute("SELECT id FROM public.fixes WHERE id > %s", (WRITER_FIRST_ID,))
            }
            has_default = row(c, "SELECT to_regclass('public.fixes_default') IS NOT NULL")[0]
            left = row(c, "SELECT count(*) FROM public.fixes_default")[0] if has_default else 0
            attached = row(
                c,
                """SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                                    WHERE i.inhparent = 'public.fixes'::regclass
                                      AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'""",
            )[0]
        problems = []
        if n != before + len(committed):
            problems.append(f"rows {n} != {before} + {len(committed)}")
        if distinct != n:
            problems.append(f"{n - distinct} duplicates")
        if mine != committed:
            problems.append(
                f"writer rows: {len(committed - mine)} lost, {len(mine - committed)} unexpected"
            )
        if left:
            problems.append(f"{left} rows still in the DEFAULT")
        tail = "" if attached else " (no DEFAULT left)"
        if problems == [f"{left} rows still in the DEFAULT"] and res.error:
            return f"no row lost; aborted with {left} rows still in the DEFAULT"
        return ("ok" + tail) if not problems else "FAIL: " + "; ".join(problems)

    # -- RSS of the CLI, in its own process ----------------------------------------------

    def cli_rss(self, rows: int, args: list[str]) -> tuple[float, Result]:
        """Run ``python -m partguard fix …`` as a child and read its own peak RSS (wait4)."""
        label = f"CLI: python -m partguard fix {' '.join(args)} (wall incl. start-up)"

        def method(dsn: str, res: Result) -> None:
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "partguard",
                        "fix",
                        "-d",
                        dsn,
                        "public.fixes",
                        "--yes",
                        *args,
                        "--format",
                        "json",
                    ],
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                )
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                rss_kb[0] = usage.ru_maxrss  # kB on Linux
                if proc.returncode != 0:
                    err.seek(0)
                    raise RuntimeError(
                        f"exit {proc.returncode}: {err.read().decode(errors='replace').strip()}"
                    )

        rss_kb = [0]
        res = self.run(label, method, rows=rows)
        return rss_kb[0] / 1024, res


def interpreter_rss() -> float:
    """Peak RSS of the CLI doing nothing (imports only): the floor under the figures above."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "partguard", "--version"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024


# --- the methods ----------------------------------------------------------------------


def partguard_fix(strategy: str, jobs: int) -> Callable[[str, Result], None]:
    """The library call the CLI makes (timed around it: analysis and planning included)."""

    def method(dsn: str, res: Result) -> None:
        params = ConnParams(dbname=dsn)
        t0 = time.perf_counter()
        conn = connect(params)
        try:
            out = fix(
                conn, params, FixRequest("public.fixes", FixOptions(strategy=strategy, jobs=jobs))
            )
        finally:
            conn.close()
        res.seconds = time.perf_counter() - t0
        res.outcome = out
        res.lock_s = out.longest_lock_s
        longest = max(out.locks_s, key=lambda k: out.locks_s[k]) if out.locks_s else "-"
        res.lock_note = f"FixOutcome.longest_lock_s ({longest})"
        if out.status != "done":
            raise RuntimeError(f"fix status {out.status}: {out.notes}")
        res.detail.append(
            f"status {out.status}, strategy {out.strategy}, duration_s {out.duration_s:.3f} "
            f"(inside _execute), rows_moved {out.rows_moved}, children created {len(out.children_created)}, "
            f"quarantined {out.quarantine_rows}, maintenance {out.maintenance}"
        )
        res.detail.append(
            "locks_s: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in out.locks_s.items())
        )

    return method


def old_script(dsn: str, res: Result) -> None:
    """The incident's script, statement by statement in autocommit (as psql -c would):
    detach, find the days, create their children, move each day with DELETE…RETURNING →
    INSERT, check empty, drop, partman maintenance. Children are named by partman 4.7's
    convention here (the real script's ``_p20261122`` names break partman's maintenance)."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    parent_locks: list[float] = []
    with psycopg.connect(dsn, autocommit=True, application_name="old-script") as c:
        c.execute("SET TimeZone = 'UTC'")

        def timed(stmt: sql.Composed, params: Any = None, parent: bool = False) -> Any:
            t0 = time.perf_counter()
            cur = c.execute(stmt, params)
            if parent:
                parent_locks.append(time.perf_counter() - t0)
            return cur

        timed(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(TABLE, DEFAULT), parent=True)
        days = [
            r[0]
            for r in timed(
                sql.SQL("SELECT DISTINCT date_trunc('day', received_at) FROM {} ORDER BY 1").format(
                    DEFAULT
                )
            )
        ]
        for d in days:
            timed(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier("public", f"fixes_p{d:%Y_%m_%d}"),
                    TABLE,
                    sql.Literal(d),
                    sql.SQL("{}::timestamptz + interval '1 day'").format(sql.Literal(d)),
                ),
                parent=True,
            )
        for d in days:
            timed(
                sql.SQL(
                    "WITH moved AS (DELETE FROM {src} WHERE received_at >= {d} AND received_at < {d}::timestamptz "
                    "+ interval '1 day' RETURNING *) INSERT INTO {parent} ({cols}) SELECT {cols} FROM moved"
                ).format(src=DEFAULT, d=sql.Literal(d), parent=TABLE, cols=cols)
            )
        left = timed(sql.SQL("SELECT count(*) FROM {}").format(DEFAULT)).fetchone()[0]
        if left:
            raise RuntimeError(f"{left} rows left in the detached DEFAULT")
        timed(sql.SQL("DROP TABLE {}").format(DEFAULT))
        timed(
            sql.SQL("SELECT partman.run_maintenance('public.fixes', p_jobmon := false)").format(),
            parent=True,
        )
    res.lock_s = max(parent_locks)
    res.lock_note = "longest statement that locks the parent (detach/create/maintenance)"
    res.detail.append(f"{len(days)} days moved")


def partman_repair(dsn: str, res: Result) -> None:
    """pg_partman 4.7's own: partition_data_proc moves one child's worth per transaction
    (p_wait := 0: its default sleeps 1 s between batches), then maintenance premakes."""
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True, application_name="partman") as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("SET TimeZone = 'UTC'")
        try:
            c.execute(
                sql.SQL(
                    "CALL partman.partition_data_proc('public.fixes', p_wait := 0, "
                    "p_ignored_columns := ARRAY[{}])"
                ).format(sql.Literal(GENERATED))
            )
        finally:
            batches = [n for n in notices if n.startswith("Batch")]
            res.detail.append(
                f"{len(batches)} batches committed" + (f" (last: {batches[-1]})" if batches else "")
            )
        c.execute("SELECT partman.run_maintenance('public.fixes', p_jobmon := false)")


def plain_table(name: str, indexed: bool) -> list[sql.Composed]:
    ident = sql.Identifier("public", name)
    stmts = [
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED)").format(
            ident, TABLE
        )
    ]
    if indexed:
        stmts += plain_indexes(ident)
    return stmts


def plain_indexes(ident: sql.Identifier) -> list[sql.Composed]:
    return [
        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, received_at)").format(ident),
        sql.SQL("CREATE INDEX ON {} (received_at)").format(ident),
        sql.SQL("CREATE INDEX ON {} (device_id, received_at)").format(ident),
    ]


def plain_insert(ident: sql.Identifier) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    return sql.SQL("INSERT INTO {} ({cols}) SELECT {cols} FROM {}").format(
        ident, DEFAULT, cols=cols
    )


def copy_limit(dsn: str, res: Result) -> None:
    """One INSERT … SELECT of the DEFAULT's rows into a plain table that already has the
    same PK and two indexes: what a single session can write, index maintenance included."""
    ident = sql.Identifier("public", "plain_limit")
    with psycopg.connect(dsn, autocommit=True, application_name="plain-copy") as c:
        for stmt in plain_table("plain_limit", indexed=True):  # empty: not timed
            c.execute(stmt)
        t0 = time.perf_counter()
        n = c.execute(plain_insert(ident)).rowcount
        res.seconds = time.perf_counter() - t0
    res.detail.append(f"{n} rows")


def bulk_floor(dsn: str, res: Result) -> None:
    """The same rows into an unindexed plain table, then the three indexes built: the
    fastest way those rows and indexes can come to exist on this server (timed together)."""
    ident = sql.Identifier("public", "plain_floor")
    with psycopg.connect(dsn, autocommit=True, application_name="plain-copy") as c:
        for stmt in plain_table("plain_floor", indexed=False):
            c.execute(stmt)
        t0 = time.perf_counter()
        n = c.execute(plain_insert(ident)).rowcount
        t1 = time.perf_counter()
        for stmt in plain_indexes(ident):
            c.execute(stmt)
        res.seconds = time.perf_counter() - t0
    res.detail.append(f"{n} rows: insert {t1 - t0:.2f}s + indexes {res.seconds - (t1 - t0):.2f}s")


# --- the server log: where the time went ------------------------------------------------

_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_LOG = re.compile(
    r"db=(\S*) app=(\S*) LOG:  duration: ([\d.]+) ms  (?:statement|execute [^:]*): (.*)", re.DOTALL
)


def statement_profile(
    logfile: Path, dbs: dict[str, str]
) -> dict[str, list[tuple[str, int, float, float]]]:
    """Per method: (statement, count, total ms, max ms) of every statement over 10 ms,
    except the harness's own (application_name bench)."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return {}
    entries: list[str] = []
    for line in text.splitlines():  # a multi-line statement continues on lines without a timestamp
        if _ENTRY.match(line) or not entries:
            entries.append(line)
        else:
            entries[-1] += "\n" + line
    agg: dict[str, dict[str, list[float]]] = {}
    for entry in entries:
        m = _LOG.search(entry)
        if not m or m.group(1) not in dbs or m.group(2) == "bench":
            continue
        db, app, ms = m.group(1), m.group(2), float(m.group(3))
        stmt = re.sub(r"\s+", " ", m.group(4)).strip()
        key = f"[{app or '-'}] " + stmt[:110]
        agg.setdefault(db, {}).setdefault(key, []).append(ms)
    return {
        db: sorted(((k, len(v), sum(v), max(v)) for k, v in groups.items()), key=lambda r: -r[2])
        for db, groups in agg.items()
    }


# --- the report -------------------------------------------------------------------------


@dataclass
class Summary:
    """One method over its rounds: the median time; the worst latency, lock and failures."""

    runs: list[Result]

    @property
    def label(self) -> str:
        return self.runs[0].label

    @property
    def rows(self) -> int:
        return self.runs[0].rows

    @property
    def error(self) -> str | None:
        return next((r.error for r in self.runs if r.error), None)

    @property
    def times(self) -> list[float]:
        return sorted(r.seconds for r in self.runs if r.seconds is not None)

    @property
    def seconds(self) -> float | None:
        t = self.times
        if not t:
            return None
        mid = len(t) // 2
        return t[mid] if len(t) % 2 else (t[mid - 1] + t[mid]) / 2

    @property
    def median_run(self) -> Result:
        return min(self.runs, key=lambda r: abs((r.seconds or 0) - (self.seconds or 0)))

    @property
    def has_writer(self) -> bool:
        return all(r.writer is not None for r in self.runs)

    @property
    def failed(self) -> int | None:
        return sum(r.failed or 0 for r in self.runs) if self.has_writer else None

    @property
    def committed(self) -> int:
        return sum(len(r.writer.committed) for r in self.runs if r.writer)

    @property
    def latency_ms(self) -> float | None:
        return max(r.latency_ms or 0.0 for r in self.runs) if self.has_writer else None

    @property
    def lock_s(self) -> float | None:
        locks = [r.lock_s for r in self.runs if r.lock_s is not None]
        return max(locks) if locks else None

    @property
    def verified(self) -> str:
        bad = [r.verified for r in self.runs if not r.verified.startswith(("ok", "n/a"))]
        return bad[0] if bad else self.runs[0].verified

    @property
    def cpu_stall(self) -> float | None:
        return self.median_run.cpu_stall

    @property
    def server_cpu(self) -> float | None:
        cpus = sorted(r.server_cpu for r in self.runs if r.server_cpu is not None)
        return cpus[len(cpus) // 2] if cpus else None

    def spread(self) -> str:
        t = self.times
        return f"{t[0]:.2f}–{t[-1]:.2f}" if len(t) > 1 else ""


def fmt(x: float | None, spec: str = ".2f", none: str = "—") -> str:
    return none if x is None else format(x, spec)


def ms(x: float | None) -> str:
    return fmt(None if x is None else x * 1000, ".1f")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def mark(ok: bool | None) -> str:
    return "?" if ok is None else ("✓" if ok else "✗")


def print_table(results: list[Summary], old: Summary, limit: Summary, floor: Summary) -> None:
    head = (
        "method",
        "rows",
        "seconds",
        "(min–max)",
        "speed-up vs old",
        "÷ copy limit",
        "÷ bulk floor",
        "server CPU s",
        "failed writes",
        "max insert ms",
        "parent lock ms",
        "cpu stall",
        "verified",
    )
    rows = []
    for r in results:
        usable = r.error is None
        rows.append(
            (
                r.label + (" [ABORTED]" if r.error else ""),
                str(r.rows),
                fmt(r.seconds),
                r.spread(),
                fmt(ratio(old.seconds, r.seconds), ".1f") + "×"
                if usable and r.rows == old.rows
                else "—",
                fmt(ratio(r.seconds, limit.seconds), ".2f") + "×"
                if usable and r.rows == limit.rows
                else "—",
                fmt(ratio(r.seconds, floor.seconds), ".2f") + "×"
                if usable and r.rows == floor.rows
                else "—",
                fmt(r.server_cpu),
                f"{r.failed}/{r.failed + r.committed}" if r.failed is not None else "(no writer)",
                fmt(r.latency_ms, ".1f"),
                ms(r.lock_s),
                fmt(None if r.cpu_stall is None else 100 * r.cpu_stall, ".0f") + "%",
                r.verified,
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: tuple[str, ...]) -> str:
        first, *middle, last = cells
        return "  ".join(
            [
                first.ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(middle, widths[1:-1], strict=True)),
                last,
            ]
        )

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def print_targets(n: int, quarter: int, s: dict[str, Summary], rss_q: float, rss_n: float) -> None:
    instant, copy2, copy2_q, old, limit, floor = (
        s[k] for k in ("instant", "copy2", "copy2_q", "old", "limit", "floor")
    )

    def below(x: float | None, limit_: float) -> bool | None:
        return None if x is None else x < limit_

    def no_larger(a: float | None, b: float | None) -> bool | None:
        # "no larger at 4× the rows", with room for noise: max(50 %, 20 ms)
        return None if a is None or b is None else b <= max(1.5 * a, a + 0.02)

    speed_instant = ratio(old.seconds, instant.seconds) if not instant.error else None
    speed_copy2 = ratio(old.seconds, copy2.seconds) if not copy2.error else None
    to_floor = ratio(copy2.seconds, floor.seconds) if not copy2.error else None

    def best(a: Summary, b: Summary) -> str:
        """The same ratio from each method's fastest round: what a quiet machine shows."""
        if len(a.times) < 2 or a.error or b.error:
            return ""
        return f"  (best rounds: {fmt(ratio(a.times[0], b.times[0]), '.2f')}×)"

    def lat(r: Summary) -> float | None:
        return None if r.latency_ms is None else r.latency_ms / 1000

    targets = [
        (
            "instant ≥ 20× faster than the old method",
            f"{fmt(speed_instant, '.1f')}×" + best(old, instant),
            None if speed_instant is None else speed_instant >= 20,
        ),
        (
            "instant: swap lock < 100 ms (worst round)",
            f"{ms(instant.lock_s)} ms",
            below(instant.lock_s, 0.1),
        ),
        (
            "instant: zero failed concurrent writes",
            fmt(instant.failed, "d"),
            None if instant.failed is None else instant.failed == 0,
        ),
        (
            "instant: max insert latency < 250 ms",
            f"{fmt(instant.latency_ms, '.1f')} ms",
            below(lat(instant), 0.25),
        ),
        (
            "copy --jobs 2 ≥ 1.7× faster than the old method",
            f"{fmt(speed_copy2, '.2f')}×" + best(old, copy2),
            None if speed_copy2 is None else speed_copy2 >= 1.7,
        ),
        (
            "copy --jobs 2 faster than the copy limit",
            f"{fmt(copy2.seconds)}s vs {fmt(limit.seconds)}s"
            + (
                f"  (best rounds: {copy2.times[0]:.2f}s vs {limit.times[0]:.2f}s)"
                if best(copy2, limit)
                else ""
            ),
            None
            if copy2.seconds is None or limit.seconds is None or copy2.error
            else copy2.seconds < limit.seconds,
        ),
        (
            "copy --jobs 2: zero failed concurrent writes",
            fmt(copy2.failed, "d"),
            None if copy2.failed is None else copy2.failed == 0,
        ),
        (
            "copy --jobs 2: max insert latency < 250 ms",
            f"{fmt(copy2.latency_ms, '.1f')} ms",
            below(lat(copy2), 0.25),
        ),
        (
            "copy --jobs 2: parent's longest lock < 250 ms",
            f"{ms(copy2.lock_s)} ms",
            below(copy2.lock_s, 0.25),
        ),
        (
            f"copy --jobs 2: longest lock no larger at {n} than at {quarter} rows",
            f"{ms(copy2_q.lock_s)} → {ms(copy2.lock_s)} ms",
            no_larger(copy2_q.lock_s, copy2.lock_s),
        ),
        (
            f"copy --jobs 2: max insert latency no larger at {n} than at {quarter} rows",
            f"{fmt(copy2_q.latency_ms, '.1f')} → {fmt(copy2.latency_ms, '.1f')} ms",
            no_larger(lat(copy2_q), lat(copy2)),
        ),
        ("copy --jobs 2: client RSS < 150 MB (CLI process)", f"{rss_n:.1f} MB", rss_n < 150),
        (
            f"client RSS flat: at {n} ≤ 1.1 × at {quarter} rows",
            f"{rss_q:.1f} → {rss_n:.1f} MB",
            rss_n <= 1.1 * rss_q,
        ),
        (
            "stretch: copy --jobs 2 within 1.1× of the bulk-load floor",
            f"{fmt(to_floor, '.2f')}×" + best(copy2, floor),
            None if to_floor is None else to_floor <= 1.1,
        ),
    ]
    print(
        "targets (issue 3, Performance): ✓/✗ from this run's medians (times) and worst rounds (latency, locks);"
    )
    print(
        "         'no larger' allows max(50 %, 20 ms) for noise; 'best rounds' is informational only:"
    )
    w = max(len(t[0]) for t in targets)
    for name, value, ok in targets:
        print(f"  {mark(ok)} {name:<{w}}  {value}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the DEFAULT (default 1M)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100k rows, one round")
    ap.add_argument(
        "--rounds", type=int, help="rounds of every method, interleaved (default 5; --quick 1)"
    )
    args = ap.parse_args(argv)
    n = 100_000 if args.quick else args.rows
    rounds = args.rounds or (1 if args.quick else 5)
    quarter = max(1000, n // 4)
    started, stall_start = time.perf_counter(), cpu_stall_us()

    methods: list[tuple[str, str, Callable[[str, Result], None], dict[str, Any]]] = [
        ("instant", "partguard fix --strategy instant", partguard_fix("instant", 1), {}),
        ("copy2", "partguard fix --strategy copy --jobs 2", partguard_fix("copy", 2), {}),
        ("copy1", "partguard fix --strategy copy --jobs 1", partguard_fix("copy", 1), {}),
        ("old", "old script (detach; DELETE…RETURNING→INSERT per day)", old_script, {}),
        ("pm_w", "partman partition_data_proc, with writer", partman_repair, {}),
        ("pm", "partman partition_data_proc, no writer", partman_repair, {"writer": False}),
        (
            "limit",
            "copy limit: INSERT…SELECT into indexed plain table",
            copy_limit,
            {"verify": False},
        ),
        (
            "floor",
            "bulk-load floor: unindexed INSERT…SELECT + 3 index builds",
            bulk_floor,
            {"verify": False},
        ),
        (
            "instant_q",
            "partguard fix --strategy instant",
            partguard_fix("instant", 1),
            {"rows": quarter},
        ),
        (
            "copy2_q",
            "partguard fix --strategy copy --jobs 2",
            partguard_fix("copy", 2),
            {"rows": quarter},
        ),
    ]
    runs: dict[str, list[Result]] = {key: [] for key, *_ in methods}

    with Sandbox(settings=SETTINGS) as sb:
        bench = Bench(sb, n)
        bench.log(
            f"sandbox PostgreSQL {sb.major} on port {sb.port}, partman: {sb.has_partman}; {rounds} round(s)"
        )
        if not sb.has_partman:
            print("pg_partman is not installed: this benchmark needs it", file=sys.stderr)
            return 2
        bench.build(n)
        bench.build(quarter)
        for i in range(rounds):  # interleaved, so drift on the machine hits every method alike
            bench.log(f"round {i + 1}/{rounds}")
            for key, label, method, kw in methods:
                runs[key].append(bench.run(label, method, **kw))
        rss_q, cli_q = bench.cli_rss(quarter, ["--strategy", "copy", "--jobs", "2"])
        rss_n, cli_n = bench.cli_rss(n, ["--strategy", "copy", "--jobs", "2"])
        rss_0 = interpreter_rss()
        profile = statement_profile(sb.logfile, bench.dbs)
        settings = {}
        with psycopg.connect(sb.dsn(), autocommit=True, application_name="bench") as c:
            for name in (
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "shared_buffers",
                "max_wal_size",
                "maintenance_work_mem",
                "checkpoint_timeout",
                "work_mem",
                "autovacuum",
            ):
                settings[name] = row(c, sql.SQL("SHOW {}").format(sql.Identifier(name)))[0]
            version = row(c, "SHOW server_version")[0]
        with psycopg.connect(
            sb.dsn(bench.bases[n][0]), autocommit=True, application_name="bench"
        ) as c:
            pm_version = row(c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'")[
                0
            ]

    s = {key: Summary(rs) for key, rs in runs.items()}
    s["cli_q"], s["cli_n"] = Summary([cli_q]), Summary([cli_n])
    order = [
        "instant",
        "copy2",
        "copy1",
        "old",
        "pm_w",
        "pm",
        "limit",
        "floor",
        "instant_q",
        "copy2_q",
        "cli_q",
        "cli_n",
    ]
    print()
    print(
        f"partguard fix benchmark: {n} rows in the DEFAULT of public.fixes (26 columns, 3 indexes incl. PK), "
        f"PostgreSQL {version}, pg_partman {pm_version}, {os.cpu_count()} CPUs, {rounds} round(s)"
    )
    print("server: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(
        "NOTE: fsync, synchronous_commit and full_page_writes are OFF (sandbox defaults). That applies to every "
        "method alike, but flatters the WAL-heaviest ones most (the old script writes a DELETE and an INSERT per "
        "row); on a durable server all absolute times are higher."
    )
    print(
        f"each run: a fresh CREATE DATABASE … TEMPLATE copy of the same incident database, its DEFAULT "
        f"prewarmed; a writer inserting every {WRITER_PERIOD * 1000:.0f} ms (half now, half the outage days)."
    )
    print(
        "columns: seconds = median over rounds; speed-up vs old = old / method; ÷ copy limit, ÷ bulk floor = "
        "method / those (below 1× is faster); failed writes = failed/tried over all rounds; max insert and parent "
        "lock = worst round; parent lock = FixOutcome.longest_lock_s for partguard, the longest parent-locking "
        "statement for the old script. partguard is timed around the library call fix() (analysis included). "
        "server CPU s = CPU seconds the cluster used (median; all its processes, the writer's backend included): "
        "the work done, barely affected by competition for the cores. "
        "cpu stall = share of the median run's wall time some task on this machine waited for a CPU "
        "(/proc/pressure/cpu): 2 cores, a writer and up to 2 backends stall a little by themselves; "
        "high values mean other work on the machine slowed that run."
    )
    print()
    print_table([s[k] for k in order], s["old"], s["limit"], s["floor"])
    print()
    for key in order:
        r = s[key]
        m = r.median_run
        extra = ([f"error: {r.error}"] if r.error else []) + m.detail
        kinds: dict[str, int] = {}
        for run in r.runs:
            for e in run.writer.errors if run.writer else []:
                kinds[e] = kinds.get(e, 0) + 1
        extra += [f"writer error ×{k} (all rounds): {e}" for e, k in kinds.items()]
        if m.lock_note:
            extra.append(f"parent lock: {m.lock_note}")
        if extra:
            print(f"{r.label} @ {r.rows} (median round):")
            for e in extra:
                print(f"    {e}")
    print()
    print_targets(n, quarter, s, rss_q, rss_n)
    print()
    print(
        f"growth from {quarter} to {n} rows ({n / quarter:.0f}× the rows; medians, worst round for lock/latency):"
    )
    for a, b in ((s["instant_q"], s["instant"]), (s["copy2_q"], s["copy2"])):
        print(
            f"  {a.label:<40} {fmt(a.seconds)}s → {fmt(b.seconds)}s ({fmt(ratio(b.seconds, a.seconds), '.2f')}×); "
            f"longest lock {ms(a.lock_s)} → {ms(b.lock_s)} ms; max insert "
            f"{fmt(a.latency_ms, '.1f')} → {fmt(b.latency_ms, '.1f')} ms"
        )
    print()
    print(
        "the same comparisons in server CPU seconds (the work done; robust to other load on the machine):"
    )
    for x, y, what in (
        ("old", "instant", "old / instant"),
        ("old", "copy2", "old / copy --jobs 2"),
        ("old", "copy1", "old / copy --jobs 1"),
        ("copy1", "limit", "copy --jobs 1 / copy limit"),
        ("copy2", "floor", "copy --jobs 2 / bulk floor"),
        ("pm", "old", "partman / old"),
    ):
        print(
            f"  {what:<28} {fmt(s[x].server_cpu)}s / {fmt(s[y].server_cpu)}s = "
            f"{fmt(ratio(s[x].server_cpu, s[y].server_cpu), '.2f')}×"
        )
    print()
    print(
        "client memory (peak RSS of `python -m partguard fix … --strategy copy --jobs 2`, its own, from wait4):"
    )
    print(
        f"  {quarter} rows: {rss_q:.1f} MB   {n} rows: {rss_n:.1f} MB   "
        f"(`python -m partguard --version` alone: {rss_0:.1f} MB)"
    )
    print()
    print(
        "where the time went (server log: statements over 10 ms of the median round; with --jobs the sums overlap):"
    )
    for key in order:
        r = s[key]
        prof = profile.get(r.median_run.db)
        if not prof:
            continue
        total = sum(p[2] for p in prof)
        print(
            f"  {r.label} @ {r.rows}: {total / 1000:.2f}s in logged statements, {fmt(r.median_run.seconds)}s wall"
        )
        for stmt, count, tot, mx in prof[:7]:
            print(f"    {tot / 1000:7.2f}s  ×{count:<4} max {mx / 1000:6.2f}s  {stmt}")
    print()
    elapsed, stall_end = time.perf_counter() - started, cpu_stall_us()
    stall = (
        ""
        if stall_start is None or stall_end is None
        else f"; some task waited for a CPU {(stall_end - stall_start) / 1e6 / elapsed:.0%} of that time"
    )
    print(
        f"total benchmark time: {elapsed:.0f}s{stall}; load average at the end: "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
