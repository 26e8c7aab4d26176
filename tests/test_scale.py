"""Scale (issue 8, item 11): concurrent scrapes share one snapshot, a slow refresh never
holds a scrape past its timeout, and the catalog keeps one name set per schema.

The figures (1,000 tables x 100 children: time and RSS of ``check``, concurrent scrapes)
are printed by benchmarks/bench_check.py; these tests prove the mechanisms on a real
cluster, counting connections where the server sees them (its log), not where we say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from exporter import Proxy, in_parallel, running
from hypothesis import given, settings
from hypothesis import strategies as st

from partguard.inspect.catalog import read_tables
from partguard.inspect.grid import Interval, on_grid, time_grid
from partguard.sandbox import Sandbox

DAY1 = "FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2026-01-02 00:00+00')"
DAY2 = "FOR VALUES FROM ('2026-01-02 00:00+00') TO ('2026-01-03 00:00+00')"


@pytest.fixture
def logged(make_cluster: Callable[..., Sandbox]) -> Sandbox:
    """A cluster that logs every connection: the ground truth for "one snapshot"."""
    return make_cluster({"log_connections": "on"})


def partguard_connections(sb: Sandbox) -> int:
    """Sessions partguard opened, as the server logged them."""
    return sum(
        "connection authorized" in line and "application_name=partguard" in line
        for line in sb.logfile.read_text(errors="replace").splitlines()
    )


def events_db(sb: Sandbox) -> str:
    dsn = sb.create_database("app", partman=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.events (ts timestamptz NOT NULL, v text) PARTITION BY RANGE (ts)"
        )
        conn.execute(f"CREATE TABLE public.events_p20260101 PARTITION OF public.events {DAY1}")
        conn.execute("INSERT INTO public.events VALUES ('2026-01-01 12:00+00', 'x')")
    return dsn


@pytest.fixture
def proxy(logged: Sandbox) -> Iterator[Proxy]:
    p = Proxy(logged.port)
    yield p
    p.close()


def via(proxy: Proxy, dsn: str) -> str:
    """``dsn`` through the proxy, with a connect timeout long enough to outlast a stall."""
    return psycopg.conninfo.make_conninfo(
        dsn, host="127.0.0.1", port=proxy.port, connect_timeout=60
    )


def test_concurrent_scrapes_take_one_snapshot(logged: Sandbox, proxy: Proxy) -> None:
    """Eight scrapers at once (an HA pair and then some) while the snapshot is slow: the
    database sees one partguard connection, and every scraper gets the same snapshot."""
    dsn = events_db(logged)
    before = partguard_connections(logged)
    with running("-d", via(proxy, dsn), "--listen", "127.0.0.1:0") as e:
        proxy.stall()  # the snapshot's connection hangs until every scrape is in
        pending = [e.send("/metrics", timeout=60) for _ in range(8)]
        deadline = time.monotonic() + 30
        while proxy.accepted == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.accepted == 1
        time.sleep(0.5)  # the exporter's threads pick up the requests already sent
        proxy.release()
        replies = [p.reply() for p in pending]
        e.stop()
    assert [r.status for r in replies] == [200] * 8
    assert {r.value("partguard_up") for r in replies} == {1}
    assert {r.value("partguard_snapshots_total") for r in replies} == {1}
    # One snapshot, rendered once: the same duration in every answer.
    assert len({r.value("partguard_scrape_duration_seconds") for r in replies}) == 1
    assert {r.value("partguard_children", schema="public", table="events") for r in replies} == {1}
    assert proxy.accepted == 1
    assert partguard_connections(logged) - before == 1


def test_scrapes_within_cache_for_share_a_snapshot(logged: Sandbox) -> None:
    dsn = events_db(logged)
    before = partguard_connections(logged)
    with running("-d", dsn, "--listen", "127.0.0.1:0", "--cache-for", "1h") as e:
        first = e.get("/metrics")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE public.events_p20260102 PARTITION OF public.events {DAY2}")
        again = [e.get("/metrics") for _ in range(3)]
        e.stop()
    for r in [first, *again]:
        assert r.value("partguard_children", schema="public", table="events") == 1  # cached
        assert r.value("partguard_snapshots_total") == 1
    assert again[-1].value("partguard_snapshot_age_seconds") > 0
    assert partguard_connections(logged) - before == 1


def test_a_late_refresh_answers_with_the_previous_snapshot(logged: Sandbox, proxy: Proxy) -> None:
    """The database hangs during a refresh: scrapes answer within their own timeout from
    the previous snapshot (its age exported), no second refresh starts, and once the
    database answers again the next scrape is fresh."""
    dsn = events_db(logged)
    with running("-d", via(proxy, dsn), "--listen", "127.0.0.1:0", "--cache-for", "0") as e:
        fresh = e.get("/metrics")
        assert fresh.value("partguard_up") == 1
        assert fresh.value("partguard_snapshots_total") == 1
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE public.events_p20260102 PARTITION OF public.events {DAY2}")
        proxy.stall()
        late = [e.get("/metrics", timeout=1) for _ in range(3)]  # Prometheus: 1 s timeout
        held = proxy.accepted
        proxy.release()
        for r in late:  # answered while the refresh still hung: the previous snapshot
            assert r.status == 200
            assert r.value("partguard_up") == 1
            assert r.value("partguard_children", schema="public", table="events") == 1
            assert r.value("partguard_snapshots_total") == 2  # one refresh running, not three
            assert r.value("partguard_snapshot_age_seconds") > 0
        assert held == 2  # the first snapshot's connection and the one refresh's
        after = e.get("/metrics")  # waits for the refresh (no timeout header: up to 30 s)
        e.stop()
    assert after.value("partguard_up") == 1
    assert after.value("partguard_children", schema="public", table="events") == 2


def test_with_no_previous_snapshot_a_late_refresh_is_up_0(logged: Sandbox, proxy: Proxy) -> None:
    """The very first scrape cannot wait for a hanging database: up 0 within its timeout
    (no age: there is no snapshot yet); the refresh finishes later and serves the next."""
    dsn = events_db(logged)
    with running("-d", via(proxy, dsn), "--listen", "127.0.0.1:0") as e:
        proxy.stall()
        late = e.get("/metrics", timeout=1)
        proxy.release()
        fresh = e.get("/metrics")
        err = e.stop()
    assert late.status == 200 and late.value("partguard_up") == 0
    assert ("partguard_snapshot_age_seconds", ()) not in late.samples
    assert ("partguard_connections_used", ()) not in late.samples
    assert "the snapshot has been running for" in err
    assert fresh.value("partguard_up") == 1
    assert fresh.value("partguard_snapshots_total") == 1  # the late scrape's refresh, finished


def test_a_dead_database_is_cached_too(logged: Sandbox) -> None:
    """A refused connection is an answer (up 0) and is shared like any other: scrapers of a
    dead database do not each knock on it."""
    dsn = events_db(logged)
    with running("-d", dsn, "--listen", "127.0.0.1:0", "--cache-for", "1h") as e:
        logged.stop()
        replies = in_parallel(e, ["/metrics"] * 4, timeout=10) + [e.get("/metrics")]
        err = e.stop()
    assert {r.value("partguard_up") for r in replies} == {0}
    assert {r.value("partguard_snapshots_total") for r in replies} == {1}
    assert err.count("cannot check the database") == 1


def test_tables_of_a_schema_share_one_name_set(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Each table used to carry its own copy of every relation name in its schema: memory
    grew with tables x relations. Now one frozenset per schema serves all its tables."""
    conn.execute("CREATE SCHEMA other")
    for schema in ("public", "other"):
        for t in ("a", "b", "c"):
            conn.execute(f"CREATE TABLE {schema}.{t} (ts timestamptz) PARTITION BY RANGE (ts)")
            conn.execute(f"CREATE TABLE {schema}.{t}_p1 PARTITION OF {schema}.{t} {DAY1}")
    conn.execute("CREATE TABLE public.unrelated (x int)")  # a name new children must avoid
    tables = {t.qualname: t for t in read_tables(conn)}
    public = [tables[f"public.{t}"] for t in "abc"]
    assert all(t.schema_names is public[0].schema_names for t in public)
    assert {"a", "a_p1", "b_p1", "unrelated"} <= public[0].schema_names
    other = tables["other.a"].schema_names
    assert other is tables["other.c"].schema_names and other is not public[0].schema_names
    assert "unrelated" not in other and "c_p1" in other


