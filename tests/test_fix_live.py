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
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import pytest

from partguard.cli import main
from partguard.commands.fix import advisory_key

OUTAGE_ROWS = 30_000


@dataclass
class Writer:
    """Inserts a row every ~2 ms: now, or a random moment of the outage days."""

    dsn: str
    table: str = "public.fixes"
    next_id: int = 10_000_000
    # The keys, in turn: a moment of the outage days, now (SQL expressions).
    when: tuple[str, str] = ("now() - interval '2 days' - (random() * interval '1 day')", "now()")
    committed: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    max_latency: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic start, latency)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.2)
        return self

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            i = 0
            while not self._stop.is_set():
                i += 1
                rid = self.next_id = self.next_id + 1
                when = self.when[i % 2]
                t0 = time.monotonic()
                try:
                    c.execute(f"INSERT INTO {self.table} (id, received_at, device_id, v) "  # test-only SQL
                              f"VALUES (%s, {when}, %s, %s)", (rid, rid % 50, i))
                    self.committed.add(rid)
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                self.samples.append((t0, time.monotonic() - t0))
                self.max_latency = max(self.max_latency, self.samples[-1][1])
                time.sleep(0.002)

    def stop(self) -> Writer:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        return self


@dataclass
class Reader:
    """Polls the count of known outage rows; with instant it must never see fewer."""

    dsn: str
    expected: int
    shortfalls: list[int] = field(default_factory=list)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                n = c.execute("SELECT count(*) FROM public.fixes WHERE id < %s", (OUTAGE_ROWS + 1,)).fetchone()[0]
                self.reads += 1
                if n != self.expected:
                    self.shortfalls.append(n)
                time.sleep(0.001)

    def stop(self) -> Reader:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        return self


def make_incident(conn: psycopg.Connection, partman_major: int | None) -> None:
    """fixes, daily, managed by partman (when installed): children stop 3 days ago."""
    conn.execute("""
        CREATE TABLE public.fixes (
            id bigint NOT NULL, received_at timestamptz NOT NULL, device_id int NOT NULL, v int,
            speed_kmh real GENERATED ALWAYS AS (v * 3.6) STORED,
            PRIMARY KEY (id, received_at)
        ) PARTITION BY RANGE (received_at);
        CREATE INDEX ON public.fixes (received_at);
        CREATE INDEX ON public.fixes (device_id, received_at);
    """)
    start = "date_trunc('day', now()) - interval '10 days'"
    if partman_major is not None:
        kind = ", p_type := 'native'" if partman_major < 5 else ""
        conn.execute(f"SELECT partman.create_parent(p_parent_table := 'public.fixes', p_control := 'received_at', "
                     f"p_interval := '1 day'{kind}, p_premake := 3, p_start_partition := ({start})::text)")
        # Maintenance "stopped": drop every child from 3 days ago on.
        for (name,) in conn.execute("""
                SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'public.fixes'::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
                  AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), '''(.*?)'''))[1]::timestamptz
                      >= date_trunc('day', now()) - interval '3 days'""").fetchall():
            conn.execute(f'DROP TABLE public."{name}"')
    else:
        conn.execute("""
            DO $$ DECLARE d date; BEGIN
              FOR d IN SELECT generate_series(current_date - 10, current_date - 4, '1 day')::date LOOP
                EXECUTE format('CREATE TABLE public.%I PARTITION OF public.fixes FOR VALUES FROM (%L) TO (%L)',
                               'fixes_p' || to_char(d, 'YYYYMMDD'), d::timestamptz, (d + 1)::timestamptz);
              END LOOP; END $$;
            CREATE TABLE public.fixes_default PARTITION OF public.fixes DEFAULT;
        """)
    conn.execute(
        "INSERT INTO public.fixes (id, received_at, device_id, v) "
        "SELECT i, date_trunc('day', now()) - interval '3 days' + (i * interval '3 days' / %s), i %% 50, i "
        "FROM generate_series(1, %s) i",
        (OUTAGE_ROWS, OUTAGE_ROWS),
    )
    conn.execute("ANALYZE public.fixes")


@pytest.fixture
def incident(conn: psycopg.Connection, partman_version: str | None) -> psycopg.Connection:
    make_incident(conn, int(partman_version.split(".")[0]) if partman_version else None)
    return conn


