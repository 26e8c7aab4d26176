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

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from builders import version_args
from psycopg import sql
from psycopg.conninfo import make_conninfo

from partguard.cli import fix_partitioned_table_main
from partguard.commands.fix import FixRequest, fix
from partguard.db import connect
from partguard.plan.fix import FixOptions

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]  # partguard argv -> (exit code, stdout, stderr)
STRATEGIES = ("instant", "copy")
DAY, HOUR = timedelta(days=1), timedelta(hours=1)

# partman 4.7's datetime_string per interval, and 5.x's (the 'p' prefix is partman's).
PARTMAN_FORMATS = {
    4: {"1 hour": "YYYY_MM_DD_HH24MI", "1 day": "YYYY_MM_DD", "1 month": "YYYY_MM"},
    5: {"1 hour": "YYYYMMDD_HH24MISS", "1 day": "YYYYMMDD", "1 month": "YYYYMMDD"},
}
_STRFTIME = {"YYYY": "%Y", "MM": "%m", "DD": "%d", "HH24": "%H", "MI": "%M", "SS": "%S"}


# --- test data -------------------------------------------------------------------


def make_table(conn: Conn, schema: str, table: str, *, key: str = "ts", key_type: str = "timestamptz",
               nullable: bool = False) -> sql.Identifier:
    """A table like the incident's ``fixes``: an identity GENERATED ALWAYS id, a generated
    STORED column, and indexes on the key and on (device_id, key). ``key='id'`` partitions
    by the identity column itself (partman's id-based sets)."""
    parent = sql.Identifier(schema, table)
    k = sql.Identifier(key)
    key_col = sql.SQL("") if key == "id" else sql.SQL("{} {}{},").format(
        k, sql.SQL(key_type), sql.SQL("" if nullable else " NOT NULL"))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(
        "CREATE TABLE {parent} (id bigint GENERATED ALWAYS AS IDENTITY, device_id int NOT NULL, {key_col}"
        " payload text, val double precision, val2 double precision GENERATED ALWAYS AS (val * 2) STORED)"
        " PARTITION BY RANGE ({k})"
    ).format(parent=parent, key_col=key_col, k=k))
    conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(parent, k))
    conn.execute(sql.SQL("CREATE INDEX ON {} (device_id, {})").format(parent, k))
    return parent


def create_parent(conn: Conn, parent: str, control: str, interval: str, start: str, *, premake: int = 4) -> None:
    """``partman.create_parent`` with named arguments that mean the same on 4.7 and 5.x
    (``p_type := 'native'`` only exists, and is needed, on 4.x). The grid is laid in the
    session's TimeZone, as partman does."""
    args = [
        sql.SQL("p_parent_table := {}").format(sql.Literal(parent)),
        sql.SQL("p_control := {}").format(sql.Literal(control)),
        sql.SQL("p_interval := {}").format(sql.Literal(interval)),
        sql.SQL("p_premake := {}").format(sql.Literal(premake)),
        sql.SQL("p_start_partition := {}").format(sql.Literal(start)),
        sql.SQL("p_jobmon := false"),
    ]
    args.extend(version_args(conn))
    conn.execute(sql.SQL("SELECT partman.create_parent({})").format(sql.SQL(", ").join(args)))


def native_children(conn: Conn, parent: sql.Identifier, schema: str, bounds: list[tuple[Any, Any, str]],
                    *, default: str | None) -> None:
    """Hand-made children ``(lower, upper, name)`` and, optionally, a DEFAULT."""
    for lo, hi, name in bounds:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(schema, name), parent, sql.Literal(lo), sql.Literal(hi)))
    if default:
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(schema, default), parent))


def set_db_timezone(conn: Conn, zone: str) -> None:
    """The role/database default TimeZone: the zone partman (and so partguard) computes in."""
    conn.execute(sql.SQL("ALTER DATABASE {} SET TimeZone = {}").format(
        sql.Identifier(conn.info.dbname), sql.Literal(zone)))


def session(dsn: str, **kw: Any) -> Conn:
    """A new connection with the database's default settings (like cron's ``psql -c``)."""
    return psycopg.connect(make_conninfo(dsn, **kw), autocommit=True)


@dataclass(frozen=True)
class Kid:
    name: str
    lower: Any
    upper: Any


def key_type(conn: Conn, parent: str) -> str:
    row = conn.execute(
        """SELECT format_type(a.atttypid, a.atttypmod) FROM pg_partitioned_table p
           JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
           WHERE p.partrelid = %s::regclass""", (parent,)).fetchone()
    assert row is not None
    return str(row[0])


_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$")


def kids(conn: Conn, parent: str) -> list[Kid]:
    """Non-default children with typed bounds (read from relpartbound, never from names)."""
    rows = conn.execute(
        """SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'""",
        (parent,)).fetchall()
    typ = key_type(conn, parent)
    out = []
    for name, bound in rows:
        m = _BOUND.match(bound)
        assert m, bound
        texts = [t.strip("'") for t in m.groups()]
        typed = conn.execute(sql.SQL("SELECT x::{} FROM unnest(%s::text[]) WITH ORDINALITY u(x, o) ORDER BY o")
                             .format(sql.SQL(typ)), (texts,)).fetchall()
        out.append(Kid(name, typed[0][0], typed[1][0]))
    return sorted(out, key=lambda c: c.lower)


