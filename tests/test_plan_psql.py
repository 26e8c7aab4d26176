"""``fix --dry-run`` is the whole truth: fed to ``psql -v ON_ERROR_STOP=1`` on a copy of the
database, the printed plan performs the repair by itself, and ends where ``fix`` itself
ends on the original: the same rows (each exactly once), the same children (names and
bounds), a fresh empty DEFAULT, partman's maintenance working. And a table's name cannot
break out of the script's comments: names with a newline, a carriage return or ``*/`` run
as names, never as statements.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_fix_cases import DAY, Run

from partguard.plan import steps as S
from partguard.plan.after_fix import renamed_index
from partguard.testing.build import insert_spread, make_table, native_children, partman_incident
from partguard.testing.catalog import default_of, kids, now, utc_midnight
from partguard.testing.oracles import row_set, run_partman_maintenance

Conn = psycopg.Connection[Any]
STRATEGIES = ("instant", "copy", "auto")


def psql() -> str:
    pg_bin = os.environ.get("PARTGUARD_PG_BIN", "/usr/lib/postgresql/15/bin")
    return str(Path(pg_bin) / "psql")


def copy_database(dsn: str, suffix: str) -> str:
    """``CREATE DATABASE … TEMPLATE`` the test's database (no session may be on it)."""
    source = str(conninfo_to_dict(dsn)["dbname"])
    target = f"{source}_{suffix}"
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as c:
        c.execute(
            sql.SQL(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {}"
            ).format(sql.Literal(source))
        )
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        c.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(target), sql.Identifier(source)
            )
        )
    return make_conninfo(dsn, dbname=target)


@pytest.fixture
def copies(dsn: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as c:
        for d in made:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(str(conninfo_to_dict(d)["dbname"]))
                )
            )


