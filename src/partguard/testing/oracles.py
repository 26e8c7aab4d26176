"""What must hold after partguard worked on a table, checked on the server.

- no loss, no duplicate: :func:`row_set` (the table plus its quarantine, with multiplicity)
  before and after, :func:`assert_exactly_once`;
- children: :func:`assert_children_sane` (no overlap, no hole), :func:`assert_named` (the
  table's convention), :func:`assert_default_empty`, :func:`assert_no_default_index_names`;
- pg_partman still works: :func:`assert_partman_healthy`;
- nothing changed: :func:`fingerprint` (the whole catalog and every table's rows),
  :func:`outside_partguard`, :func:`public_catalog`;
- ``partguard check`` agrees: :func:`assert_check_ok`; a fix that must succeed: :func:`fix_cli`.

They raise ``AssertionError`` (tests/conftest.py has pytest rewrite them for detail).
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import sql

from .catalog import Conn, Kid, default_of, ident_of, kids, names_of, one, session

Run = Callable[..., tuple[int, str, str]]  # partguard argv -> (exit code, stdout, stderr)

# partman 4.7's datetime_string per interval, and 5.x's (the 'p' prefix is partman's).
PARTMAN_FORMATS = {
    4: {"1 hour": "YYYY_MM_DD_HH24MI", "1 day": "YYYY_MM_DD", "1 month": "YYYY_MM"},
    5: {"1 hour": "YYYYMMDD_HH24MISS", "1 day": "YYYYMMDD", "1 month": "YYYYMMDD"},
}
_STRFTIME = {"YYYY": "%Y", "MM": "%m", "DD": "%d", "HH24": "%H", "MI": "%M", "SS": "%S"}


# --- rows exactly once ----------------------------------------------------------------


def row_set(conn: Conn, parent: str, key: str = "ts") -> Counter[tuple[Any, ...]]:
    """Every row of the table plus every row in its quarantine table, with multiplicity."""
    rows = conn.execute(
        sql.SQL("SELECT id, {k}, payload, val FROM {t}").format(
            k=sql.Identifier(key), t=ident_of(conn, parent)
        )
    ).fetchall()
    out: Counter[tuple[Any, ...]] = Counter(tuple(r) for r in rows)
    out.update(tuple(r) for r in quarantined(conn, parent, key))
    return out


def quarantine_name(conn: Conn, parent: str) -> str:
    row = one(conn, "SELECT c.relname FROM pg_class c WHERE c.oid = %s::regclass", (parent,))
    return f"{row[0]}_quarantine"


def quarantined(conn: Conn, parent: str, key: str = "ts") -> list[tuple[Any, ...]]:
    q = sql.Identifier("partguard", quarantine_name(conn, parent))
    exists = conn.execute("SELECT to_regclass(%s)", (q.as_string(conn),)).fetchone()
    if not exists or exists[0] is None:
        return []
    return [
        tuple(r)
        for r in conn.execute(
            sql.SQL("SELECT id, {}, payload, val FROM {}").format(sql.Identifier(key), q)
        ).fetchall()
    ]


def exactly_once_fault(before: Counter[Any], after: Counter[Any]) -> str | None:
    """Why ``after`` is not ``before`` with every row exactly once, or None when it is."""
    if not before or max(before.values()) != 1:
        return "test data must have unique rows"
    dups = [r for r, n in after.items() if n > 1]
    if dups:
        return f"{len(dups)} rows duplicated, e.g. {dups[:3]}"
    lost, extra = set(before) - set(after), set(after) - set(before)
    if lost or extra:
        return f"lost {len(lost)} (e.g. {sorted(lost, key=str)[:3]}), extra {len(extra)}"
    return None


def assert_exactly_once(before: Counter[Any], after: Counter[Any]) -> None:
    fault = exactly_once_fault(before, after)
    assert fault is None, fault


# --- children ------------------------------------------------------------------------


def assert_children_sane(
    conn: Conn, parent: str, *, contiguous: bool = True, since: Any = None
) -> list[Kid]:
    """No two children overlap; with ``contiguous``, none leaves a hole either (from ``since`` on)."""
    ks = kids(conn, parent)
    for a, b in itertools.pairwise(ks):
        if since is not None and a.lower < since:
            continue
        assert a.upper <= b.lower, (
            f"{a.name} [{a.lower}, {a.upper}) overlaps {b.name} [{b.lower}, {b.upper})"
        )
        if contiguous:
            assert a.upper == b.lower, (
                f"hole between {a.name} (to {a.upper}) and {b.name} (from {b.lower})"
            )
    return ks


def assert_default_empty(conn: Conn, parent: str, expect: int = 0) -> None:
    """A fresh DEFAULT exists and holds ``expect`` rows (0 unless outliers were kept)."""
    d = default_of(conn, parent)
    assert d is not None, "the fix must leave a fresh DEFAULT behind"
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(names_of(conn, parent)[0], d))
    ).fetchone()
    assert row is not None and row[0] == expect, (
        f"{d} holds {row and row[0]} rows, expected {expect}"
    )


def assert_no_default_index_names(conn: Conn, parent: str) -> None:
    """Only the fresh DEFAULT's own indexes may be called ``…_default_…``; every index of
    every child is attached to the parent's partitioned index (a normal child's shape)."""
    d = default_of(conn, parent)
    rows = conn.execute(
        """SELECT c.relname, ic.relname, h.inhparent IS NOT NULL
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class ic ON ic.oid = x.indexrelid
           LEFT JOIN pg_inherits h ON h.inhrelid = ic.oid
           WHERE i.inhparent = %s::regclass""",
        (parent,),
    ).fetchall()
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
    pattern = re.sub(
        "|".join(sorted(_STRFTIME, key=len, reverse=True)), lambda m: _STRFTIME[m.group()], fmt
    )
    return str(start.strftime(pattern))


def assert_named(ks: list[Kid], stem: str, fmt: str | None, zone: str | None) -> None:
    """Every child's name is stem + suffix(lower bound): what the table's convention gives."""
    for k in ks:
        assert k.name == stem + suffix(k.lower, fmt, zone), (
            f"{k.name} is not named for its lower bound {k.lower}"
        )


# --- pg_partman still works -------------------------------------------------------------


def run_partman_maintenance(dsn: str, parent: str, *, times: int = 3) -> list[str]:
    """pg_partman's own maintenance the way users run it: ``CALL run_maintenance_proc()`` (a
    timer, the background worker) and ``run_maintenance(parent)``, several times. Fails on any
    error; returns partman's WARNINGs (5.5 reports a skipped set only as a WARNING)."""
    warnings: list[str] = []
    with session(dsn) as c:
        c.add_notice_handler(
            lambda d: (
                warnings.append(d.message_primary or "")
                if (d.severity_nonlocalized or "") == "WARNING"
                else None
            )
        )
        for _ in range(times):
            c.execute("CALL partman.run_maintenance_proc()")
            c.execute(
                "SELECT partman.run_maintenance(p_parent_table := %s, p_jobmon := false)", (parent,)
            )
    # 5.5 warns on every run when the installed version is not the control file's default:
    # our side-by-side test install, not a fault of the table.
    return [w for w in warnings if "is the default available" not in w]