def default_of(conn: Conn, parent: str) -> str | None:
    row = conn.execute(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'""",
        (parent,)).fetchone()
    return None if row is None else str(row[0])


def drop_children(conn: Conn, parent: str, schema: str, doomed: Callable[[Kid], bool]) -> list[str]:
    """Drop the children ``doomed`` picks: how "maintenance stopped" looks afterwards."""
    gone = []
    for kid in kids(conn, parent):
        if doomed(kid):
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, kid.name)))
            gone.append(kid.name)
    return gone


def insert_spread(conn: Conn, parent: sql.Identifier, key: str, lo: Any, hi: Any, n: int, tag: str) -> None:
    """``n`` rows with keys spread evenly over ``[lo, hi)``; payload ``tag-<i>``, val = i.

    The step is in seconds: ``timestamptz + '1 day'`` would follow the wall clock and
    overshoot ``hi`` by the hour a DST change adds."""
    conn.execute(sql.SQL(
        "INSERT INTO {t} (device_id, {k}, payload, val) "
        "SELECT g %% 7, %(lo)s::timestamptz + make_interval(secs => extract(epoch FROM %(hi)s::timestamptz"
        " - %(lo)s::timestamptz) * g / %(n)s),"
        " %(tag)s || '-' || g, g FROM generate_series(0, %(n)s - 1) g"
    ).format(t=parent, k=sql.Identifier(key)), {"lo": lo, "hi": hi, "n": n, "tag": tag})


def insert_keys(conn: Conn, parent: sql.Identifier, key: str, keys: list[Any], tag: str) -> None:
    """One row per given key (None for a NULL key)."""
    for i, value in enumerate(keys):
        conn.execute(sql.SQL("INSERT INTO {} (device_id, {}, payload, val) VALUES (1, %s, %s, %s)").format(
            parent, sql.Identifier(key)), (value, f"{tag}-{i}", -1 - i))