def run_script(dsn: str, script: str, tmp_path: Path) -> str:
    """``psql -v ON_ERROR_STOP=1 -f plan.sql``, as a DBA runs the reviewed plan."""
    path = tmp_path / "plan.sql"
    path.write_text(script)
    done = subprocess.run(
        [psql(), "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"psql failed:\n{done.stderr}"
    return done.stdout


def dry_run(run: Run, dsn: str, table: str, strategy: str) -> str:
    rc, out, err = run("fix", "-d", dsn, table, "--strategy", strategy, "--dry-run")
    assert rc == 0, err
    return out


def end_state(dsn: str, parent: str) -> tuple[Counter[tuple[Any, ...]], list[Any], str | None, int]:
    """(rows of the table and its quarantine, children, the DEFAULT's name, its rows)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        default = default_of(c, parent)
        in_default = 0
        if default is not None:
            schema = parent.split(".")[0]
            in_default = c.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, default))
            ).fetchone()[0]  # type: ignore[index]
        return row_set(c, parent), kids(c, parent), default, in_default


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_printed_plan_run_by_psql_repairs_like_fix(
    run: Run, dsn: str, conn: Conn, partman: str, strategy: str, copies: list[str], tmp_path: Path
) -> None:
    parent, _ = partman_incident(conn, n=500)
    before = row_set(conn, parent)
    conn.close()
    copy = copy_database(dsn, "psql")
    copies.append(copy)

    script = dry_run(run, copy, parent, strategy)
    run_script(copy, script, tmp_path)
    rc, _out, err = run("fix", "-d", dsn, parent, "--strategy", strategy, "--yes")
    assert rc == 0, err

    by_psql, by_fix = end_state(copy, parent), end_state(dsn, parent)
    assert by_psql[0] == before == by_fix[0], "rows exactly once, the same in both"
    assert by_psql[1] == by_fix[1], "the same children, names and bounds"
    assert by_psql[2] == by_fix[2] == "fixes_default" and by_psql[3] == by_fix[3] == 0
    assert run_partman_maintenance(copy, parent) == []
    with psycopg.connect(copy, autocommit=True) as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                "JOIN pg_inherits i ON i.inhrelid = x.indrelid WHERE i.inhparent = %s::regclass",
                (parent,),
            )
        ]
        left = c.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'fixes\\_default\\_%%' "
            "AND relkind = 'r'"
        ).fetchone()[0]  # type: ignore[index]
    default_named = [n for n in names if n.startswith("fixes_default")]
    assert len(default_named) == 2, f"only the fresh DEFAULT's indexes carry its name: {names}"
    assert left == 0, "the holding table is gone"


NASTY = [
    "ev\nDROP TABLE victim; SELECT 'pwned' AS x",
    "ev\rDROP TABLE victim; SELECT 'pwned' AS x",
    "ev */ DROP TABLE victim; /* x",
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", NASTY, ids=["newline", "carriage-return", "comment-end"])
def test_a_name_cannot_break_out_of_the_plans_comments(
    run: Run, dsn: str, conn: Conn, name: str, strategy: str, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE victim (x int); INSERT INTO victim VALUES (1)")
    ident = make_table(conn, "public", name)
    gap = utc_midnight(conn, 3)
    native_children(
        conn,
        ident,
        "public",
        [
            (gap - i * DAY, gap - (i - 1) * DAY, f"{name}_p{gap - i * DAY:%Y%m%d}")
            for i in range(4, 0, -1)
        ],
        default=f"{name}_default",
    )
    insert_spread(conn, ident, "ts", gap - 4 * DAY, gap, 100, "before")
    insert_spread(conn, ident, "ts", gap, now(conn), 300, "outage")
    parent = ident.as_string(conn)
    oid = conn.execute("SELECT %s::regclass::oid", (parent,)).fetchone()[0]  # type: ignore[index]
    rows = "SELECT id, ts, payload, val FROM {}"
    before = Counter(conn.execute(sql.SQL(rows).format(ident)).fetchall())

    script = dry_run(run, dsn, parent, strategy)
    assert "DROP TABLE victim" in script  # the name is in the plan: the test proves something
    comments = [ln for ln in script.split("\n") if ln.startswith("--")]
    assert any('U&"ev' in ln for ln in comments), 'names in comments are written in U&"…" form'
    assert not any("\r" in ln or "*/" in ln for ln in comments)
    out = run_script(dsn, script, tmp_path)

    assert not re.search(r"^\s*pwned\s*$", out, re.MULTILINE), "the injected SELECT ran"
    assert conn.execute("SELECT count(*) FROM victim").fetchone() == (1,), "victim survives"
    after = Counter(conn.execute(sql.SQL(rows).format(ident)).fetchall())
    assert after == before and max(before.values()) == 1, "every row once, none set aside"
    ks = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s ORDER BY 1",
        (oid,),
    ).fetchall()
    default = [n for n, b in ks if b == "DEFAULT"]
    assert default == [f"{name}_default"], ks
    assert conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", default[0]))
    ).fetchone() == (0,), "the fresh DEFAULT is empty"
    assert len(ks) > 6 and all(n.startswith(name) for n, _ in ks), (
        "children for the outage and the future"
    )
    ts_max = conn.execute(sql.SQL("SELECT max(ts) FROM {}").format(ident)).fetchone()[0]  # type: ignore[index]
    assert ts_max is not None


def test_predicted_index_names_are_the_ones_the_swap_gives(conn: Conn) -> None:
    """fix --dry-run (auto) names the re-cut's indexes after the wide child's, as
    ``partguard.rename_indexes`` will have renamed them: the same, also when cut to 63 bytes."""
    old, new = "fixes_default", "fixes_p2026_12_01_with_a_rather_long_tail"
    tails = ["_received_at_idx", "_device_id_received_at_and_more_columns_idx"]
    conn.execute('CREATE SCHEMA IF NOT EXISTS "partguard"')
    conn.execute(S.create_helpers())
    conn.execute(
        sql.SQL("CREATE TABLE {} (received_at timestamptz, device_id int)").format(
            sql.Identifier(old)
        )
    )
    for tail in tails:
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} (received_at)").format(
                sql.Identifier(old + tail), sql.Identifier(old)
            )
        )
    conn.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )
    conn.execute(S.rename_indexes("public", new, old))
    got = sorted(
        r[0]
        for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
            (new,),
        )
    )
    want = sorted(renamed_index(old + t, old, new) for t in tails)
    assert any(len(w.encode()) == 63 for w in want), "one name must be cut"
    assert [g.strip('"') for g in got] == want