def test_cache_for_needs_listen_and_a_duration(run: Callable[..., tuple[int, str, str]]) -> None:
    rc, out, err = run("metrics", "-d", "x", "--cache-for", "5s")
    assert rc == 64 and out == "" and err == "partguard: --cache-for applies to --listen only\n"
    rc, _, err = run("metrics", "-d", "x", "--listen", "127.0.0.1:0", "--cache-for", "soon")
    assert rc == 64 and err.count("\n") == 1 and "not a duration: 'soon'" in err


# --- the grid shortcut check relies on -----------------------------------------------------
# A day is 24 h in a zone whose offset never changes, so check locates every bound there by
# one division instead of walking the grid; DST zones still walk. An independent oracle
# (local wall time) says which keys are boundaries.

STEPS = {
    "1 day": Interval(days=1),
    "1 hour": Interval(micros=3_600_000_000),
    "1 month": Interval(months=1),
}
ZONES = ["UTC", "Etc/GMT-1", "Etc/GMT+5", "Europe/Berlin", "America/New_York"]


def is_boundary(local: datetime, step: str) -> bool:
    midnight = (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0)
    if step == "1 hour":
        return (local.minute, local.second, local.microsecond) == (0, 0, 0)
    return midnight and (step == "1 day" or local.day == 1)


# Wall times in the zone under test, often a bucket's start (midnight, the 1st), sometimes
# a microsecond or a second off it: what a table's bounds look like, and what they should not.
walls = st.builds(
    lambda day, hour, minute, wiggle: (
        datetime(2020, 1, 1) + timedelta(days=day, hours=hour, minutes=minute, microseconds=wiggle)
    ),
    st.integers(0, 10 * 365),
    st.sampled_from([0, 0, 0, 3, 12, 23]),
    st.sampled_from([0, 0, 30]),
    st.sampled_from([0, 0, 0, 1, -1, 10**6]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(STEPS)), st.sampled_from(ZONES), st.lists(walls, min_size=1, max_size=40)
)
def test_on_grid_agrees_with_wall_time_in_every_zone(
    step: str, zone: str, local: list[datetime]
) -> None:
    tz = ZoneInfo(zone)
    keys = [w.replace(tzinfo=tz).astimezone(UTC) for w in local]  # as the server sends them
    grid = time_grid(STEPS[step], zone)
    want = [is_boundary(k.astimezone(tz), step) for k in keys]
    assert on_grid(grid, keys) == want
    assert [grid.is_aligned(k) for k in keys] == want
    assert on_grid(grid, [k.astimezone(tz) for k in keys]) == want


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(STEPS)), st.lists(walls, min_size=1, max_size=40))
def test_on_grid_of_naive_timestamps_and_dates(step: str, naive: list[datetime]) -> None:
    grid = time_grid(STEPS[step], None)
    assert on_grid(grid, naive) == [is_boundary(k, step) for k in naive]
    if step != "1 hour":
        days = [date(k.year, k.month, k.day) for k in naive]
        assert on_grid(grid, days) == [step == "1 day" or d.day == 1 for d in days]