def insert_ids(conn: Conn, parent: sql.Identifier, lo: int, hi: int) -> None:
    """Rows with explicit ids ``lo .. hi-1`` (id is the partition key)."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (id, device_id, payload, val) OVERRIDING SYSTEM VALUE "
        "SELECT g, g %% 7, 'id-' || g, g FROM generate_series(%s, %s - 1) g").format(parent), (lo, hi))


def utc_midnight(conn: Conn, days_ago: int = 0) -> datetime:
    row = conn.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') - %s * interval '1 day'",
                       (days_ago,)).fetchone()
    assert row is not None
    return row[0].replace(tzinfo=UTC)  # type: ignore[no-any-return]


def now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def partman_incident(conn: Conn, *, schema: str = "public", table: str = "fixes", interval: str = "1 day",
                     outage: int = 3, start_back: int = 10, n: int = 3000,
                     key_type: str = "timestamptz") -> tuple[str, Any]:
    """The incident: a partman-managed set whose maintenance stopped ``outage`` intervals
    ago, so the DEFAULT holds every row written since. Returns (parent, gap start)."""
    unit = {"1 hour": "hour", "1 day": "day", "1 month": "month"}[interval]
    parent = f"{schema}.{table}"
    ident = make_table(conn, schema, table, key_type=key_type)

    def back(n: int) -> sql.Composed:  # the start of the interval n intervals before now's
        return sql.SQL("date_trunc({}, now()) - {} * {}::interval").format(
            sql.Literal(unit), sql.Literal(n), sql.Literal(interval))

    start = conn.execute(sql.SQL("SELECT ({})::text").format(back(start_back))).fetchone()
    assert start is not None
    create_parent(conn, parent, "ts", interval, start[0])
    row = conn.execute(sql.SQL("SELECT ({})::{}, {}").format(back(outage), sql.SQL(key_type), back(outage + 2)))
    gap, earlier = row.fetchone() or (None, None)
    insert_spread(conn, ident, "ts", earlier, gap, n // 10, "before")  # rows already in children
    drop_children(conn, parent, schema, lambda k: k.lower >= gap)
    insert_spread(conn, ident, "ts", gap, now(conn), n, "outage")
    return parent, gap


# --- what must hold after every fix ------------------------------------------------


def row_set(conn: Conn, parent: str, key: str = "ts") -> Counter[tuple[Any, ...]]:
    """Every row of the table plus every row in its quarantine table, with multiplicity."""
    rows = conn.execute(sql.SQL("SELECT id, {k}, payload, val FROM {t}").format(
        k=sql.Identifier(key), t=ident_of(conn, parent))).fetchall()
    out: Counter[tuple[Any, ...]] = Counter(tuple(r) for r in rows)
    out.update(tuple(r) for r in quarantined(conn, parent, key))
    return out


def quarantine_name(conn: Conn, parent: str) -> str:
    row = conn.execute("SELECT c.relname FROM pg_class c WHERE c.oid = %s::regclass", (parent,)).fetchone()
    assert row is not None
    return f"{row[0]}_quarantine"


def quarantined(conn: Conn, parent: str, key: str = "ts") -> list[tuple[Any, ...]]:
    q = sql.Identifier("partguard", quarantine_name(conn, parent))
    exists = conn.execute("SELECT to_regclass(%s)", (q.as_string(conn),)).fetchone()
    if not exists or exists[0] is None:
        return []
    return [tuple(r) for r in conn.execute(
        sql.SQL("SELECT id, {}, payload, val FROM {}").format(sql.Identifier(key), q)).fetchall()]


def assert_exactly_once(before: Counter[tuple[Any, ...]], after: Counter[tuple[Any, ...]]) -> None:
    assert before and max(before.values()) == 1, "test data must have unique rows"
    dups = [r for r, n in after.items() if n > 1]
    assert not dups, f"{len(dups)} rows duplicated, e.g. {dups[:3]}"
    lost, extra = set(before) - set(after), set(after) - set(before)
    assert not lost and not extra, f"lost {len(lost)} (e.g. {sorted(lost, key=str)[:3]}), extra {len(extra)}"


def assert_children_sane(conn: Conn, parent: str, *, contiguous: bool = True, since: Any = None) -> list[Kid]:
    """No two children overlap; with ``contiguous``, none leaves a hole either (from ``since`` on)."""
    ks = kids(conn, parent)
    for a, b in itertools.pairwise(ks):
        if since is not None and a.lower < since:
            continue
        assert a.upper <= b.lower, f"{a.name} [{a.lower}, {a.upper}) overlaps {b.name} [{b.lower}, {b.upper})"
        if contiguous:
            assert a.upper == b.lower, f"hole between {a.name} (to {a.upper}) and {b.name} (from {b.lower})"
    return ks


def assert_default_empty(conn: Conn, parent: str, expect: int = 0) -> None:
    """A fresh DEFAULT exists and holds ``expect`` rows (0 unless outliers were kept)."""
    d = default_of(conn, parent)
    assert d is not None, "the fix must leave a fresh DEFAULT behind"
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_child_ident(conn, parent, d))).fetchone()
    assert row is not None and row[0] == expect, f"{d} holds {row and row[0]} rows, expected {expect}"


def names_of(conn: Conn, parent: str) -> tuple[str, str]:
    """(schema, table) of a table named as a DBA types it (quoted where needed)."""
    row = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.oid = %s::regclass", (parent,)).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def ident_of(conn: Conn, parent: str) -> sql.Identifier:
    return sql.Identifier(*names_of(conn, parent))


def _child_ident(conn: Conn, parent: str, name: str) -> sql.Identifier:
    return sql.Identifier(names_of(conn, parent)[0], name)


def assert_no_default_index_names(conn: Conn, parent: str) -> None:
    """Only the fresh DEFAULT's own indexes may be called ``…_default_…``; every index of
    every child is attached to the parent's partitioned index (a normal child's shape)."""
    d = default_of(conn, parent)
    rows = conn.execute(
        """SELECT c.relname, ic.relname, h.inhparent IS NOT NULL
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class ic ON ic.oid = x.indexrelid
           LEFT JOIN pg_inherits h ON h.inhrelid = ic.oid
           WHERE i.inhparent = %s::regclass""", (parent,)).fetchall()
    assert rows
    for table, index, attached in rows:
        assert attached, f"index {index} of {table} is not attached to the parent's index"
        if "_default" in index:
            assert table == d, f"{table} (not the DEFAULT) still has an index named {index}"
        if table != d:
            assert index.startswith(table), f"{table}'s index {index} is not named like its table"


def suffix(start: Any, fmt: str | None, zone: str | None) -> str:
    """A child's suffix the way partman's to_char renders it in the session zone."""
    if isinstance(start, int):
        return str(start)
    assert fmt is not None
    if isinstance(start, datetime) and start.tzinfo is not None and zone:
        start = start.astimezone(ZoneInfo(zone))
    pattern = re.sub("|".join(sorted(_STRFTIME, key=len, reverse=True)), lambda m: _STRFTIME[m.group()], fmt)
    return str(start.strftime(pattern))


def assert_named(ks: list[Kid], stem: str, fmt: str | None, zone: str | None) -> None:
    """Every child's name is stem + suffix(lower bound): what the table's convention gives."""
    for k in ks:
        assert k.name == stem + suffix(k.lower, fmt, zone), f"{k.name} is not named for its lower bound {k.lower}"


def run_partman_maintenance(dsn: str, parent: str, *, times: int = 3) -> list[str]:
    """pg_partman's own maintenance the way users run it: ``CALL run_maintenance_proc()`` (a
    timer, the background worker) and ``run_maintenance(parent)``, several times. Fails on any
    error; returns partman's WARNINGs (5.5 reports a skipped set only as a WARNING)."""
    warnings: list[str] = []
    with session(dsn) as c:
        c.add_notice_handler(lambda d: warnings.append(d.message_primary or "")
                             if (d.severity_nonlocalized or "") == "WARNING" else None)
        for _ in range(times):
            c.execute("CALL partman.run_maintenance_proc()")
            c.execute("SELECT partman.run_maintenance(p_parent_table := %s, p_jobmon := false)", (parent,))
    # 5.5 warns on every run when the installed version is not the control file's default:
    # our side-by-side test install, not a fault of the table.
    return [w for w in warnings if "is the default available" not in w]


