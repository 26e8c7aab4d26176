"""Benchmark: ``partguard check`` on 1,000 tables x 100 children plus a 1M-row DEFAULT.

Not a test (timings depend on the machine): it prints what issues 2 and 8 ask to report.

- the time ``check`` takes over every table (the library call the CLI makes);
- ``partguard check`` as a user runs it, in a child process: wall time and peak RSS
  (``ru_maxrss`` from ``wait4``), against the target of < 5 s and < 200 MB at 1,000 tables x
  100 children in one schema (memory must stay flat in the number of tables beyond the
  catalog read: run with ``--tables 300`` and ``--tables 1000`` and compare);
- ``partguard metrics --listen`` under ``--scrapers`` concurrent scrapes (a Prometheus HA pair
  and more): each scrape's latency, the exporter's peak RSS (``VmHWM``) and how many
  snapshots it took (``partguard_snapshots_total``), against a 10 s scrape timeout;
- how many blocks of the big DEFAULT's heap and of its key index the check touched
  (pg_statio counters, hits + reads) against the heap's size: the bucket walk must
  descend the index O(buckets) times and leave the heap alone;
- a baseline measured in the same run: ``SELECT count(*), min(ts), max(ts)`` over the
  DEFAULT as a heap scan, i.e. what a naive look at it costs.

Run:  PARTGUARD_PG_BIN=/usr/lib/postgresql/15/bin .venv/bin/python benchmarks/bench_check.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import psycopg
from psycopg import sql

from partguard.commands.check import check
from partguard.db import connect
from partguard.inspect.data import probe
from partguard.inspect.grid import Interval, time_grid
from partguard.inspect.snapshot import Options
from partguard.sandbox import Sandbox

# One DO block per table: its 100 CREATE TABLE ... PARTITION OF in a single round trip.
# Children run from (children - 5) days ago to 4 days ahead (partman's premake), with a few
# rows in the recent ones, as a healthy daily table looks.
_MAKE_TABLE = sql.SQL("""
DO $$
DECLARE
    parent text := format('%I.%I', 'bench', {name});
    d date;
BEGIN
    EXECUTE format('CREATE TABLE %s (id bigint, ts timestamptz NOT NULL, v text) '
                   'PARTITION BY RANGE (ts)', parent);
    FOR d IN SELECT generate_series(current_date - ({children} - 5), current_date + 4,
                                    interval '1 day')::date LOOP
        EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                       'bench', {name} || '_p' || to_char(d, 'YYYYMMDD'), parent,
                       d::timestamptz, (d + 1)::timestamptz);
    END LOOP;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT', 'bench',
                   {name} || '_default', parent);
    EXECUTE format('INSERT INTO %s (id, ts, v) SELECT g, now() - g * interval %L, %L '
                   'FROM generate_series(1, 10) g', parent, '1 minute', 'x');
END $$
""")

# bench.big: daily children that stop `gap` days ago (the outage); its rows since then sit
# in the DEFAULT.
_MAKE_BIG = sql.SQL("""
DO $$
DECLARE d date;
BEGIN
    FOR d IN SELECT generate_series(current_date - 99 - {gap}, current_date - {gap} - 1,
                                    interval '1 day')::date LOOP
        EXECUTE format('CREATE TABLE bench.%I PARTITION OF bench.big FOR VALUES FROM (%L) TO (%L)',
                       'big_p' || to_char(d, 'YYYYMMDD'), d::timestamptz, (d + 1)::timestamptz);
    END LOOP;
