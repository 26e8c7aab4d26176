"""Pure tests of the diagnosis: snapshots built by hand, no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partguard.coverage import runway
from partguard.diagnose import Finding, Severity, diagnose, status
from partguard.humanize import display_name, fmt_delta, fmt_key
from partguard.inspect.catalog import Child, Table
from partguard.inspect.grid import Interval, on_grid, time_grid
from partguard.inspect.snapshot import GridInfo, Server, Snapshot, TableState

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def server(used: int = 1, max_connections: int = 100, version: int = 150000) -> Server:
    return Server(version, max_connections, 3, 0, used, "UTC", NOW, "maint", False, None, "db")


def daily_table(starts: list[datetime], schema: str = "app", name: str = "events") -> Table:
    kids = tuple(
        Child(i + 10, schema, f"{name}_p{s:%Y%m%d}", s, s + DAY, False, False, 0, "")
        for i, s in enumerate(starts)
    )
    return Table(
        1,
        schema,
        name,
        "range",
        ("ts",),
        False,
        "timestamp with time zone",
        True,
        "o",
        kids,
        None,
        (),
    )


def state(table: Table) -> TableState:
    grid = time_grid(Interval(days=1), "UTC")
    return TableState(table, None, GridInfo(grid, "children", aligned_zone="UTC"), None, None, None)


def today(k: int = 0) -> datetime:
    return datetime(NOW.year, NOW.month, NOW.day, tzinfo=UTC) + k * DAY


def findings(*states: TableState, srv: Server | None = None) -> list[Finding]:
    return diagnose(Snapshot(srv or server(), tuple(states)))


@pytest.mark.parametrize(
    ("ahead", "expected"), [(4, None), (3, None), (2, "warning"), (0, "critical")]
)
def test_runway_tolerates_one_missed_creation(ahead: int, expected: str | None) -> None:
    st_ = state(daily_table([today(k) for k in range(-3, ahead + 1)]))
    rw = runway(st_, server())
    assert rw is not None and rw.intervals_ahead == ahead
    got = [f.severity.value for f in findings(st_) if f.code == "runway"]
    assert got == ([expected] if expected else [])


def test_status_prefers_a_known_fault_to_an_unknown() -> None:
    def f(sev: Severity) -> Finding:
        return Finding("x", sev, None, "", {})

    assert status([]) == 0
    assert status([f(Severity.INFO)]) == 0
    assert status([f(Severity.WARNING), f(Severity.UNKNOWN)]) == 3
    assert status([f(Severity.UNKNOWN), f(Severity.CRITICAL), f(Severity.WARNING)]) == 2


@pytest.mark.parametrize(("used", "expected"), [(77, None), (78, "warning"), (93, "critical")])
def test_connection_thresholds(used: int, expected: str | None) -> None:
    got = [f.severity.value for f in findings(srv=server(used=used)) if f.code == "connections"]
    assert got == ([expected] if expected else [])  # of 97 slots: 80 % is 77.6, 95 % is 92.2


def test_gap_and_wide_child_are_told_apart() -> None:
    table = daily_table([today(k) for k in (-6, -5, 0, 1, 2, 3, 4)])
    wide = Child(99, "app", "events_p_wide", today(-4), today(-1), False, False, 0, "")
    kids = (*table.children[:2], wide, *table.children[2:])  # -4 … -1, then a hole to today
    table = replace(table, children=kids)
    got = {(f.code, f.severity.value): f.detail for f in findings(state(table))}
    assert got[("gap", "critical")] == {"from": today(-1).isoformat(), "to": today(0).isoformat()}
    assert got[("wide_child", "info")]["buckets"] == 3


def test_names_are_quoted_only_when_needed() -> None:
    assert display_name(daily_table([], "public", "fixes")) == "public.fixes"
    assert display_name(daily_table([], "App", 'a "b"')) == '"App"."a ""b"""'


def test_human_formats() -> None:
    assert fmt_delta(timedelta(days=2, hours=3, minutes=4)) == "2 days 03:04"
    assert fmt_delta(-timedelta(hours=1)) == "-01:00"
    assert fmt_key(datetime(2026, 3, 29, 22, tzinfo=UTC), "Europe/Berlin") == "2026-03-30"


ZONES = ["UTC", "Europe/Berlin", "America/Santiago", "Asia/Kathmandu"]
STEPS = [Interval(days=1), Interval(months=1), Interval(micros=3600 * 10**6), Interval(days=7)]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from(STEPS),
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
    ),
    st.lists(st.integers(min_value=-400, max_value=400), min_size=0, max_size=40),
)
def test_on_grid_agrees_with_is_aligned(
    zone: str, step: Interval, base: datetime, offsets: list[int]
) -> None:
    """The one-walk alignment check used by check equals the per-key lookup."""
    grid = time_grid(step, zone)
    start = grid.floor(base)
    keys = [start + timedelta(hours=h) for h in offsets]
    keys = sorted(set(keys))
    assert on_grid(grid, keys) == [grid.is_aligned(k) for k in keys]
