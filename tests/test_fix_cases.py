"""fix, case by case: the scenario matrix of issue 3, for both strategies.

Each test builds one incident on a real cluster (pg_partman 4.7 where the case is about
partman), runs ``partguard fix`` in-process, and then proves the same things every time:

- no loss, no duplicate: every row has a unique id; the set of (id, key, payload, val)
  before the fix equals the set afterwards in the table plus, for NULL keys and outliers,
  ``partguard.<table>_quarantine`` -- each exactly once;
- the DEFAULT holds no row a child could hold; children never overlap, leave no hole, and
  have the bounds and names the table's own convention gives them;
- for a partman table, ``show_partitions()`` and ``run_maintenance()`` work afterwards and
  premake children named by partman's convention.

Bad input gets a one-line error, its documented exit code, and a catalog fingerprint that
does not change.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from partguard.cli import fix_partitioned_table_main
from partguard.commands.fix import FixRequest, fix
from partguard.db import connect
from partguard.plan.fix import FixOptions
from partguard.testing.build import (
    create_parent,
    drop_children,
    insert_ids,
    insert_keys,
    insert_spread,
    make_table,
    native_children,
    native_incident,
    partman_incident,
    set_db_timezone,
)
from partguard.testing.catalog import Kid, default_of, kids, now, session, utc_midnight
from partguard.testing.oracles import (
    PARTMAN_FORMATS,
    assert_check_ok,
    assert_children_sane,
    assert_default_empty,
    assert_exactly_once,
    assert_named,
    assert_no_default_index_names,
    assert_partman_healthy,
    fingerprint,
    fix_cli,
    quarantined,
    row_set,
    suffix,
)

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]  # partguard argv -> (exit code, stdout, stderr)
STRATEGIES = ("instant", "copy")
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def major(conn: Conn, partman: str) -> int:
    return int(partman.split(".")[0])


# --- the incident: partman 4.7, daily ----------------------------------------------


def test_partman_daily_incident_every_row_lands_in_a_proper_child_exactly_once(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    parent, gap = partman_incident(conn)
    before = row_set(conn, parent)
    outage_ids = {r[0] for r in before if r[2].startswith("outage")}
    default_oid = conn.execute("SELECT 'fixes_default'::regclass::oid").fetchone()

    extra = (
        ("--jobs", "2", "--chunk-pages", "16") if strategy == "copy" else ()
    )  # several block ranges
    out, err = fix_cli(run, dsn, parent, strategy, *extra)

    assert f"fixed with {strategy}" in out
    assert "partguard:" not in err  # progress lines at most, no error or warning
    assert_exactly_once(before, row_set(conn, parent))
    assert quarantined(conn, parent) == []
    assert_default_empty(conn, parent)
    assert conn.execute(
        "SELECT count(*) FROM fixes WHERE val2 IS DISTINCT FROM val * 2"
    ).fetchone() == (0,)
    ks = assert_children_sane(conn, parent)
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, "UTC")
    assert any(k.lower <= now(conn) < k.upper for k in ks), "no child for now"
    new = [k for k in ks if k.lower >= gap]
    if strategy == "instant":
        wide = new[0]
        assert wide.name == "fixes_p" + suffix(gap, fmt, "UTC")
        assert wide.lower == gap and wide.upper > now(conn)
        in_wide = {
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT id FROM {}").format(sql.Identifier("public", wide.name))
            )
        }
        assert in_wide == outage_ids
        same = conn.execute("SELECT %s::regclass::oid", (wide.name,)).fetchone()
        assert same == default_oid, (
            "instant moves no row: the former DEFAULT itself is the wide child"
        )
        assert all(k.upper - k.lower == DAY for k in new[1:])
    else:
        assert all(k.upper - k.lower == DAY for k in new), [(k.name, k.lower, k.upper) for k in new]
        assert [k.lower for k in new[:4]] == [gap + i * DAY for i in range(4)]
    assert_no_default_index_names(conn, parent)
    assert not conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%' AND relkind = 'r'"
    ).fetchall(), "a holding table was left behind"
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, "UTC")
    # A row written now has a child (identity ALWAYS keeps numbering without collisions).
    landed = conn.execute(
        "INSERT INTO fixes (device_id, ts, payload, val) VALUES (1, now(), 'new', 1) "
        "RETURNING tableoid::regclass::text, id"
    ).fetchone()
    assert (
        landed is not None
        and landed[0] != "fixes_default"
        and landed[1] not in {r[0] for r in before}
    )
    # Done is done: the same command again finds nothing to do and changes nothing.
    settled = fingerprint(conn)
    out, _ = fix_cli(run, dsn, parent, strategy)
    assert "nothing to do" in out
    assert fingerprint(conn) == settled


def test_fix_library_call_reports_children_and_rows(
    dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    parent, _gap = partman_incident(conn, n=2000)
    before = row_set(conn, parent)
    with connect(dsn) as c:
        outcome = fix(c, dsn, FixRequest(parent, FixOptions(strategy=strategy)))
    assert outcome.status == "done" and outcome.strategy == strategy
    assert outcome.maintenance == "ok"
    assert outcome.quarantine_rows == 0
    assert_exactly_once(before, row_set(conn, parent))
    made = set(outcome.children_created)
    assert made and made <= {k.name for k in kids(conn, parent)}
    if strategy == "copy":
        assert outcome.rows_moved == 2000
        assert sum(outcome.per_child.values()) == 2000
    assert outcome.longest_lock_s < 5


# --- no partman: the existing children's pattern --------------------------------------


@pytest.mark.parametrize(
    ("table", "fmt", "stem"),
    [
        ("fixes", "YYYYMMDD", "fixes_p"),  # the old script's names
        ("t", "YYYY_MM_DD", "t_"),  # no "p", a different date format
    ],
)
def test_native_table_new_children_follow_the_existing_pattern(
    run: Run, dsn: str, conn: Conn, strategy: str, table: str, fmt: str, stem: str
) -> None:
    parent = f"public.{table}"
    ident = make_table(conn, "public", table)
    gap = utc_midnight(conn, 3)
    days = [gap - i * DAY for i in range(6, 0, -1)]
    native_children(
        conn,
        ident,
        "public",
        [(d, d + DAY, stem + suffix(d, fmt, "UTC")) for d in days],
        default=f"{table}_default",
    )
    insert_spread(conn, ident, "ts", days[0], gap, 300, "before")
    insert_spread(conn, ident, "ts", gap, now(conn), 3000, "outage")
    before = row_set(conn, parent)

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert_named(ks, stem, fmt, "UTC")
    new = [k for k in ks if k.lower >= gap]
    assert new[0].name == stem + suffix(gap, fmt, "UTC")
    assert new[-1].upper > now(conn) + 2 * DAY, "future children to write into"
    assert all(k.upper - k.lower == DAY for k in (new if strategy == "copy" else new[1:]))
    assert_check_ok(run, dsn, parent)
    assert_no_default_index_names(conn, parent)


# --- other grids ---------------------------------------------------------------------


def _next_month(x: datetime) -> datetime:
    return x.replace(year=x.year + x.month // 12, month=x.month % 12 + 1)


@pytest.mark.parametrize(
    ("interval", "outage", "start_back"), [("1 hour", 3, 10), ("1 month", 1, 5)]
)
def test_partman_hourly_and_monthly_grids(
    run: Run,
    dsn: str,
    conn: Conn,
    major: int,
    strategy: str,
    interval: str,
    outage: int,
    start_back: int,
) -> None:
    parent, gap = partman_incident(conn, interval=interval, outage=outage, start_back=start_back)
    before = row_set(conn, parent)

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    fmt = PARTMAN_FORMATS[major][interval]
    assert_named(ks, "fixes_p", fmt, "UTC")
    step = (lambda x: x + HOUR) if interval == "1 hour" else _next_month
    new = [k for k in ks if k.lower >= gap]
    assert new[0].lower == gap
    assert all(step(k.lower) == k.upper for k in (new if strategy == "copy" else new[1:])), [
        (k.name, k.lower, k.upper) for k in new
    ]
    if strategy == "copy":
        assert len([k for k in new if k.lower < now(conn)]) == outage + 1
    else:
        assert new[0].upper > now(conn)
    assert_no_default_index_names(conn, parent)
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, "UTC")


def test_partman_id_ranges(run: Run, dsn: str, conn: Conn, major: int, strategy: str) -> None:
    parent = "public.events"
    ident = make_table(conn, "public", "events", key="id")
    create_parent(conn, parent, "id", "1000", start="0", jobmon=False)
    insert_ids(conn, ident, 1, 3000)
    drop_children(conn, parent, lambda k: k.lower >= 3000)
    insert_ids(conn, ident, 3000, 6500)  # maintenance stopped at 3000: these went to the DEFAULT
    assert conn.execute("SELECT count(*) FROM events_default").fetchone() == (3500,)
    before = row_set(conn, parent, "id")

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent, "id"))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert_named(ks, "events_p", None, None)
    new = [k for k in ks if k.lower >= 3000]
    assert new[0].lower == 3000 and new[-1].upper > 6500
    if strategy == "copy":
        assert [(k.lower, k.upper) for k in new[:4]] == [
            (3000, 4000),
            (4000, 5000),
            (5000, 6000),
            (6000, 7000),
        ]
    else:
        assert new[0].upper >= 7000 and all(k.upper - k.lower == 1000 for k in new[1:])
    assert_no_default_index_names(conn, parent)
    with session(dsn) as c:
        shown = c.execute(
            "SELECT partition_tablename FROM partman.show_partitions(%s)", (parent,)
        ).fetchall()
        assert sorted(r[0] for r in shown) == sorted(k.name for k in ks)
        c.execute(
            "SELECT partman.run_maintenance(p_parent_table := %s, p_jobmon := false)", (parent,)
        )
        # partman premakes from the newest id: write past the runway and ask again.
        insert_ids(c, ident, new[-1].lower, new[-1].lower + 10)
        c.execute(
            "SELECT partman.run_maintenance(p_parent_table := %s, p_jobmon := false)", (parent,)
        )
    after = assert_children_sane(conn, parent)
    assert after[-1].upper > ks[-1].upper, "partman premade nothing after the fix"
    assert_named(after, "events_p", None, None)


def test_id_far_past_the_dense_run_is_an_outlier_not_a_billion_children(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    """Ids grow densely; one bad import's id 9e12 in the DEFAULT is quarantined and
    reported, not given a child (or, for copy, a child for every bucket up to it)."""
    parent = "public.events"
    ident = make_table(conn, "public", "events", key="id")
    create_parent(conn, parent, "id", "1000", start="0", jobmon=False)
    insert_ids(conn, ident, 1, 3000)
    drop_children(conn, parent, lambda k: k.lower >= 3000)
    insert_ids(conn, ident, 3000, 4500)
    insert_ids(conn, ident, 9_000_000_000_000, 9_000_000_000_001)
    before = row_set(conn, parent, "id")

    out, _ = fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent, "id"))
    assert [r[0] for r in quarantined(conn, parent, "id")] == [9_000_000_000_000]
    assert "quarantined rows kept in partguard.events_quarantine: 1" in out
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert ks[-1].upper < 100_000 and len(ks) < 20, [(k.name, k.lower, k.upper) for k in ks]
    assert_named(ks, "events_p", None, None)


def test_native_id_ranges(run: Run, dsn: str, conn: Conn, strategy: str) -> None:
    parent = "public.ev"
    ident = make_table(conn, "public", "ev", key="id")
    native_children(
        conn,
        ident,
        "public",
        [(lo, lo + 1000, f"ev_p{lo}") for lo in (0, 1000, 2000)],
        default="ev_default",
    )
    insert_ids(conn, ident, 1, 5500)
    before = row_set(conn, parent, "id")

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent, "id"))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert_named(ks, "ev_p", None, None)
    new = [k for k in ks if k.lower >= 3000]
    assert new[0].lower == 3000 and new[-1].upper > 5500
    widths = {k.upper - k.lower for k in (new if strategy == "copy" else new[1:])}
    assert widths == {1000}
    assert_check_ok(run, dsn, parent)
    assert_no_default_index_names(conn, parent)


# --- time zones ----------------------------------------------------------------------


def test_partman_grid_in_a_fixed_plus_one_zone(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    """partman laid its children at local midnight of UTC+01 (23:00 UTC): so must fix."""
    zone = "Etc/GMT-1"
    set_db_timezone(conn, zone)
    with session(dsn) as c:
        parent, gap = partman_incident(c)
    assert gap.astimezone(UTC).hour == 23
    before = row_set(conn, parent)

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert all(k.lower.astimezone(UTC).hour == 23 for k in ks), [(k.name, k.lower) for k in ks]
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, zone)
    assert next(k for k in ks if k.lower >= gap).name == "fixes_p" + suffix(gap, fmt, zone)
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, zone)


def test_native_grid_in_plus_one_given_by_tz_option(
    run: Run, dsn: str, conn: Conn, strategy: str
) -> None:
    zone = ZoneInfo("Etc/GMT-1")
    ident = make_table(conn, "public", "fixes")
    today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    gap = today - 3 * DAY
    native_children(
        conn,
        ident,
        "public",
        [
            (gap - i * DAY, gap - (i - 1) * DAY, f"fixes_p{gap - i * DAY:%Y%m%d}")
            for i in range(5, 0, -1)
        ],
        default="fixes_default",
    )
    insert_spread(conn, ident, "ts", gap - 2 * DAY, now(conn), 2000, "rows")
    before = row_set(conn, "public.fixes")

    fix_cli(run, dsn, "public.fixes", strategy, "--tz", "Etc/GMT-1")

    assert_exactly_once(before, row_set(conn, "public.fixes"))
    assert_default_empty(conn, "public.fixes")
    ks = assert_children_sane(conn, "public.fixes")
    assert all(k.lower.astimezone(UTC).hour == 23 for k in ks)
    assert_check_ok(run, dsn, "public.fixes")
    assert_named(ks, "fixes_p", "YYYYMMDD", "Etc/GMT-1")


def test_berlin_grid_across_the_dst_change_gets_a_25_hour_day(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    """Maintenance missed 24-27 October 2026 (Berlin falls back on the 25th: 25 hours)."""
    zone = "Europe/Berlin"
    berlin = ZoneInfo(zone)
    set_db_timezone(conn, zone)
    lo, hi = datetime(2026, 10, 24, tzinfo=berlin), datetime(2026, 10, 28, tzinfo=berlin)
    assert now(conn) > hi + DAY, "the DST dates must lie in the past"
    with session(dsn) as c:
        ident = make_table(c, "public", "fixes")
        create_parent(c, "public.fixes", "ts", "1 day", start="2026-10-20", jobmon=False)
        insert_spread(c, ident, "ts", datetime(2026, 10, 21, tzinfo=berlin), lo, 300, "before")
        insert_spread(
            c, ident, "ts", hi, now(c), 300, "after"
        )  # partman premakes from the newest row
        drop_children(c, "public.fixes", lambda k: lo <= k.lower < hi)
        insert_spread(c, ident, "ts", lo, hi, 4000, "outage")
    assert conn.execute("SELECT count(*) FROM fixes_default").fetchone() == (4000,)
    before = row_set(conn, "public.fixes")

    fix_cli(run, dsn, "public.fixes", strategy)

    assert_exactly_once(before, row_set(conn, "public.fixes"))
    assert_default_empty(conn, "public.fixes")
    ks = assert_children_sane(conn, "public.fixes")
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, zone)
    new = [k for k in ks if lo <= k.lower < hi]
    if strategy == "instant":
        assert [(k.lower, k.upper) for k in new] == [(lo, hi)]
        assert new[0].upper - new[0].lower == 4 * DAY + HOUR
    else:
        assert [k.lower for k in new] == [
            datetime(2026, 10, d, tzinfo=berlin) for d in (24, 25, 26, 27)
        ]
        hours = {k.name: (k.upper - k.lower) / HOUR for k in new}
        assert hours == {new[0].name: 24, new[1].name: 25, new[2].name: 24, new[3].name: 24}
        assert new[1].lower.astimezone(UTC) == datetime(2026, 10, 24, 22, tzinfo=UTC)
        assert new[1].upper.astimezone(UTC) == datetime(2026, 10, 25, 23, tzinfo=UTC)
    assert_no_default_index_names(conn, "public.fixes")
    assert_check_ok(run, dsn, "public.fixes")
    assert_partman_healthy(dsn, "public.fixes", fmt, zone)


# --- NULL keys and far outliers ------------------------------------------------------

FAR = [None, None, datetime(1970, 1, 1, 12, tzinfo=UTC), datetime(2999, 6, 1, tzinfo=UTC)]


def _incident_with_outliers(conn: Conn) -> tuple[str, datetime]:
    parent, gap = partman_incident(conn)
    conn.execute("ALTER TABLE fixes ALTER COLUMN ts DROP NOT NULL")
    insert_keys(conn, sql.Identifier("public", "fixes"), "ts", FAR, "far")
    return parent, gap


def _no_invented_children(ks: list[Kid]) -> None:
    for when in (FAR[2], FAR[3]):
        assert not [k.name for k in ks if k.lower <= when < k.upper], (
            f"a child was invented for {when}"
        )
    assert ks[0].lower > datetime(2000, 1, 1, tzinfo=UTC) and ks[-1].upper < datetime(
        2100, 1, 1, tzinfo=UTC
    )


def test_null_keys_and_far_outliers_are_quarantined_and_reported(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    parent, _gap = _incident_with_outliers(conn)
    before = row_set(conn, parent)

    out, _ = fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent))
    kept = quarantined(conn, parent)
    assert sorted(r[2] for r in kept) == [f"far-{i}" for i in range(len(FAR))]
    assert sorted(r[1] for r in kept if r[1] is not None) == [k for k in FAR if k is not None]
    assert sum(r[1] is None for r in kept) == FAR.count(None)
    assert f"quarantined rows kept in partguard.fixes_quarantine: {len(FAR)}" in out
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    _no_invented_children(ks)
    assert_named(ks, "fixes_p", PARTMAN_FORMATS[major]["1 day"], "UTC")
    assert_check_ok(run, dsn, parent, quarantined=len(FAR))
    assert_partman_healthy(dsn, parent, PARTMAN_FORMATS[major]["1 day"], "UTC")


def test_outliers_keep_leaves_them_in_the_fresh_default(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    parent, _gap = _incident_with_outliers(conn)
    before = row_set(conn, parent)

    # The rows asked to stay in the DEFAULT keep the table CRITICAL for check, so fix says so.
    out, _ = fix_cli(run, dsn, parent, strategy, "--outliers", "keep", still="default_rows")

    assert "partman maintenance: ok" in out  # ran before the 2999 row went back
    if major == 4:  # 4.x reads the DEFAULT's max key (ignore_default_data defaults to false there)
        assert "ignore_default_data" in out, "no warning that partman will premake up to 2999"
    assert_exactly_once(before, row_set(conn, parent))
    assert quarantined(conn, parent) == []
    assert_default_empty(conn, parent, expect=len(FAR))
    in_default = conn.execute("SELECT payload FROM fixes_default ORDER BY payload").fetchall()
    assert [r[0] for r in in_default] == [f"far-{i}" for i in range(len(FAR))]
    _no_invented_children(assert_children_sane(conn, parent))


def test_default_holding_only_outliers_is_emptied_into_quarantine(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """No plausible row at all: nothing for instant to turn into a child, so auto copies
    the outliers into quarantine and leaves an empty DEFAULT; no child is invented."""
    make_table(conn, "public", "fixes", nullable=True)
    start = conn.execute("SELECT (date_trunc('day', now()) - interval '5 days')::text").fetchone()
    assert start is not None
    create_parent(conn, "public.fixes", "ts", "1 day", start=start[0], jobmon=False)
    insert_spread(
        conn, sql.Identifier("public", "fixes"), "ts", utc_midnight(conn, 4), now(conn), 300, "r"
    )
    insert_keys(conn, sql.Identifier("public", "fixes"), "ts", FAR, "far")
    before, shape = (
        row_set(conn, "public.fixes"),
        [(k.lower, k.upper) for k in kids(conn, "public.fixes")],
    )

    out, _ = fix_cli(run, dsn, "public.fixes", "auto")

    assert "fixed with copy" in out
    assert_exactly_once(before, row_set(conn, "public.fixes"))
    assert sorted(r[2] for r in quarantined(conn, "public.fixes")) == [
        f"far-{i}" for i in range(len(FAR))
    ]
    assert_default_empty(conn, "public.fixes")
    ks = assert_children_sane(conn, "public.fixes")
    _no_invented_children(ks)
    assert [(k.lower, k.upper) for k in ks][: len(shape)] == shape


# --- nothing to do; what an old script left behind -------------------------------------


def test_empty_default_is_nothing_to_do_and_changes_nothing(
    run: Run, dsn: str, conn: Conn, partman: str, strategy: str
) -> None:
    make_table(conn, "public", "fixes")
    start = conn.execute("SELECT (date_trunc('day', now()) - interval '5 days')::text").fetchone()
    assert start is not None
    create_parent(conn, "public.fixes", "ts", "1 day", start=start[0], jobmon=False)
    insert_spread(
        conn, sql.Identifier("public", "fixes"), "ts", utc_midnight(conn, 4), now(conn), 500, "r"
    )
    assert conn.execute("SELECT count(*) FROM fixes_default").fetchone() == (0,)
    before = fingerprint(conn)

    out, _ = fix_cli(run, dsn, "public.fixes", strategy)

    assert "nothing to do" in out and "holds no rows" in out
    assert fingerprint(conn) == before


def _old_script_interrupted(conn: Conn) -> tuple[str, datetime]:
    """The incident's bash script, killed half-way: it detached the DEFAULT, created the
    first missing day under its wrong name (fixes_p20261126 style) and moved that day's
    rows with DELETE ... RETURNING + INSERT; the rest still sit in a standalone fixes_default."""
    parent, gap = partman_incident(conn)
    conn.execute("ALTER TABLE fixes DETACH PARTITION fixes_default")
    wrong = f"fixes_p{gap:%Y%m%d}"
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF fixes FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("public", wrong), sql.Literal(gap), sql.Literal(gap + DAY)
        )
    )
    conn.execute(
        "WITH moved AS (DELETE FROM fixes_default WHERE ts >= %s AND ts < %s RETURNING *) "
        "INSERT INTO fixes (id, device_id, ts, payload, val) OVERRIDING SYSTEM VALUE "
        "SELECT id, device_id, ts, payload, val FROM moved",
        (gap, gap + DAY),
    )
    return parent, gap


@pytest.mark.parametrize("how", ["auto", "copy"])
def test_default_detached_by_the_old_script_is_adopted_and_finished(
    run: Run, dsn: str, conn: Conn, major: int, how: str
) -> None:
    parent, _gap = _old_script_interrupted(conn)
    before = Counter(row_set(conn, parent))
    before.update(
        tuple(r) for r in conn.execute("SELECT id, ts, payload, val FROM public.fixes_default")
    )
    assert default_of(conn, parent) is None

    out, _ = fix_cli(run, dsn, parent, how)

    assert "fixed with copy" in out
    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert all(k.upper - k.lower == DAY for k in ks)
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, "UTC")
    assert not conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%' AND relkind = 'r'"
    ).fetchall(), "the adopted table was left behind"
    assert_no_default_index_names(conn, parent)
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, "UTC")


# --- off-grid neighbours ---------------------------------------------------------------


def test_children_off_the_grid_new_children_fill_the_gaps_exactly(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str
) -> None:
    """A UTC daily partman set where someone made one day's child at +01 (23:00 to 23:00
    UTC). New children must fill exactly the hours around it, never overlap it."""
    parent, gap = partman_incident(conn, n=0)
    stray_lo = gap + DAY - HOUR
    fmt = PARTMAN_FORMATS[major]["1 day"]
    stray = "fixes_p" + suffix(stray_lo, fmt, "Etc/GMT-1")  # named by its +01 date
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF fixes FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier("public", stray), sql.Literal(stray_lo), sql.Literal(stray_lo + DAY)
        )
    )
    ident = sql.Identifier("public", "fixes")
    if strategy == "copy":  # rows below and above the stray: two gaps
        insert_spread(conn, ident, "ts", gap, stray_lo, 500, "below")
    insert_spread(conn, ident, "ts", stray_lo, stray_lo + DAY, 100, "stray")
    insert_spread(conn, ident, "ts", stray_lo + DAY, now(conn), 2000, "above")
    before = row_set(conn, parent)

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    # instant leaves the empty hours below the stray alone (they held no row); copy fills them.
    ks = assert_children_sane(conn, parent, contiguous=strategy == "copy")
    assert_children_sane(conn, parent, contiguous=True, since=stray_lo)
    by_name = {k.name: k for k in ks}
    assert (by_name[stray].lower, by_name[stray].upper) == (stray_lo, stray_lo + DAY), (
        "the stray was touched"
    )
    after_stray = next(k for k in ks if k.lower == stray_lo + DAY)
    # Its day's name is the stray's: it gets the start time appended, which partman 4.7's
    # suffix parsing ignores (so its ordering of children stays right).
    assert after_stray.name == "fixes_p" + suffix(stray_lo + DAY, fmt, "UTC") + "_2300"
    if strategy == "copy":
        before_stray = next(k for k in ks if k.upper == stray_lo)
        assert (before_stray.lower, before_stray.upper) == (gap, stray_lo), (
            "the gap below is not filled exactly"
        )
        assert after_stray.upper == gap + 2 * DAY, "the clipped day above does not end on the grid"
    else:
        assert after_stray.upper > now(conn), (
            "instant: one wide child from the stray's end past now"
        )
    assert all(
        k.lower.hour == 0 and k.upper - k.lower == DAY for k in ks if k.lower >= after_stray.upper
    )
    assert len({k.name for k in ks}) == len(ks)
    with session(dsn) as c:
        c.execute(
            "SELECT partman.run_maintenance(p_parent_table := 'public.fixes', p_jobmon := false)"
        )
    assert_children_sane(conn, parent, contiguous=strategy == "copy")


# --- hostile names ---------------------------------------------------------------------


def test_odd_identifiers_quotes_spaces_capitals_unicode(
    run: Run, dsn: str, conn: Conn, strategy: str
) -> None:
    schema, table, key = 'Ünïcode "sch"', 'Fix "es" Tbl', "ev ts"
    typed = sql.Identifier(schema, table).as_string(conn)  # how a DBA types it: quoted
    ident = make_table(conn, schema, table, key=key)
    gap = utc_midnight(conn, 3)
    native_children(
        conn,
        ident,
        schema,
        [
            (gap - i * DAY, gap - (i - 1) * DAY, f"{table}_p{gap - i * DAY:%Y%m%d}")
            for i in range(4, 0, -1)
        ],
        default=f"{table}_default",
    )
    insert_spread(conn, ident, key, gap - 2 * DAY, gap, 200, "before")
    insert_spread(conn, ident, key, gap, now(conn), 2000, "outage")
    insert_keys(conn, ident, key, [datetime(1970, 1, 1, tzinfo=UTC)], "far")
    before = row_set(conn, typed, key)

    _out, err = fix_cli(run, dsn, typed, strategy)

    assert_exactly_once(before, row_set(conn, typed, key))
    assert [r[2] for r in quarantined(conn, typed, key)] == ["far-0"]
    assert_default_empty(conn, typed)
    ks = assert_children_sane(conn, typed)
    assert_named(ks, f"{table}_p", "YYYYMMDD", "UTC")
    assert_no_default_index_names(conn, typed)
    assert_check_ok(run, dsn, typed, quarantined=1)
    assert "partguard:" not in err


def test_odd_identifiers_typed_without_quotes_are_found(run: Run, dsn: str, conn: Conn) -> None:
    """``Ünïcode "sch".Fix "es" Tbl`` as typed (PostgreSQL 15's to_regclass rejects it)."""
    schema, table = 'Ünïcode "sch"', 'Fix "es" Tbl'
    ident = make_table(conn, schema, table)
    gap = utc_midnight(conn, 3)
    native_children(
        conn,
        ident,
        schema,
        [(gap - DAY, gap, f"{table}_p{gap - DAY:%Y%m%d}")],
        default=f"{table}_default",
    )
    insert_spread(conn, ident, "ts", gap, now(conn), 300, "outage")
    typed = sql.Identifier(schema, table).as_string(conn)
    before = row_set(conn, typed)

    fix_cli(run, dsn, f"{schema}.{table}", "copy")

    assert_exactly_once(before, row_set(conn, typed))


# --- bad input: a one-line error, a distinct exit code, nothing changed -----------------


def _missing(conn: Conn) -> str:
    native_incident(conn)
    return "public.nope"


def _list_partitioned(conn: Conn) -> str:
    conn.execute("CREATE TABLE lst (id int, region text) PARTITION BY LIST (region)")
    conn.execute("CREATE TABLE lst_eu PARTITION OF lst FOR VALUES IN ('eu')")
    conn.execute("CREATE TABLE lst_default PARTITION OF lst DEFAULT")
    conn.execute("INSERT INTO lst SELECT g, 'us' FROM generate_series(1, 10) g")
    return "public.lst"


def _expression_key(conn: Conn) -> str:
    conn.execute("CREATE TABLE ex (id int, ts timestamp) PARTITION BY RANGE ((ts::date))")
    conn.execute("CREATE TABLE ex_default PARTITION OF ex DEFAULT")
    conn.execute("INSERT INTO ex SELECT g, now() FROM generate_series(1, 10) g")
    return "public.ex"


def _multi_column_key(conn: Conn) -> str:
    conn.execute(
        "CREATE TABLE mc (device_id int, ts timestamptz) PARTITION BY RANGE (device_id, ts)"
    )
    conn.execute("CREATE TABLE mc_default PARTITION OF mc DEFAULT")
    conn.execute("INSERT INTO mc SELECT g, now() FROM generate_series(1, 10) g")
    return "public.mc"


def _subpartitioned(conn: Conn) -> str:
    ident = native_incident(conn)
    day = utc_midnight(conn, 10)
    conn.execute(
        sql.SQL(
            "CREATE TABLE fixes_sub PARTITION OF {} FOR VALUES FROM ({}) TO ({}) "
            "PARTITION BY LIST (device_id)"
        ).format(ident, sql.Literal(day), sql.Literal(day + DAY))
    )
    conn.execute("CREATE TABLE fixes_sub_all PARTITION OF fixes_sub DEFAULT")
    return "public.fixes"


def _unknown_grid(conn: Conn) -> str:
    ident = make_table(conn, "public", "fixes")
    conn.execute("CREATE TABLE fixes_default PARTITION OF fixes DEFAULT")
    insert_spread(conn, ident, "ts", utc_midnight(conn, 3), now(conn), 100, "r")
    return "public.fixes"


def _incident(conn: Conn) -> str:
    native_incident(conn)
    return "public.fixes"


def _foreign_key(conn: Conn) -> str:
    native_incident(conn)
    conn.execute("ALTER TABLE fixes ADD UNIQUE (id, ts)")
    conn.execute(
        "CREATE TABLE notes (id bigint, ts timestamptz, FOREIGN KEY (id, ts) REFERENCES fixes (id, ts))"
    )
    conn.execute("INSERT INTO notes SELECT id, ts FROM fixes LIMIT 5")
    return "public.fixes"


def _two_gaps(conn: Conn) -> str:
    """The DEFAULT's rows in two gaps around a child for the day before yesterday: a day's
    rows on each side (yesterday's child would leave today's gap empty just after midnight)."""
    ident = native_incident(conn)
    mid = utc_midnight(conn, 2)
    conn.execute("DELETE FROM fixes WHERE ts >= %s AND ts < %s", (mid, mid + DAY))
    conn.execute(
        sql.SQL("CREATE TABLE fixes_mid PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            ident, sql.Literal(mid), sql.Literal(mid + DAY)
        )
    )
    # And a few more after the child, whatever the hour: the second gap is never empty.
    insert_spread(conn, ident, "ts", mid + DAY, now(conn), 5, "today")
    return "public.fixes"


BAD_INPUT: dict[str, tuple[Callable[[Conn], str], tuple[str, ...], int, str]] = {
    "missing table": (_missing, (), 66, "does not exist"),
    "list partitioned": (_list_partitioned, (), 65, "list-partitioned"),
    "expression key": (_expression_key, (), 65, "expression"),
    "multi-column key": (_multi_column_key, (), 65, "multi-column"),
    "subpartitioned child": (_subpartitioned, (), 65, "subpartitioned"),
    "unknown grid": (_unknown_grid, (), 67, "--interval"),
    "bad time zone": (_incident, ("--tz", "Mars/Olympus_Mons"), 64, "Mars/Olympus_Mons"),
    "bad interval": (_incident, ("--interval", "fortnightly"), 64, "fortnightly"),
    "key is not the partition key": (_incident, ("--key", "device_id"), 64, "partitioned by ts"),
    "foreign keys reference the parent": (_foreign_key, (), 65, "foreign key"),
    "bad lock timeout": (_incident, ("--lock-timeout", "soon"), 64, "soon"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_a_distinct_exit_code_and_nothing_changed(
    run: Run, dsn: str, conn: Conn, strategy: str, case: str
) -> None:
    build, extra, code, words = BAD_INPUT[case]
    table = build(conn)
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", dsn, table, "--yes", "--strategy", strategy, *extra)

    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("partguard: "), err
    assert words in lines[0]
    assert out == ""
    assert fingerprint(conn) == before


def test_without_yes_off_a_terminal_nothing_is_changed(run: Run, dsn: str, conn: Conn) -> None:
    table = _incident(conn)
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", dsn, table)  # pytest's stdin is no terminal

    assert rc == 64 and out == "" and "--yes" in err and len(err.strip().splitlines()) == 1
    assert fingerprint(conn) == before


def test_non_owner_is_refused_with_exit_77_and_nothing_changed(
    run: Run, dsn: str, conn: Conn, strategy: str
) -> None:
    table = _incident(conn)
    role = f"clerk_{conn.info.dbname}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role))
    )
    before = fingerprint(conn)

    rc, out, err = run(
        "fix", "-d", make_conninfo(dsn, user=role), table, "--yes", "--strategy", strategy
    )

    assert rc == 77 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "owner" in err
    assert fingerprint(conn) == before


def test_instant_refuses_rows_in_two_gaps_and_auto_uses_copy(
    run: Run, dsn: str, conn: Conn
) -> None:
    table = _two_gaps(conn)
    before_fp, before = fingerprint(conn), row_set(conn, table)

    rc, out, err = run("fix", "-d", dsn, table, "--yes", "--strategy", "instant")

    assert rc == 64 and len(err.strip().splitlines()) == 1 and "one gap" in err, err
    assert fingerprint(conn) == before_fp

    out, err = fix_cli(run, dsn, table, "auto")
    assert "fixed with copy" in out
    assert_exactly_once(before, row_set(conn, table))
    assert_default_empty(conn, table)
    ks = assert_children_sane(conn, table)
    assert "fixes_mid" in {k.name for k in ks}


def test_copy_leaves_no_hole_where_the_outage_had_an_empty_day(
    run: Run, dsn: str, conn: Conn
) -> None:
    """Rows in two gaps (so copy), and no row at all on one day of the first: that day gets
    its child too, or rows written there later would fall into the DEFAULT (fix then said
    gap CRITICAL and exited 2)."""
    ident = native_incident(conn)
    mid = utc_midnight(conn, 1)
    conn.execute("DELETE FROM fixes WHERE ts >= %s AND ts < %s", (mid - DAY, mid + DAY))
    conn.execute(
        sql.SQL("CREATE TABLE fixes_mid PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            ident, sql.Literal(mid), sql.Literal(mid + DAY)
        )
    )
    insert_spread(conn, ident, "ts", mid + DAY, now(conn), 5, "today")
    before = row_set(conn, "public.fixes")

    out, _ = fix_cli(run, dsn, "public.fixes", "auto")

    assert "fixed with copy" in out
    assert_exactly_once(before, row_set(conn, "public.fixes"))
    assert_default_empty(conn, "public.fixes")
    ks = assert_children_sane(conn, "public.fixes")  # contiguous: no hole
    assert any(k.lower == mid - DAY and k.upper == mid for k in ks), "the empty day's child"
    assert_check_ok(run, dsn, "public.fixes")


def test_instant_refuses_a_default_the_old_script_detached(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    _old_script_interrupted(conn)
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant")

    assert (
        rc == 64 and out == "" and len(err.strip().splitlines()) == 1 and "--strategy copy" in err
    ), err
    assert fingerprint(conn) == before


# --- dry run ---------------------------------------------------------------------------


def test_dry_run_prints_a_sql_script_and_changes_nothing(
    run: Run, dsn: str, conn: Conn, partman: str, strategy: str
) -> None:
    parent, gap = partman_incident(conn, n=500)
    before = fingerprint(conn)

    rc, out, err = run(
        "fix", "-d", dsn, parent, "--strategy", strategy, "--dry-run"
    )  # no --yes needed

    assert rc == 0, err
    assert fingerprint(conn) == before
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[0].startswith("-- ")
    begins, commits = lines.count("BEGIN;"), lines.count("COMMIT;")
    assert begins == commits >= 3
    # Inside each BEGIN/COMMIT block only SQL; outside only comments.
    inside = False
    for ln in lines:
        if ln == "BEGIN;":
            assert not inside
            inside = True
        elif ln == "COMMIT;":
            assert inside
            inside = False
        elif not inside:
            assert ln.startswith("--"), f"not SQL: {ln!r}"
    assert "DETACH PARTITION" in out and 'CREATE TABLE "public"."fixes_default" PARTITION OF' in out
    if strategy == "instant":
        span = "fixes_p" + suffix(gap, PARTMAN_FORMATS[int(partman[0])]["1 day"], "UTC")
        assert (
            f'RENAME TO "{span}"' in out
            and "VALIDATE CONSTRAINT" in out
            and "ATTACH PARTITION" in out
        )
    else:
        assert "ctid >=" in out and "DROP TABLE" in out
    assert "run_maintenance" in out
    assert "BEGIN" not in err, "the plan goes to stdout only"


def test_dry_run_json_lists_the_steps(
    run: Run, dsn: str, conn: Conn, partman: str, strategy: str
) -> None:
    parent, gap = partman_incident(conn, n=500)
    before = fingerprint(conn)

    rc, out, err = run(
        "fix", "-d", dsn, parent, "--strategy", strategy, "--dry-run", "--format", "json"
    )

    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "planned" and doc["strategy"] == strategy
    names = [s["name"] for s in doc["steps"]]
    assert "swap" in names and "maintenance" in names and "release" in names
    assert all(isinstance(s["sql"], list) and s["locks"] for s in doc["steps"])
    assert doc["params"]["buckets"], "the DEFAULT's buckets"
    if strategy == "copy":
        assert {"copy", "verify", "drop"} <= set(names)
        assert [c["name"] for c in doc["params"]["children"]][:4] == [
            "fixes_p" + suffix(gap + i * DAY, PARTMAN_FORMATS[int(partman[0])]["1 day"], "UTC")
            for i in range(4)
        ]
    else:
        assert "validate" in names and doc["params"]["span_lo"].startswith(gap.date().isoformat())
    assert fingerprint(conn) == before


# --- the old script's interface --------------------------------------------------------


def test_fix_partitioned_table_names_children_by_the_tables_convention(
    run: Run, dsn: str, conn: Conn, major: int, capsys: pytest.CaptureFixture[str]
) -> None:
    parent, gap = partman_incident(conn)
    before = row_set(conn, parent)

    rc = fix_partitioned_table_main([dsn, "fixes", "ts", "UTC"])

    assert rc == 0, capsys.readouterr().err
    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, "UTC")
    if major == 4:
        assert f"fixes_p{gap:%Y_%m_%d}" in {k.name for k in ks}
        assert not [k.name for k in ks if re.fullmatch(r"fixes_p\d{8}", k.name)], (
            "the old script's names"
        )
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, "UTC")


def test_fix_partitioned_table_refuses_a_wrong_partition_key(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_incident(conn, n=300)
    before = fingerprint(conn)

    rc = fix_partitioned_table_main([dsn, "fixes", "received_at", "UTC"])

    err = capsys.readouterr().err
    assert rc == 64
    assert err.startswith("fix-partitioned-table: ") and len(err.strip().splitlines()) == 1
    assert "partitioned by ts, not by received_at" in err
    assert fingerprint(conn) == before
    assert (
        fix_partitioned_table_main([dsn, "fixes"]) == 64
    )  # the old script's four arguments, no fewer


# --- key types, options ----------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["date", "timestamp"])
def test_date_and_naive_timestamp_keys(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str, key_type: str
) -> None:
    """Bounds on the wall clock, no zone: the planner must compare dates with dates."""
    parent, gap = partman_incident(conn, key_type=key_type, n=1500)
    before = row_set(conn, parent)

    fix_cli(run, dsn, parent, strategy)

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, None)
    new = [k for k in ks if k.lower >= gap]
    assert new[0].lower == gap
    assert all(k.upper - k.lower == DAY for k in (new if strategy == "copy" else new[1:]))
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, "UTC")