def ids(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM public.fixes ORDER BY id")]


def default_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM public.fixes_default").fetchone()[0]


def assert_exactly_once(conn: psycopg.Connection, before: list[int], writer: Writer) -> None:
    after = ids(conn)
    assert len(after) == len(set(after)), "duplicated rows"
    expected = set(before) | writer.committed
    assert set(after) == expected, f"lost {len(expected - set(after))}, unexpected {len(set(after) - expected)}"


def run_cli(dsn: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, so it can be SIGKILLed like an OOM-killed job."""
    env = dict(os.environ)
    env.pop("PARTGUARD_FAULT", None)
    if fault:
        env["PARTGUARD_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "partguard", "fix", "-d", dsn, "public.fixes", "--yes", *args],
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          check=False)


@pytest.mark.parametrize("strategy", ["instant", "copy"])
def test_fix_under_live_writes_keeps_every_row_exactly_once(
    incident: psycopg.Connection, dsn: str, strategy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = ids(incident)
    writer = Writer(dsn).start()
    try:
        rc = main(["fix", "-d", dsn, "public.fixes", "--yes", "--strategy", strategy, "--jobs", "2",
                   "--chunk-pages", "32"])
    finally:
        writer.stop()
    print(f"{strategy}: writer max insert latency {writer.max_latency * 1000:.1f} ms, {len(writer.committed)} rows")
    assert rc == 0, capsys.readouterr().err
    assert writer.errors == []
    assert len(writer.committed) > 50
    assert_exactly_once(incident, before, writer)
    assert default_rows(incident) == 0
    # Every outage row now lives in a proper child.
    assert incident.execute(
        "SELECT count(*) FROM public.fixes WHERE tableoid = 'public.fixes_default'::regclass").fetchone()[0] == 0


def test_instant_readers_see_every_outage_row_at_every_moment(incident: psycopg.Connection, dsn: str) -> None:
    reader = Reader(dsn, expected=OUTAGE_ROWS).start()
    writer = Writer(dsn).start()
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


@pytest.mark.parametrize(("strategy", "fault"), [
    ("instant", "swap"), ("instant", "validate"),
    ("copy", "swap"), ("copy", "copy:3"), ("copy", "before-drop"),
])
def test_sigkill_then_rerun_finishes_without_loss(incident: psycopg.Connection, dsn: str, strategy: str,
                                                  fault: str) -> None:
    before = ids(incident)
    writer = Writer(dsn).start()
    try:
        crashed = run_cli(dsn, "--strategy", strategy, "--chunk-pages", "16", fault=fault)
        assert crashed.returncode == -9, crashed.stderr
        status = subprocess.run([sys.executable, "-m", "partguard", "fix", "-d", dsn, "--status"],
                                capture_output=True, text=True, timeout=60, check=False)
        if fault != "swap":  # a kill inside the swap rolls it back: nothing left to resume
            assert "INTERRUPTED" in status.stdout
        resumed = run_cli(dsn, "--strategy", strategy, "--chunk-pages", "16")
        assert resumed.returncode == 0, resumed.stderr
    finally:
        writer.stop()
    assert writer.errors == []
    assert_exactly_once(incident, before, writer)
    assert default_rows(incident) == 0
    leftovers = incident.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'fixes_default_%' AND relkind = 'r'").fetchall()
    assert leftovers == []


def test_second_fix_on_the_same_table_is_refused(incident: psycopg.Connection, dsn: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
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
    def fingerprint() -> list[tuple[str, str]]:
        return incident.execute("""
            SELECT c.relname, coalesce(pg_get_expr(c.relpartbound, c.oid), '') ||
                   coalesce((SELECT string_agg(conname, ',') FROM pg_constraint WHERE conrelid = c.oid), '') ||
                   coalesce((SELECT string_agg(tgname, ',') FROM pg_trigger WHERE tgrelid = c.oid), '')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' ORDER BY 1""").fetchall()

    before = fingerprint()
    with psycopg.connect(dsn) as blocker:  # a long transaction that read the table
        blocker.execute("SELECT count(*) FROM public.fixes")
        pid = blocker.info.backend_pid
        started = time.monotonic()
        rc = main(["fix", "-d", dsn, "public.fixes", "--yes", "--strategy", strategy,
                   "--lock-timeout", "200ms", "--retries", "2"])
        waited = time.monotonic() - started
        blocker.rollback()
    err = capsys.readouterr().err
    assert rc == 75, err
    assert f"pid {pid}" in err and "SELECT count(*) FROM public.fixes" in err
    assert len(err.strip().splitlines()) == 1 or "lock_timeout" in err
    assert fingerprint() == before
    assert default_rows(incident) == OUTAGE_ROWS
    assert waited < 15


def test_live_writes_continue_while_fix_waits_for_a_lock(incident: psycopg.Connection, dsn: str) -> None:
    """A DDL waiting in the lock queue would stall every insert behind it; ours gives up
    after lock_timeout, so the writer's latency stays bounded by it."""
    writer = Writer(dsn).start()
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT count(*) FROM public.fixes")
        main(["fix", "-d", dsn, "public.fixes", "--yes", "--lock-timeout", "100ms", "--retries", "3"])
        blocker.rollback()
    writer.stop()
    assert writer.errors == []
    assert writer.max_latency < 2.0


def test_auto_ends_with_exact_children_under_live_writes(
    incident: psycopg.Connection, dsn: str, partman_version: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fix`` (auto): the instant swap gives live writes real children within seconds, then the
    wide child is re-cut online; the table ends with one child per day, every row exactly once,
    no write failed, and partman's own maintenance (premake raised) works."""
    from test_fix_cases import PARTMAN_FORMATS, assert_partman_healthy, kids

    before = ids(incident)
    writer = Writer(dsn).start()
    reader = Reader(dsn, OUTAGE_ROWS).start()
    try:
        rc = main(["fix", "-d", dsn, "public.fixes", "--yes", "--jobs", "2"])
    finally:
        writer.stop()
        reader.stop()
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "fixed with instant+recut" in out and "re-cut online into" in out, out
    assert writer.errors == [] and len(writer.committed) > 20
    assert reader.reads > 0 and reader.shortfalls == [], f"{len(reader.shortfalls)} reads missed outage rows"
    assert_exactly_once(incident, before, writer)
    assert default_rows(incident) == 0
    ks = kids(incident, "public.fixes")
    assert all(k.upper - k.lower == timedelta(days=1) for k in ks), [(k.name, k.lower, k.upper) for k in ks]
    assert all(a.upper == b.lower for a, b in itertools.pairwise(ks)), "a hole or an overlap"
    if partman_version is not None:
        assert_partman_healthy(dsn, "public.fixes", PARTMAN_FORMATS[int(partman_version[0])]["1 day"], "UTC")
    rc = main(["check", "-d", dsn, "-t", "public.fixes"])
    assert rc == 0, capsys.readouterr().out