def has_wide_child(ks: list[Kid]) -> bool:
    """A child spanning about two intervals or more (months differ by a few days; DST days by an hour)."""
    spans = [k.upper - k.lower for k in ks]
    return len(spans) > 1 and max(spans) >= min(spans) * 1.8


def assert_partman_healthy(dsn: str, parent: str, fmt: str, zone: str, *, more: int = 3) -> list[Kid]:
    """What a user's own partman maintenance must find after a fix, on every version:
    ``show_partitions`` lists every child; ``run_maintenance_proc()`` and
    ``run_maintenance(parent)`` run again and again without an error or a skip WARNING, and
    leave no gap and no overlap; given a larger premake, partman makes ``more`` new children
    named by its own convention.

    Next to a wide child (``--strategy instant``), partman 5.x counts premade children from
    the slot of one of its old rows, so a *raised* premake is not met until live rows reach
    the children after it: partguard premakes past the wide child so the configured runway
    holds, and ``check`` says WARNING about it (asserted by the callers' ``assert_check_ok``)."""
    stem = parent.split(".")[1] + "_p"
    with session(dsn) as c:
        before = kids(c, parent)
        shown = c.execute("SELECT partition_tablename FROM partman.show_partitions(%s)", (parent,)).fetchall()
        assert sorted(r[0] for r in shown) == sorted(k.name for k in before)
        version = str(c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()[0])  # type: ignore[index]
    assert run_partman_maintenance(dsn, parent) == []
    with session(dsn) as c:
        assert_children_sane(c, parent, contiguous=False)
        assert_children_sane(c, parent, since=before[-1].lower)
        c.execute("UPDATE partman.part_config SET premake = premake + %s WHERE parent_table = %s", (more, parent))
    assert run_partman_maintenance(dsn, parent) == []
    with session(dsn) as c:
        assert_children_sane(c, parent, contiguous=False)
        after = assert_children_sane(c, parent, since=before[-1].lower)
        premake, reach = runway_wanted(c, parent, isinstance(before[0].lower, int))
    new = [k for k in after if k.name not in {b.name for b in before}]
    assert all(k.lower >= before[-1].upper for k in new)
    assert_named(new, stem, fmt, zone)
    if has_wide_child(before) and int(version.split(".")[0]) >= 5 and not isinstance(before[0].lower, int):
        # partman 5.x's own arithmetic (see above): the configured runway holds, a raised one
        # waits for live rows to pass the wide child.
        with session(dsn) as c:
            _, reach = runway_wanted(c, parent, False, premake - more)
    reach = like(reach, after[-1].upper)
    assert after[-1].upper >= reach, f"children end at {after[-1].upper}, premake {premake} wants {reach}"
    return after


def like(x: Any, sample: Any) -> Any:
    """A timestamptz as a bound of ``sample``'s type (date, naive timestamp in UTC, aware)."""
    if isinstance(x, datetime) and not isinstance(sample, datetime):
        return x.astimezone(UTC).date()
    if isinstance(x, datetime) and sample.tzinfo is None:
        return x.astimezone(UTC).replace(tzinfo=None)
    return x


def runway_wanted(c: Conn, parent: str, ids: bool, premake: int | None = None) -> tuple[int, Any]:
    """(premake, where the children must reach): ``premake`` intervals past now, or past the
    largest id, as partman counts (its interval added in the session's zone)."""
    cfg = c.execute("SELECT premake, partition_interval, control FROM partman.part_config WHERE parent_table = %s",
                    (parent,)).fetchone()
    assert cfg is not None
    n = cfg[0] if premake is None else premake
    if ids:
        top = c.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(cfg[2]), ident_of(c, parent))).fetchone()
        assert top is not None
        return int(cfg[0]), int(top[0]) + n * int(cfg[1])
    row = c.execute("SELECT now() + %s * %s::interval", (n, cfg[1])).fetchone()
    assert row is not None
    return int(cfg[0]), row[0]


def assert_check_ok(run: Run, dsn: str, parent: str, quarantined: int = 0) -> None:
    """``partguard check`` agrees: status OK, no default_rows. A wide child left by instant is
    INFO on a native table and a WARNING on a partman table (whose arithmetic it confuses):
    then it must say what partman will do wrong. Rows kept in quarantine are a WARNING with
    their count. Nothing else may be wrong."""
    rc, report, _ = run("check", "-d", dsn, "-t", parent, "--format", "json")
    doc = json.loads(report)
    faults = [(f["code"], f["severity"], f["message"]) for f in doc["findings"] if f["severity"] != "info"]
    wide = [f for f in faults if f[0] == "wide_child"]
    assert all(sev == "warning" and "premake" in msg and "partguard split" in msg for _, sev, msg in wide), wide
    kept = [f["detail"]["rows"] for f in doc["findings"] if f["code"] == "quarantine_rows"]
    assert kept == ([quarantined] if quarantined else []), doc["findings"]
    others = [f for f in faults if f[0] not in ("wide_child", "quarantine_rows")]
    assert rc == (1 if wide or quarantined else 0) and not others, faults
    assert "default_rows" not in {f["code"] for f in doc["findings"]}