def test_interval_option_gives_a_grid_to_a_table_without_children(
    run: Run, dsn: str, conn: Conn, strategy: str
) -> None:
    """Without children or partman the grid is unknowable (exit 67); --interval supplies it."""
    table = _unknown_grid(conn)
    before = row_set(conn, table)

    fix_cli(run, dsn, table, strategy, "--interval", "1 day", "--premake", "6")

    assert_exactly_once(before, row_set(conn, table))
    assert_default_empty(conn, table)
    ks = assert_children_sane(conn, table)
    assert ks[0].lower == utc_midnight(conn, 3)
    assert ks[-1].upper >= utc_midnight(conn, -7), "--premake 6: six children past today"
    assert_named(ks, "fixes_p", "YYYYMMDD", "UTC")


def test_copy_keep_source_keeps_the_detached_default_and_copies_every_row(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    parent, _gap = partman_incident(conn, n=1000)
    before = row_set(conn, parent)
    outage = Counter(r for r in before if r[2].startswith("outage"))

    fix_cli(run, dsn, parent, "copy", "--keep-source")

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    (held,) = conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%' "
        "AND relkind = 'r' AND NOT relispartition"
    ).fetchall()
    kept = Counter(
        tuple(r)
        for r in conn.execute(
            sql.SQL("SELECT id, ts, payload, val FROM {}").format(sql.Identifier("public", held[0]))
        )
    )
    assert kept == outage, "the kept source is the DEFAULT as it was"


