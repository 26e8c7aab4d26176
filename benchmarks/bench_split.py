"""Benchmark: re-cutting a wide child (what ``fix --strategy instant`` leaves) into daily
children with ``partguard split``, against the bulk-load floor, under a live writer.

    .venv/bin/python benchmarks/bench_split.py [--rows 1000000] [--rounds 3] [--curve 250000]
                                               [--quick]

The incident table of ``bench_fix.py`` (26 columns, a generated column, indexes on the key
and on (device_id, key)), with and without its primary key: pg_partman 4.7 daily children,
the last three days and today replaced by one wide child holding N rows. Every method runs
on a fresh ``CREATE DATABASE … TEMPLATE`` copy with the wide child prewarmed, interleaved
over the rounds; the medians count. During each run a writer does ~200 statements/s:
inserts (now and into the wide days), updates (a third moving the row's key a day, i.e. to
another new child) and deletes; afterwards the table's count, distinct ids, sum(v) and
sum of key epochs must equal the base's plus what the writer committed.

- split --jobs 1 / --jobs 2: the library call ``split()`` (planning included).
- bulk-load floor: the wide child's rows into one unindexed plain table, then the same
  indexes built, on one connection, under the same writer: the least work that makes those
  rows and indexes exist.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fix as bf

from partguard.commands.split import SplitOutcome, SplitRequest, split
from partguard.db import ConnParams, connect
from partguard.sandbox import Sandbox

WRITER_PERIOD = bf.WRITER_PERIOD  # ~200 statements/s
WRITER_FIRST_ID = 10**12
CHECKSUM = (
    "SELECT count(*), count(DISTINCT id), coalesce(sum(v), 0), "
    "coalesce(sum(extract(epoch FROM received_at)), 0) "
)
NO_PK = ",\n    PRIMARY KEY (id, received_at)"
# v: a column the writer changes; the dataset has none, so it is added (NULL for the base rows).
EXTRA = "ALTER TABLE public.fixes ADD COLUMN v integer"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the writer ------------------------------------------------------------------------------


@dataclass
class Writer(bf.Writer):
    """bench_fix's writer, doing inserts, updates (some moving the key a day) and deletes;
    keeps the checksum deltas of what committed, from each statement's RETURNING."""

    lo: Any = None  # the wide child's span, as the server's timestamptz
    hi: Any = None
    delta: list[Any] = field(
        default_factory=lambda: [0, 0, 0, Decimal(0)]
    )  # count, distinct, sum v, sum epoch
    ops: dict[str, int] = field(default_factory=dict)

    def _run(self) -> None:
        rnd = random.Random(11)
        next_id, i = WRITER_FIRST_ID, 0
        while not self._stop.is_set():
            i += 1
            op = ("insert", "update", "insert", "move", "insert", "delete")[i % 6]
            t0 = time.perf_counter()
            try:
                self._one(self._conn, op, i, rnd, next_id + 1)
                next_id += op == "insert"
                self.ops[op] = self.ops.get(op, 0) + 1
            except psycopg.Error as exc:
                self.errors.append((str(exc).strip().splitlines() or ["?"])[0])
            self.max_latency = max(self.max_latency, time.perf_counter() - t0)
            time.sleep(WRITER_PERIOD)

    def _one(
        self, c: psycopg.Connection[Any], op: str, i: int, rnd: random.Random, new_id: int
    ) -> None:
        if op == "insert":
            when = (
                "now()"
                if i % 2
                else "%(lo)s::timestamptz + random() * (now() - %(lo)s::timestamptz)"
            )
            row = c.execute(
                "INSERT INTO public.fixes (id, received_at, fix_uuid, device_id, device_serial, "
                "source, latitude, "
                f"longitude, v) VALUES (%(id)s, {when}, gen_random_uuid(), 7, 'SN-W', 'gps', "
                "52.5, 13.4, 1) "
                "RETURNING 1, 1, v, extract(epoch FROM received_at)",
                {"id": new_id, "lo": self.lo},
            ).fetchone()
        else:
            # A row found through the key's index (an id alone has no index without the PK).
            at = {"lo": self.lo, "r": rnd.random(), "hi": self.hi}
            pick = (
                "(SELECT id, received_at FROM public.fixes WHERE received_at >= "
                "%(lo)s::timestamptz + %(r)s * "
                "(least(now(), %(hi)s) - %(lo)s::timestamptz) ORDER BY received_at LIMIT 1 FOR "
                "UPDATE)"
            )
            if op == "delete":
                row = c.execute(
                    f"WITH old AS {pick} DELETE FROM public.fixes f USING old WHERE f.id = old.id "
                    "AND f.received_at = old.received_at "
                    "RETURNING -1, -1, -coalesce(f.v, 0), -extract(epoch FROM f.received_at)",
                    at,
                ).fetchone()
            else:
                shift = "interval '1 day'" if op == "move" else "interval '0'"
                row = c.execute(
                    f"WITH old AS {pick} "
                    "UPDATE public.fixes f SET v = coalesce(f.v, 0) + 1, received_at = CASE WHEN "
                    "f.received_at + "
                    f"{shift} < %(hi)s THEN f.received_at + {shift} ELSE f.received_at - {shift} "
                    "END "
                    "FROM old WHERE f.id = old.id AND f.received_at = old.received_at "
                    "RETURNING 0, 0, 1, extract(epoch FROM f.received_at) - extract(epoch FROM "
                    "old.received_at)",
                    at,
                ).fetchone()
        if row is not None:
            for k in range(4):
                self.delta[k] += row[k]


