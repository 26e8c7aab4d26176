"""``demo``: the whole incident on a throwaway cluster, told by partguard's own commands.

Two tables like the ingest service's (``fixes`` with a generated column, ``raw_messages``),
daily children made by pg_partman (native ones when partman is not installed), a
maintenance job that "stopped" three days ago so rows fell into the DEFAULTs, and a writer
that never stops inserting. Then: check, fix both tables under the writer, check again,
maintain, metrics, the root cause (a pool that takes every connection slot, named by
check), and a row-for-row account of what the writer committed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..sandbox import Sandbox
from ..testing.build import make_incident
from ..testing.live import Insert, Writer
from ..testing.oracles import exactly_once_fault

log = logging.getLogger(__name__)

TABLES = ("public.fixes", "public.raw_messages")

_SCHEMA = """
CREATE TABLE public.fixes (
    id          bigint NOT NULL,
    received_at timestamptz NOT NULL,
    device_id   int NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_ms    real,
    speed_kmh   real GENERATED ALWAYS AS (speed_ms * 3.6) STORED,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX ON public.fixes (received_at);
CREATE INDEX ON public.fixes (device_id, received_at);

CREATE TABLE public.raw_messages (
    id          bigint NOT NULL,
    received_at timestamptz NOT NULL,
    device_id   int NOT NULL,
    payload     text NOT NULL,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX ON public.raw_messages (received_at);
"""


_FIXES = sql.SQL(
    "INSERT INTO public.fixes (id, received_at, device_id, lat, lon, speed_ms) "
    "VALUES (%s, now() - %s * interval '1 hour', %s, 52.5, 13.4, 8.5)"
)
_RAW = sql.SQL(
    "INSERT INTO public.raw_messages (id, received_at, device_id, payload) "
    "VALUES (%s, now() - %s * interval '1 hour', %s, 'NMEA $GPRMC')"
)


def ingest_writer(dsn: str) -> Writer:
    """The ingest service: one fix and one raw message every few ms, for as long as it runs."""

    def inserts(tick: int, rid: int) -> list[Insert]:
        late = (rid % 7) * 10  # some devices upload hours late, into the outage days
        return [
            (table, stmt, (rid, late, rid % 100))
            for table, stmt in (("public.fixes", _FIXES), ("public.raw_messages", _RAW))
        ]

    return Writer(
        dsn,
        inserts,
        next_id=1_000_000_000,
        period=0.005,
        warmup=0.0,
        application_name="ingest-service",
    )


def build_incident(conn: psycopg.Connection, has_partman: bool, rows: int) -> None:
    """Children up to three days ago, then three days of rows straight into the DEFAULTs."""
    conn.execute(_SCHEMA)
    for table in TABLES:
        make_incident(conn, table, key="received_at", partman=has_partman, premake=4)
    conn.execute(
        "INSERT INTO public.fixes (id, received_at, device_id, lat, lon, speed_ms) "
        "SELECT i, date_trunc('day', now()) - interval '3 days' + i * (now() - date_trunc('day', now()) "
        "+ interval '3 days') / %s, i %% 100, 52 + random(), 13 + random(), random() * 30 "
        "FROM generate_series(1, %s) i",
        (rows, rows),
    )
    conn.execute(
        "INSERT INTO public.raw_messages (id, received_at, device_id, payload) "
        "SELECT i, date_trunc('day', now()) - interval '3 days' + i * (now() - date_trunc('day', now()) "
        "+ interval '3 days') / %s, i %% 100, md5(i::text) FROM generate_series(1, %s) i",
        (rows * 2, rows * 2),
    )
    conn.execute("ANALYZE public.fixes; ANALYZE public.raw_messages")


def demo(
    cli: Callable[[Sequence[str]], int],
    say: Callable[[str], None],
    *,
    rows: int = 200_000,
    keep: bool = False,
) -> int:
    """Run the story; ``cli`` runs a partguard command line, ``say`` narrates. Returns 0
    when the account balances (no row lost or duplicated, no failed write) and check is OK."""
    sandbox = Sandbox(keep=keep).start()
    try:
        return _story(sandbox, cli, say, rows)
    finally:
        if keep:
            say(
                f"\nThe cluster is still running (--keep). Connect with:\n  psql '{sandbox.dsn('incident')}'\n"
                f"Stop it with: pg_ctl -D {sandbox.datadir} stop"
            )
        else:
            sandbox.stop()


def _story(
    sandbox: Sandbox, cli: Callable[[Sequence[str]], int], say: Callable[[str], None], rows: int
) -> int:
    dsn = sandbox.create_database("incident", partman=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
        ).fetchone()
        partman = f"pg_partman {version[0]}" if version else "no pg_partman (native partitions)"
        say(f"== A throwaway PostgreSQL {sandbox.major} cluster with {partman}\n")
        say(
            "== The incident: maintenance stopped three days ago; rows fall into the DEFAULT partitions"
        )
        build_incident(conn, version is not None, rows)
        writer = ingest_writer(dsn).start()
        before = {
            t: {
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT id FROM {}").format(sql.Identifier(*t.split(".")))
                )
            }
            for t in TABLES
        }
        for t in TABLES:
            n = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier("public", t.split(".")[1] + "_default")
                )
            ).fetchone()
            say(
                f"   {t}: {n[0] if n else 0} rows in its DEFAULT; the ingest writer keeps inserting"
            )
        say("")
        steps: list[tuple[str, list[str]]] = [
            ("What partguard sees", ["check", "-d", dsn]),
            (
                "The plan for fixes (a SQL script on stdout; nothing changes)",
                ["fix", "-d", dsn, "public.fixes", "--dry-run"],
            ),
            (
                (
                    "Repair fixes: a millisecond swap makes the DEFAULT a child (live writes get real children "
                    "at once), then the wide child is re-cut into exact daily children online"
                ),
                ["fix", "-d", dsn, "public.fixes", "--yes"],
            ),
            (
                "Repair raw_messages with exact daily children (copy, 2 jobs)",
                [
                    "fix",
                    "-d",
                    dsn,
                    "public.raw_messages",
                    "--yes",
                    "--strategy",
                    "copy",
                    "--jobs",
                    "2",
                ],
            ),
            ("Healthy again", ["check", "-d", dsn]),
        ]
        codes = []
        for title, argv in steps:
            say(f"== {title}\n$ partguard {' '.join(_shown(a, dsn) for a in argv)}")
            if "--dry-run" in argv:
                codes.append(_outline(cli, argv, say))
            else:
                codes.append(cli(argv))
            say("")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "partguard.toml"
            config.write_text(
                ""
                if version
                else "".join(
                    f'[[table]]\nname = "{t}"\ninterval = "1 day"\npremake = 4\n\n' for t in TABLES
                )
            )
            say(
                "== Maintenance that does not stop silently\n$ partguard maintain -d $DSN --retry-for 1m"
            )
            codes.append(cli(["maintain", "-d", dsn, "--retry-for", "1m", "--config", str(config)]))
        say("\n== What Prometheus scrapes (partguard metrics --listen 127.0.0.1:9187)")
        codes.append(cli(["metrics", "-d", dsn]))
        time.sleep(0.2)
        writer.stop()
        say("\n== The root cause: a service whose pools take every connection slot")
        pool = fill_server(conn, dsn)
        try:
            say(
                f"   {len(pool)} connections of ingest-pool (role ingest) are open; the next one is refused"
            )
            say("$ partguard check -d $DSN        # as a superuser: one of the reserved slots")
            cli(["check", "-d", dsn])
        finally:
            for c in pool:
                c.close()
        say("\n== The account, row for row")
        balanced = True
        for t in TABLES:
            after = [
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT id FROM {}").format(sql.Identifier(*t.split(".")))
                )
            ]
            expected = before[t] | writer.committed_to[t]
            ok = exactly_once_fault(Counter(expected), Counter(after)) is None
            balanced &= ok
            say(
                f"   {t}: {len(before[t])} rows before + {len(writer.committed_to[t])} committed by the writer "
                f"= {len(expected)}; after: {len(after)} {'✓ each exactly once' if ok else '✗ MISMATCH'}"
            )
        say(
            f"   writer: {len(writer.errors)} failed inserts, max insert latency {writer.max_latency * 1000:.0f} ms"
        )
    final_check_ok = codes[4] == 0
    return 0 if balanced and not writer.errors and final_check_ok else 2


def fill_server(conn: psycopg.Connection, dsn: str) -> list[psycopg.Connection]:
    """Connect as an ordinary role until the server refuses: what several service instances
    with a pool of ~50 each did to max_connections in the incident."""
    conn.execute(
        "DO $$ BEGIN CREATE ROLE ingest LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    info = make_conninfo(dsn, user="ingest", application_name="ingest-pool")
    pool: list[psycopg.Connection] = []
    while len(pool) < 1000:
        try:
            pool.append(psycopg.connect(info, autocommit=True))
        except psycopg.OperationalError:
            break
    return pool


def _outline(cli: Callable[[list[str]], int], argv: list[str], say: Callable[[str], None]) -> int:
    """A dry run's script, shortened for the story: its comment lines (one per step), and how
    long the whole script is (``--dry-run > plan.sql`` gives it all)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(argv)
    lines = out.getvalue().splitlines()
    for line in lines:
        if line.startswith("-- "):
            say(line if len(line) <= 160 else line[:157] + "...")
    sql_lines = sum(1 for ln in lines if ln.strip() and not ln.startswith("--"))
    say(
        f"   ({sql_lines} lines of SQL in all, one transaction per step: the whole script, "
        "> plan.sql, runs in psql -v ON_ERROR_STOP=1)"
    )
    return rc


def _shown(arg: str, dsn: str) -> str:
    return "$DSN" if arg == dsn else arg