def fingerprint(conn: Conn) -> list[Any]:
    """Everything a refused fix must leave alone: relations, bounds, constraints, indexes,
    triggers, schemas, partman's config, and the rows of every table."""
    user_ns = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
    rels = conn.execute(f"""
        SELECT n.nspname, c.relname, c.relkind::text, coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
               c.relispartition
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user_ns} ORDER BY 1, 2""").fetchall()
    cons = conn.execute(f"""
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(x.oid), convalidated
        FROM pg_constraint x JOIN pg_namespace n ON n.oid = x.connamespace WHERE {user_ns} ORDER BY 1, 2""").fetchall()
    trig = conn.execute("""SELECT tgrelid::regclass::text, tgname, tgenabled::text FROM pg_trigger
                           WHERE NOT tgisinternal ORDER BY 1, 2""").fetchall()
    schemas = conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()
    counts = []
    for schema, name, kind, _, _ in rels:
        if kind == "r":
            n = conn.execute(sql.SQL("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {} t")
                             .format(sql.Identifier(schema, name))).fetchone()
            counts.append((schema, name, n))
    return [rels, cons, trig, schemas, counts]


# --- driving the CLI ---------------------------------------------------------------



def fix_cli(run: Run, dsn: str, table: str, strategy: str, *extra: str, still: str | None = None) -> tuple[str, str]:
    """``partguard fix TABLE --yes --strategy S …`` that must succeed: (stdout, stderr).

    With ``still``, the repair must succeed but leave the table CRITICAL for that finding
    (exit 2, saying so on its last stderr line): a fix never says "fixed" while check does not."""
    rc, out, err = run("fix", "-d", dsn, table, "--yes", "--strategy", strategy, *extra)
    if still is None:
        assert rc == 0, f"fix failed ({rc}): {err}"
    else:
        assert rc == 2, f"fix exited {rc}, expected 2 ({still} is left): {err}"
        last = err.strip().splitlines()[-1]
        assert "is not healthy yet" in last and f"{still}:" in last, last
    return out, err


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

    extra = ("--jobs", "2", "--chunk-pages", "16") if strategy == "copy" else ()  # several block ranges
    out, err = fix_cli(run, dsn, parent, strategy, *extra)

    assert f"fixed with {strategy}" in out
    assert "partguard:" not in err  # progress lines at most, no error or warning
    assert_exactly_once(before, row_set(conn, parent))
    assert quarantined(conn, parent) == []
    assert_default_empty(conn, parent)
    assert conn.execute("SELECT count(*) FROM fixes WHERE val2 IS DISTINCT FROM val * 2").fetchone() == (0,)
    ks = assert_children_sane(conn, parent)
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, "UTC")
    assert any(k.lower <= now(conn) < k.upper for k in ks), "no child for now"
    new = [k for k in ks if k.lower >= gap]
    if strategy == "instant":
        wide = new[0]
        assert wide.name == "fixes_p" + suffix(gap, fmt, "UTC")
        assert wide.lower == gap and wide.upper > now(conn)
        in_wide = {r[0] for r in conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier("public", wide.name)))}
        assert in_wide == outage_ids
        same = conn.execute("SELECT %s::regclass::oid", (wide.name,)).fetchone()
        assert same == default_oid, "instant moves no row: the former DEFAULT itself is the wide child"
        assert all(k.upper - k.lower == DAY for k in new[1:])
    else:
        assert all(k.upper - k.lower == DAY for k in new), [(k.name, k.lower, k.upper) for k in new]
        assert [k.lower for k in new[:4]] == [gap + i * DAY for i in range(4)]
    assert_no_default_index_names(conn, parent)
    assert not conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%' "
                            "AND relkind = 'r'").fetchall(), "a holding table was left behind"
    assert_check_ok(run, dsn, parent)
    assert_partman_healthy(dsn, parent, fmt, "UTC")
    # A row written now has a child (identity ALWAYS keeps numbering without collisions).
    landed = conn.execute("INSERT INTO fixes (device_id, ts, payload, val) VALUES (1, now(), 'new', 1) "
                          "RETURNING tableoid::regclass::text, id").fetchone()
    assert landed is not None and landed[0] != "fixes_default" and landed[1] not in {r[0] for r in before}
    # Done is done: the same command again finds nothing to do and changes nothing.
    settled = fingerprint(conn)
    out, _ = fix_cli(run, dsn, parent, strategy)
    assert "nothing to do" in out
    assert fingerprint(conn) == settled


def test_fix_library_call_reports_children_and_rows(dsn: str, conn: Conn, major: int, strategy: str) -> None:
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