# --- the dataset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    db: str
    pk: bool
    rows: int  # in the wide child
    checksum: tuple[Any, ...]  # of the whole table
    wide: str
    lo: Any
    hi: Any


def build(sb: Sandbox, rows: int, pk: bool) -> Base:
    """partman 4.7 daily children from 10 days ago; the last three days and today replaced
    by one wide child (as fix --strategy instant leaves it), loaded with ``rows`` rows."""
    name = f"base_{'pk' if pk else 'nopk'}_{rows}"
    t0 = time.perf_counter()
    sb.create_database(name, partman=True)
    ddl = bf.DDL if pk else bf.DDL.replace(NO_PK, "")
    assert pk or ddl != bf.DDL
    with psycopg.connect(sb.dsn(name), autocommit=True, application_name="bench") as c:
        c.execute("CREATE EXTENSION pg_prewarm")
        c.execute(ddl)
        c.execute(EXTRA)
        bf.row(
            c,
            """SELECT partman.create_parent(
                p_parent_table := 'public.fixes', p_control := 'received_at', p_type := 'native',
                p_interval := 'daily', p_premake := 4, p_jobmon := false,
                p_start_partition := (date_trunc('day', now()) - interval '10 days')::text)""",
        )
        lo, hi = bf.row(
            c,
            "SELECT date_trunc('day', now()) - interval '3 days', date_trunc('day', now()) + "
            "interval '1 day'",
        )
        doomed = [
            r[0]
            for r in c.execute(
                """
            SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'public.fixes'::regclass
              AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
              AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), '''(.*?)'''))[1]::timestamptz
                  >= %s
              AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), '''(.*?)'''))[1]::timestamptz
                  < %s
            ORDER BY 1""",
                (lo, hi),
            )
        ]
        for child in doomed:
            c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", child)))
        wide = doomed[0]
        c.execute(
            sql.SQL(
                "CREATE TABLE {} PARTITION OF public.fixes FOR VALUES FROM ({}) TO ({})"
            ).format(sql.Identifier("public", wide), sql.Literal(lo), sql.Literal(hi))
        )
        c.execute(bf.LOAD, {"n": rows})
        c.execute("VACUUM (ANALYZE) public.fixes")
        checksum = bf.row(c, CHECKSUM + "FROM public.fixes")
    log(f"built {name}: {rows} rows in {wide} [{lo} … {hi}), {time.perf_counter() - t0:.1f}s")
    return Base(name, pk, rows, checksum, wide, lo, hi)


_counter = [0]


def fresh_copy(sb: Sandbox, base: Base) -> str:
    _counter[0] += 1
    db = f"copy_{_counter[0]:02d}"
    with psycopg.connect(sb.dsn(), autocommit=True, application_name="bench") as c:
        c.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(db), sql.Identifier(base.db)
            )
        )
    with psycopg.connect(sb.dsn(db), autocommit=True, application_name="bench") as c:
        c.execute(
            sql.SQL(
                "SELECT pg_prewarm({w}), (SELECT sum(pg_prewarm(indexrelid)) FROM pg_index "
                "WHERE indrelid = {w}::regclass)"
            ).format(w=sql.Literal(f"public.{base.wide}"))
        )
        c.execute("CHECKPOINT")
    return db


def drop(sb: Sandbox, db: str) -> None:
    with psycopg.connect(sb.dsn(), autocommit=True, application_name="bench") as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


# --- the methods ----------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    seconds: float = 0.0
    swap_lock: float | None = None
    writer: Writer | None = None
    verified: str = "n/a"
    error: str | None = None
    detail: str = ""
    server_cpu: float | None = None
    rss_mb: float | None = None


