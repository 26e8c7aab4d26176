"""The test harness itself: a real cluster, in UTC, with pg_partman installable."""

from __future__ import annotations

import re
from collections.abc import Callable

import psycopg
import pytest

from partguard.errors import PartguardError
from partguard.sandbox import Sandbox, find_pg_bin


def test_cluster_answers(conn: psycopg.Connection) -> None:
    assert conn.execute("select 1").fetchone() == (1,)


def test_timezone_is_utc(conn: psycopg.Connection) -> None:
    assert conn.execute("show TimeZone").fetchone() == ("UTC",)


def test_partman_is_installed(conn: psycopg.Connection, partman: str) -> None:
    row = conn.execute(
        "select extversion, extnamespace::regnamespace::text"
        " from pg_extension where extname = 'pg_partman'"
    ).fetchone()
    assert row is not None
    assert re.fullmatch(r"\d+\.\d+\.\d+", row[0])
    assert row == (partman, "partman")


def test_each_test_gets_a_fresh_database(dsn: str, cluster: Sandbox) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    assert re.fullmatch(r"t_\d{4}", str(dbname))
    with psycopg.connect(dsn) as c:
        assert c.execute("select count(*) from pg_class where relname = 'marker'").fetchone() == (
            0,
        )
        c.execute("create table marker ()")  # would leak into the next test if the db were shared


def test_create_database_quotes_the_name(cluster: Sandbox) -> None:
    name = 'odd "name" x'
    dsn = cluster.create_database(name, partman=False)
    try:
        with psycopg.connect(dsn) as c:
            assert c.execute("select current_database()").fetchone() == (name,)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute(f'drop database "{name.replace(chr(34), chr(34) * 2)}" with (force)')


def test_make_cluster_honours_settings(make_cluster: Callable[..., Sandbox]) -> None:
    sandbox = make_cluster({"max_connections": 10})
    with psycopg.connect(sandbox.dsn()) as c:
        assert c.execute("show max_connections").fetchone() == ("10",)
        assert c.execute("show TimeZone").fetchone() == ("UTC",)  # defaults still apply
    sandbox.restart()
    with psycopg.connect(sandbox.dsn()) as c:
        assert c.execute("show max_connections").fetchone() == ("10",)
    datadir = sandbox.datadir
    sandbox.stop()
    assert not datadir.exists()


def test_find_pg_bin_env_wins(monkeypatch: pytest.MonkeyPatch, cluster: Sandbox) -> None:
    monkeypatch.setenv("PARTGUARD_PG_BIN", str(cluster.pg_bin))
    assert find_pg_bin(major=1) == cluster.pg_bin
    monkeypatch.setenv("PARTGUARD_PG_BIN", "/nonexistent")
    with pytest.raises(PartguardError, match="postgresql-<N>-partman"):
        find_pg_bin()


def test_find_pg_bin_missing_major(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARTGUARD_PG_BIN", raising=False)
    with pytest.raises(PartguardError, match="install postgresql-3 and postgresql-3-partman"):
        find_pg_bin(major=3)


def test_failed_start_shows_the_server_log(cluster: Sandbox) -> None:
    sandbox = Sandbox(pg_bin=cluster.pg_bin, settings={"shared_buffers": "nonsense"})
    with pytest.raises(PartguardError, match='invalid value for parameter "shared_buffers"'):
        sandbox.start()