def has_wide_child(ks: list[Kid]) -> bool:
    """A child spanning about two intervals or more (months differ by a few days; DST days by an hour)."""
    spans = [k.upper - k.lower for k in ks]
    return len(spans) > 1 and max(spans) >= min(spans) * 1.8


def assert_partman_healthy(
    dsn: str, parent: str, fmt: str, zone: str, *, more: int = 3
) -> list[Kid]:
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
        shown = c.execute(
            "SELECT partition_tablename FROM partman.show_partitions(%s)", (parent,)
        ).fetchall()
        assert sorted(r[0] for r in shown) == sorted(k.name for k in before)
        version = str(one(c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'")[0])
    assert run_partman_maintenance(dsn, parent) == []
    with session(dsn) as c:
        assert_children_sane(c, parent, contiguous=False)
        assert_children_sane(c, parent, since=before[-1].lower)
        c.execute(
            "UPDATE partman.part_config SET premake = premake + %s WHERE parent_table = %s",
            (more, parent),
        )
    assert run_partman_maintenance(dsn, parent) == []
    with session(dsn) as c:
        assert_children_sane(c, parent, contiguous=False)
        after = assert_children_sane(c, parent, since=before[-1].lower)
        premake, reach = runway_wanted(c, parent, isinstance(before[0].lower, int))
    new = [k for k in after if k.name not in {b.name for b in before}]
    assert all(k.lower >= before[-1].upper for k in new)
    assert_named(new, stem, fmt, zone)
    if (
        has_wide_child(before)
        and int(version.split(".")[0]) >= 5
        and not isinstance(before[0].lower, int)
    ):
        # partman 5.x's own arithmetic (see above): the configured runway holds, a raised one
        # waits for live rows to pass the wide child.
        with session(dsn) as c:
            _, reach = runway_wanted(c, parent, False, premake - more, from_now=True)
    reach = like(reach, after[-1].upper)
    assert after[-1].upper >= reach, (
        f"children end at {after[-1].upper}, premake {premake} wants {reach}"
    )
    return after


def like(x: Any, sample: Any) -> Any:
    """A timestamptz as a bound of ``sample``'s type (date, naive timestamp in UTC, aware)."""
    if isinstance(x, datetime) and not isinstance(sample, datetime):
        return x.astimezone(UTC).date()
    if isinstance(x, datetime) and sample.tzinfo is None:
        return x.astimezone(UTC).replace(tzinfo=None)
    return x


def runway_wanted(
    c: Conn, parent: str, ids: bool, premake: int | None = None, *, from_now: bool = False
) -> tuple[int, Any]:
    """(premake, where the children must reach): ``premake`` intervals past the newest row,
    as partman counts them (its interval added in the session's zone).

    partman counts premade children from the slot of its newest row (4.7: the largest key of
    the newest non-empty child; 5.x: one of its rows), not from now: just after midnight,
    before the first row of the day, its runway ends a day "early". So the base is the newest
    key, capped at now (a row from a bad clock far ahead must not excuse a short runway).
    ``from_now`` asks for partguard's own promise instead: ``premake`` intervals past now."""
    cfg = one(
        c,
        "SELECT premake, partition_interval, control FROM partman.part_config WHERE parent_table = %s",
        (parent,),
    )
    n = cfg[0] if premake is None else premake
    top = one(
        c, sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(cfg[2]), ident_of(c, parent))
    )
    if ids:
        return int(cfg[0]), int(top[0]) + n * int(cfg[1])
    base = "now()" if from_now or top[0] is None else "least(now(), %s::timestamptz)"
    args = (n, cfg[1]) if base == "now()" else (top[0], n, cfg[1])
    return int(cfg[0]), one(c, f"SELECT {base} + %s * %s::interval", args)[0]


# --- partguard itself -------------------------------------------------------------------


def fix_cli(
    run: Run, dsn: str, table: str, strategy: str, *extra: str, still: str | None = None
) -> tuple[str, str]:
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


def assert_check_ok(run: Run, dsn: str, parent: str, quarantined: int = 0) -> None:
    """``partguard check`` agrees: status OK, no default_rows. A wide child left by instant is
    INFO on a native table and a WARNING on a partman table (whose arithmetic it confuses):
    then it must say what partman will do wrong. Rows kept in quarantine are a WARNING with
    their count. Nothing else may be wrong."""
    rc, report, _ = run("check", "-d", dsn, "-t", parent, "--format", "json")
    doc = json.loads(report)
    faults = [
        (f["code"], f["severity"], f["message"]) for f in doc["findings"] if f["severity"] != "info"
    ]
    wide = [f for f in faults if f[0] == "wide_child"]
    assert all(
        sev == "warning" and "premake" in msg and "partguard split" in msg for _, sev, msg in wide
    ), wide
    kept = [f["detail"]["rows"] for f in doc["findings"] if f["code"] == "quarantine_rows"]
    assert kept == ([quarantined] if quarantined else []), doc["findings"]
    others = [f for f in faults if f[0] not in ("wide_child", "quarantine_rows")]
    assert rc == (1 if wide or quarantined else 0) and not others, faults
    assert "default_rows" not in {f["code"] for f in doc["findings"]}


# --- nothing changed ----------------------------------------------------------------------


def fingerprint(conn: Conn) -> list[Any]:
    """Everything a refused fix must leave alone: relations, bounds, constraints, indexes,
    triggers, schemas, partman's config, and the rows of every table."""
    user_ns = sql.SQL(
        "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
    )
    rels = conn.execute(
        sql.SQL("""
        SELECT n.nspname, c.relname, c.relkind::text, coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
               c.relispartition
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {} ORDER BY 1, 2""").format(
            user_ns
        )
    ).fetchall()
    cons = conn.execute(
        sql.SQL("""
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(x.oid), convalidated
        FROM pg_constraint x JOIN pg_namespace n ON n.oid = x.connamespace WHERE {} ORDER BY 1, 2""").format(
            user_ns
        )
    ).fetchall()
    trig = conn.execute("""SELECT tgrelid::regclass::text, tgname, tgenabled::text FROM pg_trigger
                           WHERE NOT tgisinternal ORDER BY 1, 2""").fetchall()
    schemas = conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()
    counts = []
    for schema, name, kind, _, _ in rels:
        if kind == "r":
            n = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {} t"
                ).format(sql.Identifier(schema, name))
            ).fetchone()
            counts.append((schema, name, n))
    return [rels, cons, trig, schemas, counts]