@pytest.mark.parametrize(("table", "fmt", "stem"), [
    ("fixes", "YYYYMMDD", "fixes_p"),  # the old script's names
    ("t", "YYYY_MM_DD", "t_"),  # no "p", a different date format
])
def test_native_table_new_children_follow_the_existing_pattern(
    run: Run, dsn: str, conn: Conn, strategy: str, table: str, fmt: str, stem: str
) -> None:
    parent = f"public.{table}"
    ident = make_table(conn, "public", table)
    gap = utc_midnight(conn, 3)
    days = [gap - i * DAY for i in range(6, 0, -1)]
    native_children(conn, ident, "public", [(d, d + DAY, stem + suffix(d, fmt, "UTC")) for d in days],
                    default=f"{table}_default")
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


@pytest.mark.parametrize(("interval", "outage", "start_back"), [("1 hour", 3, 10), ("1 month", 1, 5)])
def test_partman_hourly_and_monthly_grids(
    run: Run, dsn: str, conn: Conn, major: int, strategy: str, interval: str, outage: int, start_back: int
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
        (k.name, k.lower, k.upper) for k in new]
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
    create_parent(conn, parent, "id", "1000", "0")
    insert_ids(conn, ident, 1, 3000)
    drop_children(conn, parent, "public", lambda k: k.lower >= 3000)
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
        assert [(k.lower, k.upper) for k in new[:4]] == [(3000, 4000), (4000, 5000), (5000, 6000), (6000, 7000)]
    else:
        assert new[0].upper >= 7000 and all(k.upper - k.lower == 1000 for k in new[1:])
    assert_no_default_index_names(conn, parent)
    with session(dsn) as c:
        shown = c.execute("SELECT partition_tablename FROM partman.show_partitions(%s)", (parent,)).fetchall()
        assert sorted(r[0] for r in shown) == sorted(k.name for k in ks)
        c.execute("SELECT partman.run_maintenance(p_parent_table := %s, p_jobmon := false)", (parent,))
        # partman premakes from the newest id: write past the runway and ask again.
        insert_ids(c, ident, new[-1].lower, new[-1].lower + 10)
        c.execute("SELECT partman.run_maintenance(p_parent_table := %s, p_jobmon := false)", (parent,))
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
    create_parent(conn, parent, "id", "1000", "0")
    insert_ids(conn, ident, 1, 3000)
    drop_children(conn, parent, "public", lambda k: k.lower >= 3000)
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
    native_children(conn, ident, "public", [(lo, lo + 1000, f"ev_p{lo}") for lo in (0, 1000, 2000)],
                    default="ev_default")
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


def test_partman_grid_in_a_fixed_plus_one_zone(run: Run, dsn: str, conn: Conn, major: int, strategy: str) -> None:
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


def test_native_grid_in_plus_one_given_by_tz_option(run: Run, dsn: str, conn: Conn, strategy: str) -> None:
    zone = ZoneInfo("Etc/GMT-1")
    ident = make_table(conn, "public", "fixes")
    today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    gap = today - 3 * DAY
    native_children(conn, ident, "public",
                    [(gap - i * DAY, gap - (i - 1) * DAY, f"fixes_p{gap - i * DAY:%Y%m%d}") for i in range(5, 0, -1)],
                    default="fixes_default")
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
        create_parent(c, "public.fixes", "ts", "1 day", "2026-10-20")
        insert_spread(c, ident, "ts", datetime(2026, 10, 21, tzinfo=berlin), lo, 300, "before")
        insert_spread(c, ident, "ts", hi, now(c), 300, "after")  # partman premakes from the newest row
        drop_children(c, "public.fixes", "public", lambda k: lo <= k.lower < hi)
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
        assert [k.lower for k in new] == [datetime(2026, 10, d, tzinfo=berlin) for d in (24, 25, 26, 27)]
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
        assert not [k.name for k in ks if k.lower <= when < k.upper], f"a child was invented for {when}"
    assert ks[0].lower > datetime(2000, 1, 1, tzinfo=UTC) and ks[-1].upper < datetime(2100, 1, 1, tzinfo=UTC)


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


def test_default_holding_only_outliers_is_emptied_into_quarantine(run: Run, dsn: str, conn: Conn,
                                                                 partman: str) -> None:
    """No plausible row at all: nothing for instant to turn into a child, so auto copies
    the outliers into quarantine and leaves an empty DEFAULT; no child is invented."""
    make_table(conn, "public", "fixes", nullable=True)
    start = conn.execute("SELECT (date_trunc('day', now()) - interval '5 days')::text").fetchone()
    assert start is not None
    create_parent(conn, "public.fixes", "ts", "1 day", start[0])
    insert_spread(conn, sql.Identifier("public", "fixes"), "ts", utc_midnight(conn, 4), now(conn), 300, "r")
    insert_keys(conn, sql.Identifier("public", "fixes"), "ts", FAR, "far")
    before, shape = row_set(conn, "public.fixes"), [(k.lower, k.upper) for k in kids(conn, "public.fixes")]

    out, _ = fix_cli(run, dsn, "public.fixes", "auto")

    assert "fixed with copy" in out
    assert_exactly_once(before, row_set(conn, "public.fixes"))
    assert sorted(r[2] for r in quarantined(conn, "public.fixes")) == [f"far-{i}" for i in range(len(FAR))]
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
    create_parent(conn, "public.fixes", "ts", "1 day", start[0])
    insert_spread(conn, sql.Identifier("public", "fixes"), "ts", utc_midnight(conn, 4), now(conn), 500, "r")
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
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF fixes FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier("public", wrong), sql.Literal(gap), sql.Literal(gap + DAY)))
    conn.execute(
        "WITH moved AS (DELETE FROM fixes_default WHERE ts >= %s AND ts < %s RETURNING *) "
        "INSERT INTO fixes (id, device_id, ts, payload, val) OVERRIDING SYSTEM VALUE "
        "SELECT id, device_id, ts, payload, val FROM moved", (gap, gap + DAY))
    return parent, gap