END $$
""")


def build(
    conn: psycopg.Connection[Any], tables: int, children: int, default_rows: int, outage_days: int
) -> None:
    conn.execute("CREATE SCHEMA bench")
    for i in range(tables):
        conn.execute(
            _MAKE_TABLE.format(name=sql.Literal(f"t{i:03d}"), children=sql.Literal(children))
        )
    conn.execute(
        "CREATE TABLE bench.big (id bigint, ts timestamptz NOT NULL, v text) "
        "PARTITION BY RANGE (ts)"
    )
    conn.execute(_MAKE_BIG.format(gap=sql.Literal(outage_days)))
    conn.execute("CREATE TABLE bench.big_default PARTITION OF bench.big DEFAULT")
    conn.execute(
        "INSERT INTO bench.big SELECT g, date_trunc('day', now()) - %s * interval '1 day' "
        "+ (g::bigint * %s / %s) * interval '1 second', md5(g::text) "
        "FROM generate_series(0, %s - 1) g",  # evenly over the outage, up to today
        (outage_days - 1, outage_days * 86400, default_rows, default_rows),
    )
    conn.execute("CREATE INDEX ON bench.big (ts)")  # cascades to every child and the DEFAULT
    conn.execute("VACUUM ANALYZE bench.big")


def default_io(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(heap blocks, index blocks) of bench.big_default touched so far: reads + hits."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("""
        SELECT coalesce(t.heap_blks_read, 0) + coalesce(t.heap_blks_hit, 0),
               (SELECT coalesce(sum(i.idx_blks_read + i.idx_blks_hit), 0)
                  FROM pg_statio_user_indexes i WHERE i.relid = t.relid)
        FROM pg_statio_user_tables t WHERE t.relid = 'bench.big_default'::regclass""").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def flushed(conn: psycopg.Connection[Any]) -> None:
    """Make this backend publish its pending I/O counters (PG 15+ keeps them local a while)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush happens as the backend goes idle before this
    time.sleep(0.2)


_CLI = "import sys; from partguard.cli import main; sys.exit(main(sys.argv[1:]))"