def run_split(jobs: int) -> Any:
    def method(dsn: str, base: Base, res: Run) -> None:
        params = ConnParams(dbname=dsn)
        conn = connect(params)
        t0 = time.perf_counter()
        try:
            out: SplitOutcome = split(conn, params, SplitRequest("public.fixes", jobs=jobs))
        finally:
            res.seconds = time.perf_counter() - t0
            conn.close()
        if out.status != "done":
            raise RuntimeError(f"split: {out.status} {out.notes}")
        (r,) = out.recuts
        res.swap_lock = r.swap_lock_s
        res.detail = (
            f"{r.rows_copied} rows copied, {r.changes_replayed} changes replayed, "
            + ", ".join(f"{k} {v:.2f}s" for k, v in r.seconds.items())
            + "; locks "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in r.locks_s.items())
        )

    return method


def floor(dsn: str, base: Base, res: Run) -> None:
    """The wide child's rows into an unindexed table, then its indexes, on one connection."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in (*bf.COLUMNS, "v"))
    plain = sql.Identifier("public", "plain_floor")
    with psycopg.connect(dsn, autocommit=True, application_name="floor") as c:
        c.execute(
            sql.SQL(
                "CREATE TABLE {} (LIKE public.fixes INCLUDING DEFAULTS INCLUDING GENERATED)"
            ).format(plain)
        )
        t0 = time.perf_counter()
        n = c.execute(
            sql.SQL("INSERT INTO {p} ({cols}) SELECT {cols} FROM {w}").format(
                p=plain, cols=cols, w=sql.Identifier("public", base.wide)
            )
        ).rowcount
        t1 = time.perf_counter()
        if base.pk:
            c.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id, received_at)").format(plain))
        c.execute(sql.SQL("CREATE INDEX ON {} (received_at)").format(plain))
        c.execute(sql.SQL("CREATE INDEX ON {} (device_id, received_at)").format(plain))
        res.seconds = time.perf_counter() - t0
    res.detail = f"{n} rows: insert {t1 - t0:.2f}s + indexes {res.seconds - (t1 - t0):.2f}s"


def cli(dsn: str, base: Base, res: Run) -> None:
    """``python -m partguard split`` in its own process: its peak RSS (wait4) is the
    client's memory."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "partguard",
                "split",
                "-d",
                dsn,
                "public.fixes",
                "--yes",
                "--jobs",
                "2",
                "--format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        res.seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(err.read().decode(errors="replace").strip())
    res.rss_mb = usage.ru_maxrss / 1024


def measure(sb: Sandbox, base: Base, label: str, method: Any, writer: bool) -> Run:
    db = fresh_copy(sb, base)
    dsn = sb.dsn(db)
    res = Run(label)
    w = Writer(dsn, lo=base.lo, hi=base.hi).start() if writer else None
    cpu0 = bf.server_cpu_s(sb.datadir)
    try:
        method(dsn, base, res)
    except Exception as exc:  # noqa: BLE001 - a failing method is a result
        res.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    cpu1 = bf.server_cpu_s(sb.datadir)
    res.server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    if w is not None and method is floor:
        res.writer = w.stop()  # the floor's copy is not the table: nothing to verify
    elif w is not None:
        res.writer = w.stop()
        with psycopg.connect(dsn, autocommit=True, application_name="bench") as c:
            got = bf.row(c, CHECKSUM + "FROM public.fixes")
            kids = bf.row(
                c, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.fixes'::regclass"
            )[0]
        want = tuple(a + b for a, b in zip(base.checksum, w.delta, strict=True))
        res.verified = "ok" if tuple(got) == want else f"FAIL: {tuple(got)} != {want}"
        res.detail += f"; {kids} partitions; writer {w.ops}"
    log(
        f"  {label} ({'pk' if base.pk else 'no pk'}, {base.rows}): {res.seconds:.2f}s"
        + (f", swap lock {res.swap_lock * 1000:.0f} ms" if res.swap_lock is not None else "")
        + (f", {len(w.errors)} failed writes, max write {w.max_latency * 1000:.0f} ms" if w else "")
        + f", verified {res.verified}"
        + (f", ERROR {res.error}" if res.error else "")
    )
    drop(sb, db)
    return res


# --- the report ----------------------------------------------------------------------