@pytest.mark.parametrize("how", ["auto", "copy"])
def test_default_detached_by_the_old_script_is_adopted_and_finished(
    run: Run, dsn: str, conn: Conn, major: int, how: str
) -> None:
    parent, _gap = _old_script_interrupted(conn)
    before = Counter(row_set(conn, parent))
    before.update(tuple(r) for r in conn.execute("SELECT id, ts, payload, val FROM public.fixes_default"))
    assert default_of(conn, parent) is None

    out, _ = fix_cli(run, dsn, parent, how)

    assert "fixed with copy" in out
    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    ks = assert_children_sane(conn, parent)
    assert all(k.upper - k.lower == DAY for k in ks)
    fmt = PARTMAN_FORMATS[major]["1 day"]
    assert_named(ks, "fixes_p", fmt, "UTC")
    assert not conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%' "
                            "AND relkind = 'r'").fetchall(), "the adopted table was left behind"
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
    conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF fixes FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier("public", stray), sql.Literal(stray_lo), sql.Literal(stray_lo + DAY)))
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
    assert (by_name[stray].lower, by_name[stray].upper) == (stray_lo, stray_lo + DAY), "the stray was touched"
    after_stray = next(k for k in ks if k.lower == stray_lo + DAY)
    # Its day's name is the stray's: it gets the start time appended, which partman 4.7's
    # suffix parsing ignores (so its ordering of children stays right).
    assert after_stray.name == "fixes_p" + suffix(stray_lo + DAY, fmt, "UTC") + "_2300"
    if strategy == "copy":
        before_stray = next(k for k in ks if k.upper == stray_lo)
        assert (before_stray.lower, before_stray.upper) == (gap, stray_lo), "the gap below is not filled exactly"
        assert after_stray.upper == gap + 2 * DAY, "the clipped day above does not end on the grid"
    else:
        assert after_stray.upper > now(conn), "instant: one wide child from the stray's end past now"
    assert all(k.lower.hour == 0 and k.upper - k.lower == DAY for k in ks if k.lower >= after_stray.upper)
    assert len({k.name for k in ks}) == len(ks)
    with session(dsn) as c:
        c.execute("SELECT partman.run_maintenance(p_parent_table := 'public.fixes', p_jobmon := false)")
    assert_children_sane(conn, parent, contiguous=strategy == "copy")


# --- hostile names ---------------------------------------------------------------------


def test_odd_identifiers_quotes_spaces_capitals_unicode(run: Run, dsn: str, conn: Conn, strategy: str) -> None:
    schema, table, key = 'Ünïcode "sch"', 'Fix "es" Tbl', "ev ts"
    typed = sql.Identifier(schema, table).as_string(conn)  # how a DBA types it: quoted
    ident = make_table(conn, schema, table, key=key)
    gap = utc_midnight(conn, 3)
    native_children(conn, ident, schema,
                    [(gap - i * DAY, gap - (i - 1) * DAY, f"{table}_p{gap - i * DAY:%Y%m%d}") for i in range(4, 0, -1)],
                    default=f"{table}_default")
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
    native_children(conn, ident, schema, [(gap - DAY, gap, f"{table}_p{gap - DAY:%Y%m%d}")],
                    default=f"{table}_default")
    insert_spread(conn, ident, "ts", gap, now(conn), 300, "outage")
    typed = sql.Identifier(schema, table).as_string(conn)
    before = row_set(conn, typed)

    fix_cli(run, dsn, f"{schema}.{table}", "copy")

    assert_exactly_once(before, row_set(conn, typed))


# --- bad input: a one-line error, a distinct exit code, nothing changed -----------------


def native_incident(conn: Conn, table: str = "fixes", *, key: str = "ts", default: bool = True) -> sql.Identifier:
    """A hand-made daily set whose children stop 3 days ago, the DEFAULT holding the rest."""
    ident = make_table(conn, "public", table, key=key)
    gap = utc_midnight(conn, 3)
    native_children(conn, ident, "public",
                    [(gap - i * DAY, gap - (i - 1) * DAY, f"{table}_p{gap - i * DAY:%Y%m%d}") for i in range(4, 0, -1)],
                    default=f"{table}_default" if default else None)
    insert_spread(conn, ident, key, gap, now(conn), 500, "outage")
    return ident


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
    conn.execute("CREATE TABLE mc (device_id int, ts timestamptz) PARTITION BY RANGE (device_id, ts)")
    conn.execute("CREATE TABLE mc_default PARTITION OF mc DEFAULT")
    conn.execute("INSERT INTO mc SELECT g, now() FROM generate_series(1, 10) g")
    return "public.mc"