def cli_run(*argv: str) -> tuple[int, float, float, float]:
    """``partguard <argv>`` in a child process: (exit code, wall seconds, CPU seconds, peak
    RSS in MB). CPU time is the figure a loaded machine distorts least."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, time.monotonic() - start, cpu, usage.ru_maxrss / 1024  # KiB on Linux


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


def _sample(body: str, name: str) -> str:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.MULTILINE)
    return m.group(1) if m else ""


def _scrape(url: str, took: list[float], bodies: list[str]) -> None:
    """One scrape as Prometheus sends it (with its timeout header)."""
    req = urllib.request.Request(url, headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as resp:
        bodies.append(resp.read().decode())
    took.append(time.monotonic() - t0)


def concurrent_scrapes(dsn: str, scrapers: int, rounds: int, extra: list[str]) -> None:
    """Start an exporter, fire ``scrapers`` scrapes at once per round, print what they cost."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "metrics", "-d", dsn, "--listen", "127.0.0.1:0", *extra],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    m = re.search(r"(http://\S+/metrics)", proc.stderr.readline())
    assert m, "the exporter did not say where it listens"
    url = m.group(1)
    try:
        for r in range(rounds):
            took: list[float] = []
            bodies: list[str] = []
            threads = [
                threading.Thread(target=_scrape, args=(url, took, bodies)) for _ in range(scrapers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            snaps = _sample(bodies[-1], "partguard_snapshots_total") or "not exported"
            ups = sorted(_sample(b, "partguard_up") for b in bodies)
            ages = sorted(_sample(b, "partguard_snapshot_age_seconds") or "-" for b in bodies)
            print(
                f"metrics round {r + 1}: {scrapers} concurrent scrapes took "
                f"{', '.join(f'{t:.2f}' for t in sorted(took))} s (max {max(took):.2f} s; "
                f"{'within' if max(took) < 10 else 'OVER'} a 10 s scrape timeout), answered "
                f"partguard_up {'/'.join(ups)}, snapshot age {'/'.join(ages)} s; exporter peak "
                f"RSS {peak_rss_mb(proc.pid):.0f} MB; snapshots so far: {snaps}"
            )
            time.sleep(6)  # past the default cache: the next round refreshes
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--children", type=int, default=100)
    ap.add_argument("--default-rows", type=int, default=1_000_000)
    ap.add_argument("--outage-days", type=int, default=30)
    ap.add_argument("--scrapers", type=int, default=4, help="concurrent metrics scrapes")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of concurrent scrapes")
    ap.add_argument(
        "--metrics-arg",
        action="append",
        default=[],
        help="extra argument for `partguard metrics` (repeatable)",
    )
    ap.add_argument(
        "--dsn",
        help="measure a database this script built before (schema bench) "
        "instead of building one in a throwaway cluster",
    )
    args = ap.parse_args()

    if args.dsn:
        measure(args, args.dsn, "an existing cluster", time.monotonic())
        return
    # Creating a table's 100 children in one statement takes a lock on each.
    with Sandbox(settings={"max_locks_per_transaction": "1024"}) as sb:
        dsn = sb.create_database("bench", partman=False)
        t0 = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            build(conn, args.tables, args.children, args.default_rows, args.outage_days)
        measure(args, dsn, f"PostgreSQL {sb.major}", t0)


def measure(args: argparse.Namespace, dsn: str, where: str, t0: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT relpages, relallvisible FROM pg_class WHERE oid = 'bench.big_default'::regclass"
        ).fetchone()
        pages, visible = (int(row[0]), int(row[1])) if row else (0, 0)
        row = conn.execute("SELECT count(*) FROM pg_partitioned_table").fetchone()
        tables = int(row[0]) if row else 0
    print(
        f"setup: {tables} partitioned tables ({args.children} children "
        f"each), bench.big with {args.default_rows:,} rows in its DEFAULT over "
        f"{args.outage_days} days ({pages:,} heap pages, {visible:,} all-visible; index on "
        f"ts): {time.monotonic() - t0:.1f} s on {where}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    _, base_wall, base_cpu, base_rss = cli_run("--version")
    for _ in range(2):
        rc, wall, cpu, rss = cli_run("check", "-d", dsn, "--format", "json")
        print(
            f"partguard check (child process, {tables} tables): {wall:.2f} s wall, "
            f"{cpu:.2f} s CPU, peak RSS {rss:.0f} MB, exit {rc} (partguard --version alone: "
            f"{base_wall:.2f} s, {base_cpu:.2f} s CPU, {base_rss:.0f} MB); target < 5 s and < 200 MB"
        )
    concurrent_scrapes(dsn, args.scrapers, args.rounds, args.metrics_arg)

    with psycopg.connect(dsn, autocommit=True) as observer:
        timings, touched = [], []
        for _ in range(2):  # the first run also warms the server's catalog caches
            heap0, idx0 = default_io(observer)
            with connect(dsn) as conn:
                start = time.monotonic()
                report = check(conn, Options())
                timings.append(time.monotonic() - start)
                flushed(conn)
            heap1, idx1 = default_io(observer)
            touched.append((heap1 - heap0, idx1 - idx0))
        found = [f for f in report.findings if f.table == "bench.big" and f.code == "default_rows"]
        buckets = int(found[0].detail["bucket_count"]) if found else 0
        heap, idx = touched[-1]
        print(
            f"check over {len(report.tables)} tables: {timings[0]:.2f} s cold, "
            f"{timings[1]:.2f} s warm; status {report.status_name}, "
            f"{len(report.findings)} findings; bench.big DEFAULT: {buckets} buckets found"
        )
        print(
            f"check touched bench.big_default: heap {heap} of {pages:,} blocks "
            f"({heap / max(pages, 1):.3%}), index {idx} blocks "
            f"({idx / max(buckets, 1):.1f} per bucket)"
        )

        with connect(dsn) as conn:  # the probe alone, on the big DEFAULT
            grid = time_grid(Interval(days=1), "UTC")
            start = time.monotonic()
            p = probe(conn, sql.Identifier("bench", "big_default"), "ts", grid, has_index=True)
            probe_time = time.monotonic() - start
        print(
            f"probe of bench.big_default alone: {probe_time * 1000:.1f} ms, "
            f"{len(p.buckets)} buckets, ~{p.rows_estimate:,} rows (estimate)"
        )

        heap0, _ = default_io(observer)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # A heap scan: what a naive count costs (and any GROUP BY over buckets more).
            conn.execute(
                "SET enable_indexscan = off; SET enable_indexonlyscan = off; "
                "SET enable_bitmapscan = off"
            )
            start = time.monotonic()
            conn.execute("SELECT count(*), min(ts), max(ts) FROM bench.big_default")
            naive = time.monotonic() - start
            flushed(conn)
        heap1, _ = default_io(observer)
        print(
            f"baseline SELECT count(*), min(ts), max(ts) FROM bench.big_default "
            f"(seq scan): {naive * 1000:.1f} ms, heap {heap1 - heap0:,} blocks touched"
        )
        print(
            f"ratios: probe time / baseline = {probe_time / naive:.3f}; heap blocks "
            f"check / baseline = {heap / max(heap1 - heap0, 1):.4f}; whole check of "
            f"{len(report.tables)} tables / baseline scan of one DEFAULT = "
            f"{timings[1] / naive:.1f}"
        )


if __name__ == "__main__":
    main()
