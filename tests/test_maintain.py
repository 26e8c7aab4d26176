"""``partguard maintain`` against real clusters: it maintains what it can, and every way
maintenance can fail silently (connection exhaustion, partman's stuck advisory lock, a
locked table, a DEFAULT holding rows) ends in a named failure and a non-zero exit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from partguard.cli import main
from partguard.sandbox import Sandbox

Conn = psycopg.Connection[Any]


# --- helpers -------------------------------------------------------------------


def partman_table(conn: Conn, version: str, name: str, premake: int = 4) -> None:
    """A daily pg_partman table ``public.<name>`` with a DEFAULT and a row written now."""
    ident = sql.Identifier("public", name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
                 .format(ident))
    conn.execute(sql.SQL("CREATE INDEX ON {} (ts)").format(ident))
    if version.startswith("4."):
        conn.execute("SELECT partman.create_parent(%s, 'ts', 'native', 'daily', p_premake := %s)",
                     (f"public.{name}", premake))
    else:
        conn.execute("SELECT partman.create_parent(%s, 'ts', '1 day', p_premake := %s)",
                     (f"public.{name}", premake))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, now())").format(ident))


def children(conn: Conn, name: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' ORDER BY 1",
        (f"public.{name}",),
    ).fetchall()
    return [r[0] for r in rows]


def drop_newest(conn: Conn, name: str, n: int) -> list[str]:
    """Pretend maintenance stopped: the newest ``n`` children are gone."""
    kids = children(conn, name)[-n:]
    for kid in kids:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("public", kid)))
    return kids


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["maintain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    rc, out, err = run(capsys, *argv, "--format", "json")
    return rc, json.loads(out)


def by_table(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["table"]: t for t in report["tables"]}


# --- the ordinary run and the state table ---------------------------------------------


def test_maintain_recreates_missing_children_and_records_the_run(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partman_table(conn, partman, "fixes")
    partman_table(conn, partman, "orders")
    dropped = drop_newest(conn, "fixes", 2)

    rc, out, err = run(capsys, "-d", dsn)

    assert rc == 0, out + err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert set(lines) == {"public.fixes", "public.orders"}
    assert lines["public.fixes"].startswith("ok, created 2 children, runway ")
    assert lines["public.orders"].startswith("ok, runway ")
    assert "days" in lines["public.fixes"]
    assert set(dropped) <= set(children(conn, "fixes"))
    run_row = conn.execute("SELECT status, finished_at IS NOT NULL FROM partguard.maintenance_run").fetchall()
    assert run_row == [("ok", True)]
    rows = conn.execute("SELECT table_name, status FROM partguard.maintenance_table ORDER BY 1").fetchall()
    assert rows == [("public.fixes", "ok"), ("public.orders", "ok")]


def test_second_successful_run_moves_the_last_success_forward(
    dsn: str, conn: Conn, partman: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from partguard.journal import last_maintenance

    partman_table(conn, partman, "events")
    assert run(capsys, "-d", dsn)[0] == 0
    first = last_maintenance(conn)["public.events"]
    time.sleep(0.05)
    rc, report = run_json(capsys, "-d", dsn, "--table", "public.events")
    assert rc == 0 and report["status_text"] == "ok"
    second = last_maintenance(conn)["public.events"]
    assert second > first
    runs = conn.execute("SELECT run_id, status FROM partguard.maintenance_run ORDER BY run_id").fetchall()
    assert [r[1] for r in runs] == ["ok", "ok"]
    assert report["run_id"] == runs[-1][0]