def _subpartitioned(conn: Conn) -> str:
    ident = native_incident(conn)
    day = utc_midnight(conn, 10)
    conn.execute(sql.SQL("CREATE TABLE fixes_sub PARTITION OF {} FOR VALUES FROM ({}) TO ({}) "
                         "PARTITION BY LIST (device_id)").format(ident, sql.Literal(day), sql.Literal(day + DAY)))
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
    conn.execute("CREATE TABLE notes (id bigint, ts timestamptz, FOREIGN KEY (id, ts) REFERENCES fixes (id, ts))")
    conn.execute("INSERT INTO notes SELECT id, ts FROM fixes LIMIT 5")
    return "public.fixes"


def _two_gaps(conn: Conn) -> str:
    ident = native_incident(conn)
    mid = utc_midnight(conn, 1)
    conn.execute("DELETE FROM fixes WHERE ts >= %s AND ts < %s", (mid, mid + DAY))
    conn.execute(sql.SQL("CREATE TABLE fixes_mid PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
        ident, sql.Literal(mid), sql.Literal(mid + DAY)))
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


def test_non_owner_is_refused_with_exit_77_and_nothing_changed(run: Run, dsn: str, conn: Conn, strategy: str) -> None:
    table = _incident(conn)
    role = f"clerk_{conn.info.dbname}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", make_conninfo(dsn, user=role), table, "--yes", "--strategy", strategy)

    assert rc == 77 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "owner" in err
    assert fingerprint(conn) == before


def test_instant_refuses_rows_in_two_gaps_and_auto_uses_copy(run: Run, dsn: str, conn: Conn) -> None:
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


def test_instant_refuses_a_default_the_old_script_detached(run: Run, dsn: str, conn: Conn, partman: str) -> None:
    _old_script_interrupted(conn)
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant")

    assert rc == 64 and out == "" and len(err.strip().splitlines()) == 1 and "--strategy copy" in err, err
    assert fingerprint(conn) == before


# --- dry run ---------------------------------------------------------------------------


def test_dry_run_prints_a_sql_script_and_changes_nothing(run: Run, dsn: str, conn: Conn, partman: str,
                                                         strategy: str) -> None:
    parent, gap = partman_incident(conn, n=500)
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", dsn, parent, "--strategy", strategy, "--dry-run")  # no --yes needed

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
    assert "DETACH PARTITION" in out and "CREATE TABLE \"public\".\"fixes_default\" PARTITION OF" in out
    if strategy == "instant":
        span = "fixes_p" + suffix(gap, PARTMAN_FORMATS[int(partman[0])]["1 day"], "UTC")
        assert f'RENAME TO "{span}"' in out and "VALIDATE CONSTRAINT" in out and "ATTACH PARTITION" in out
    else:
        assert "ctid >=" in out and "DROP TABLE" in out
    assert "run_maintenance" in out
    assert "BEGIN" not in err, "the plan goes to stdout only"


def test_dry_run_json_lists_the_steps(run: Run, dsn: str, conn: Conn, partman: str, strategy: str) -> None:
    parent, gap = partman_incident(conn, n=500)
    before = fingerprint(conn)

    rc, out, err = run("fix", "-d", dsn, parent, "--strategy", strategy, "--dry-run", "--format", "json")

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
            "fixes_p" + suffix(gap + i * DAY, PARTMAN_FORMATS[int(partman[0])]["1 day"], "UTC") for i in range(4)]
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
        assert not [k.name for k in ks if re.fullmatch(r"fixes_p\d{8}", k.name)], "the old script's names"
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
    assert fix_partitioned_table_main([dsn, "fixes"]) == 64  # the old script's four arguments, no fewer


# --- key types, options ----------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["date", "timestamp"])
def test_date_and_naive_timestamp_keys(run: Run, dsn: str, conn: Conn, major: int, strategy: str,
                                       key_type: str) -> None:
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


def test_interval_option_gives_a_grid_to_a_table_without_children(run: Run, dsn: str, conn: Conn,
                                                                    strategy: str) -> None:
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


def test_copy_keep_source_keeps_the_detached_default_and_copies_every_row(run: Run, dsn: str, conn: Conn,
                                                                          partman: str) -> None:
    parent, _gap = partman_incident(conn, n=1000)
    before = row_set(conn, parent)
    outage = Counter(r for r in before if r[2].startswith("outage"))

    fix_cli(run, dsn, parent, "copy", "--keep-source")

    assert_exactly_once(before, row_set(conn, parent))
    assert_default_empty(conn, parent)
    (held,) = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%' "
                           "AND relkind = 'r' AND NOT relispartition").fetchall()
    kept = Counter(tuple(r) for r in conn.execute(
        sql.SQL("SELECT id, ts, payload, val FROM {}").format(sql.Identifier("public", held[0]))))
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