# --- regressions: bugs found by this matrix, fixed outside plan/ ----------------------


# A table outside the partition set (e.g. a detached fixes_p<day> left lying around) has a
# new child's name. partman 4.7's create_partition_time silently skips a name that exists,
# so that bucket would get no child (a hole); the catalog now lists every relation name of
# the schema and new children avoid them (Table.schema_names).


@pytest.mark.parametrize(("how", "day"), [("instant", 5), ("copy", 5), ("copy", 1)])
def test_a_stray_table_with_a_childs_name_never_leaves_a_hole(
    run: Run, dsn: str, conn: Conn, partman: str, how: str, day: int
) -> None:
    parent, gap = partman_incident(conn, n=1000)
    stray = f"fixes_p{gap + day * DAY:%Y_%m_%d}"
    conn.execute(sql.SQL("CREATE TABLE {} (note text)").format(sql.Identifier("public", stray)))
    before, shape = row_set(conn, parent), fingerprint(conn)

    rc, _, err = run("fix", "-d", dsn, parent, "--yes", "--strategy", how)

    if rc == 0:  # repaired: around the stray name, with no hole
        assert_exactly_once(before, row_set(conn, parent))
        assert_default_empty(conn, parent)
        assert_children_sane(conn, parent)
    else:  # or refused up front: one line, nothing changed
        assert len(err.strip().splitlines()) == 1 and stray in err
        assert fingerprint(conn) == shape


# The old script's <timezone> must not override partman's zone: Berlin-midnight children on
# a UTC partman table made partman's next premake skip one as existing and leave a one-day
# hole. It is now a hint (--default-tz), used only where partman and the children are silent.


def test_fix_partitioned_table_timezone_does_not_override_partmans_grid(
    dsn: str, conn: Conn, major: int, capsys: pytest.CaptureFixture[str]
) -> None:
    parent, _ = partman_incident(conn, n=1000)
    before = row_set(conn, parent)

    rc = fix_partitioned_table_main([dsn, "fixes", "ts", "Europe/Berlin"])

    assert rc == 0, capsys.readouterr().err
    assert_exactly_once(before, row_set(conn, parent))
    ks = assert_children_sane(conn, parent)
    off = [(k.name, k.lower) for k in ks if k.lower.astimezone(UTC).hour != 0]
    assert not off, f"children off partman's UTC grid: {off}"
    assert_partman_healthy(dsn, parent, PARTMAN_FORMATS[major]["1 day"], "UTC")