def outside_partguard(conn: Conn) -> list[Any]:
    """What a fix that failed must leave as it found it: every relation outside partguard's
    own schema (bounds, constraints, triggers, indexes) and the rows of every table."""
    shape = conn.execute("""
        SELECT n.nspname, c.relname, c.relkind::text, c.relispartition,
               coalesce(pg_get_expr(c.relpartbound, c.oid), ''),
               ARRAY(SELECT conname || ' ' || pg_get_constraintdef(x.oid) || ' ' || convalidated::text
                     FROM pg_constraint x WHERE x.conrelid = c.oid ORDER BY 1),
               ARRAY(SELECT tgname FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal ORDER BY 1)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('partguard', 'pg_catalog', 'information_schema', 'pg_toast')
        ORDER BY 1, 2""").fetchall()
    contents = []
    for schema, name, kind, *_ in shape:
        if kind == "r":
            got = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "
                    "FROM {} r"
                ).format(sql.Identifier(schema, name))
            ).fetchone()
            contents.append((schema, name, got))
    schemas = [
        r[0]
        for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname <> 'partguard' ORDER BY 1"
        )
    ]
    return [shape, contents, schemas]


def public_catalog(conn: Conn) -> list[tuple[str, str]]:
    """Relations, bounds, constraints and triggers of schema public: "nothing changed"."""
    return conn.execute("""
        SELECT c.relname, coalesce(pg_get_expr(c.relpartbound, c.oid), '') ||
               coalesce((SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint
                         WHERE conrelid = c.oid), '') ||
               coalesce((SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger
                         WHERE tgrelid = c.oid), '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' ORDER BY 1""").fetchall()