def lock_text(locks: list[float]) -> str:
    return f"{med(locks) * 1000:.0f} (max {max(locks) * 1000:.0f})" if locks else "—"


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rows", type=int, default=1_000_000, help="rows in the wide child (default 1M)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--curve", default="250000", help="extra sizes for the swap-lock curve, comma-separated"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 50k rows, one round, no curve")
    args = ap.parse_args(argv)
    n = 50_000 if args.quick else args.rows
    rounds = 1 if args.quick else args.rounds
    curve = [] if args.quick else [int(x) for x in args.curve.split(",") if x]
    # The floor runs under the same writer (as in bench_fix): the machine carries the same load.
    methods = [
        ("split --jobs 1", run_split(1), True),
        ("split --jobs 2", run_split(2), True),
        ("bulk-load floor", floor, True),
    ]
    started = time.perf_counter()
    with Sandbox(settings=bf.SETTINGS) as sb:
        if not sb.has_partman:
            print("pg_partman is not installed: this benchmark needs it", file=sys.stderr)
            return 2
        bases = {pk: build(sb, n, pk) for pk in (True, False)}
        results: dict[tuple[bool, str], list[Run]] = {}
        for i in range(rounds):
            log(f"round {i + 1}/{rounds}")
            for pk in (True, False):
                for label, method, writer in methods:
                    results.setdefault((pk, label), []).append(
                        measure(sb, bases[pk], label, method, writer)
                    )
        curve_runs: dict[int, list[Run]] = {}
        rss: dict[int, float | None] = {
            n: measure(sb, bases[True], "CLI split --jobs 2", cli, True).rss_mb
        }
        for size in curve:
            base = build(sb, size, True)
            curve_runs[size] = [
                measure(sb, base, "split --jobs 2", run_split(2), True) for _ in range(rounds)
            ]
            rss[size] = measure(sb, base, "CLI split --jobs 2", cli, True).rss_mb
        with psycopg.connect(sb.dsn(), autocommit=True) as c:
            version = bf.row(c, "SHOW server_version")[0]
    print()
    print(
        f"partguard split benchmark: a wide child of {n} rows (26 columns; indexes on the key and "
        "on "
        "(device_id, key), with and without PK (id, key)) re-cut into 4 daily children; "
        f"PostgreSQL {version}, "
        f"pg_partman 4.7, {os.cpu_count()} CPUs, {rounds} interleaved rounds, medians; writer "
        "~200 statements/s "
        "(inserts now and into the wide days, updates (a third moving the key a day), deletes); "
        "fsync, "
        "synchronous_commit and full_page_writes off (sandbox)."
    )
    print()
    head = (
        f"{'table':<7} {'method':<17} {'seconds':>8} {'(min–max)':>12} {'÷ floor':>8} "
        f"{'swap lock ms':>13} "
        f"{'failed writes':>14} {'max write ms':>13} {'server CPU s':>13}  verified"
    )
    print(head)
    print("-" * len(head))
    for pk in (True, False):
        fl = med([r.seconds for r in results[(pk, "bulk-load floor")]])
        for label, _, _ in methods:
            rs = results[(pk, label)]
            secs = [r.seconds for r in rs if r.error is None]
            locks = [r.swap_lock for r in rs if r.swap_lock is not None]
            ws = [r.writer for r in rs if r.writer is not None]
            cpu = [r.server_cpu for r in rs if r.server_cpu is not None]
            bad = [r.verified for r in rs if r.verified not in ("ok", "n/a")] + [
                r.error for r in rs if r.error
            ]
            print(
                f"{'PK' if pk else 'no PK':<7} {label:<17} {med(secs):8.2f} "
                f"{(f'{min(secs):.2f}–{max(secs):.2f}' if secs else '—'):>12} "
                f"{med(secs) / fl:7.2f}× "
                f"{lock_text(locks):>13} "
                f"{(str(sum(len(w.errors) for w in ws)) if ws else '(no writer)'):>14} "
                f"{(f'{max(w.max_latency for w in ws) * 1000:.0f}' if ws else '—'):>13} "
                f"{med(cpu):13.2f}  "
                f"{bad[0] if bad else rs[0].verified}"
            )
    print()
    for (pk, label), rs in results.items():
        m = sorted(rs, key=lambda r: r.seconds)[len(rs) // 2]
        print(f"{'PK' if pk else 'no PK'} {label} (median round): {m.detail}")
    if curve_runs:
        print()
        print(
            "swap lock vs size (split --jobs 2, PK table; medians): total time should grow with "
            "the rows, "
            "the lock not at all"
        )
        sizes = sorted({n, *curve_runs})
        for size in sizes:
            rs = curve_runs.get(size) or results[(True, "split --jobs 2")]
            secs = med([r.seconds for r in rs])
            locks = [r.swap_lock for r in rs if r.swap_lock is not None]
            print(
                f"  {size:>10} rows: {secs:7.2f}s total, swap lock {med(locks) * 1000:.0f} ms "
                f"(max {max(locks) * 1000:.0f} ms)"
            )
    print()
    print(
        "client memory (peak RSS of `python -m partguard split … --jobs 2`, its own process, from "
        "wait4): "
        + ", ".join(
            f"{size} rows {mb:.1f} MB" for size, mb in sorted(rss.items()) if mb is not None
        )
    )
    print()
    print(
        f"total benchmark time {time.perf_counter() - started:.0f}s; load average "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
