"""The error contract: every error a user can meet is one line on stderr with the exit code
the README documents; nothing hangs; one locked table blinds nothing else.

Each case goes through the real CLI in-process (``run``) against a real server or a
real OS condition (a missing directory, a port in use, a server that never answers).
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Run
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import partguard.cli.check
from partguard.db import error_line
from partguard.testing.build import create_parent, native_daily
from partguard.testing.catalog import utc_today

Conn = psycopg.Connection[Any]


def one_line(err: str) -> str:
    """The single stderr line (asserting there is exactly one)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("partguard: "), err
    return lines[0]


def role_for(dsn: str, what: str) -> str:
    """A role name unique to this test's database (roles are cluster-wide)."""
    return f"{what}_{conninfo_to_dict(dsn)['dbname']}"


# --- a server that accepts TCP and never answers -------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A socket that listens and accepts but never says a word: libpq waits for the answer
    to its first packet forever unless told otherwise."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield "127.0.0.1", sock.getsockname()[1]
    stop.set()
    thread.join(5)
    for c in accepted:
        c.close()
    sock.close()


def timed(run: Run, *argv: str) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    rc, out, err = run(*argv)
    return rc, out, err, time.monotonic() - t0


def test_check_and_fix_give_up_on_a_silent_server_after_the_connect_timeout(
    run: Run, silent_server: tuple[str, int]
) -> None:
    host, port = silent_server
    target = f"host={host} port={port} dbname=app user=app"
    rc, out, err, took = timed(run, "check", "-d", target)  # the default: 5 s
    line = one_line(err)
    assert (rc, out) == (3, "")
    assert f"cannot connect to {host} port {port}: no answer within 5s" in line
    assert 4.5 <= took < 15
    rc, out, err, took = timed(
        run, "fix", "-d", target, "public.fixes", "--yes", "--connect-timeout", "2"
    )
    assert (rc, out) == (3, "")
    assert "no answer within 2s" in one_line(err)
    assert took < 10


def test_the_dsn_connect_timeout_and_pgconnect_timeout_are_honoured(
    run: Run, silent_server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = silent_server
    rc, _, err = run("check", "-d", f"postgresql://app@{host}:{port}/app?connect_timeout=2")
    assert rc == 3 and "no answer within 2s" in one_line(err)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    rc, _, err = run("check", "-d", f"host={host} port={port} dbname=app")
    assert rc == 3 and "no answer within 3s" in one_line(err)
    # The explicit option beats both, as -h/-p/-U beat the DSN's parts.
    rc, _, err = run(
        "check", "-d", f"host={host} port={port} connect_timeout=9", "--connect-timeout", "2"
    )
    assert rc == 3 and "no answer within 2s" in one_line(err)


def test_maintain_retry_for_bounds_a_connect_attempt_that_hangs(
    run: Run, silent_server: tuple[str, int]
) -> None:
    host, port = silent_server
    rc, out, err, took = timed(
        run, "maintain", "-h", host, "-p", str(port), "-d", "app", "--retry-for", "3s"
    )
    assert (rc, out) == (2, "")  # maintenance did not happen: CRITICAL
    line = err.splitlines()[-1]
    assert "maintenance not run" in line and "no answer within 3s" in line
    assert 2.5 <= took < 10


def test_metrics_against_a_silent_server_report_down_in_bounded_time(
    run: Run, silent_server: tuple[str, int]
) -> None:
    host, port = silent_server
    rc, out, _, took = timed(run, "metrics", "-h", host, "-p", str(port), "--connect-timeout", "2")
    assert rc == 3 and "partguard_up 0.0" in out
    assert took < 10


# --- files, ports, directories ------------------------------------------------------------


def test_textfile_in_a_missing_directory(run: Run, dsn: str, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "partguard.prom"
    rc, out, err = run("metrics", "-d", dsn, "--textfile", str(target))
    assert (rc, out) == (74, "")
    assert f"cannot write {target}" in one_line(err) and "No such file or directory" in err


def test_listen_on_a_port_in_use(run: Run, dsn: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc, out, err = run("metrics", "-d", dsn, "--listen", f"127.0.0.1:{port}")
    assert (rc, out) == (74, "")
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(err) and "in use" in err


def test_systemd_install_into_an_unwritable_directory(run: Run, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/sys")  # root may write anywhere but sysfs
    else:
        target = tmp_path / "ro"
        target.mkdir(mode=0o555)
    rc, out, err = run(
        "systemd", "-d", "app", "--executable", "/usr/bin/partguard", "--install", str(target)
    )
    assert (rc, out) == (77, "")
    assert f"cannot write {target}/partguard-maintain-app.service: Permission denied" in one_line(
        err
    )
    assert not list(target.glob("*partguard*"))


# --- privileges ----------------------------------------------------------------------------


def test_maintain_without_usage_on_partmans_schema_is_77(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    conn.execute("CREATE TABLE public.ev (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    create_parent(conn, "public.ev", "ts", "1 day")
    role = role_for(dsn, "maint")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        rc, out, err = run("maintain", "-d", dsn, "-U", role)
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert (rc, out) == (77, "")
    assert "maintenance not run: permission denied for schema partman" in one_line(err)


def test_a_server_refusal_reaching_the_cli_keeps_its_meaning(
    run: Run, dsn: str, conn: Conn
) -> None:
    """An InsufficientPrivilege nobody wrapped is still 77, in one line."""
    from partguard import journal

    journal.ensure_schema(conn)
    role = role_for(dsn, "nosy")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        rc, out, err = run("fix", "-d", dsn, "-U", role, "--status")
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert (rc, out) == (77, "")
    assert "server error (42501): permission denied for schema partguard" in one_line(err)


# --- partman's packed errors ----------------------------------------------------------------


def test_partmans_packed_error_becomes_one_line(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """pg_partman re-raises with CONTEXT/DETAIL/HINT packed into the message; maintain, fix
    and execute print it through error_line: one line that keeps the failing statement."""
    conn.execute("CREATE TABLE public.tmpl (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    create_parent(conn, "public.tmpl", "ts", "1 day", premake=4)
    (template,) = conn.execute("SELECT template_table FROM partman.part_config").fetchone()  # type: ignore[misc]
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(*template.split("."))))
    conn.execute(
        "INSERT INTO public.tmpl VALUES (now() + interval '20 days')"
    )  # partman wants children
    try:
        with conn.transaction():
            conn.execute("SELECT partman.run_maintenance('public.tmpl')")
    except psycopg.Error as exc:
        raw = str(exc)
        line = error_line(exc)
        assert "\n" in raw or exc.diag.context  # what used to be printed
        assert "\n" not in line and template in line
    rc, out, err = run("maintain", "-d", dsn)
    assert rc == 2 and err == ""
    assert len(out.splitlines()) == 1 and out.startswith("public.tmpl: critical")


# --- one locked table ------------------------------------------------------------------------


def two_tables(conn: Conn) -> None:
    today = utc_today(conn)
    for name in ("locked", "fine"):
        native_daily(conn, "app", name, "ts", [today + timedelta(days=d) for d in range(-2, 6)])


def test_a_locked_table_is_unknown_and_the_rest_is_checked(run: Run, dsn: str, conn: Conn) -> None:
    conn.execute("CREATE SCHEMA app")
    two_tables(conn)
    with psycopg.connect(dsn, application_name="migration") as ddl:
        ddl.execute("LOCK TABLE app.locked IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        rc, out, err = run("check", "-d", dsn)
        took = time.monotonic() - t0
        mrc, metrics, _ = run("metrics", "-d", dsn)
        pid = ddl.info.backend_pid
    assert (rc, err) == (3, "")
    assert took < 10
    lines = out.splitlines()
    assert any(line.split()[:2] == ["app.fine", "ts"] and line.endswith("ok") for line in lines), (
        out
    )
    finding = next(line for line in lines if line.startswith("UNKNOWN locked app.locked:"))
    assert f"pid {pid}" in finding and "migration" in finding and "LOCK TABLE app.locked" in finding
    assert mrc == 0 and "partguard_up 1.0" in metrics
    assert 'partguard_check_status{schema="app",table="locked"} 3.0' in metrics
    assert 'partguard_check_status{schema="app",table="fine"} 0.0' in metrics
    assert 'partguard_default_rows{schema="app",table="locked"}' not in metrics  # unknown, not 0


# --- the catch-all, --traceback, a declined fix -------------------------------------------------


def broken_check(*_: object, **__: object) -> None:
    raise AssertionError("a snapshot with two DEFAULT partitions")


def test_an_unexpected_exception_is_one_line_and_70(
    run: Run, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One of src's asserts firing: the contract, not the bug, is under test here.
    monkeypatch.setattr(partguard.cli.check, "check", broken_check)
    rc, out, err = run("check", "-d", dsn)
    assert (rc, out) == (70, "")
    line = one_line(err)
    assert "internal error: AssertionError: a snapshot with two DEFAULT partitions" in line
    assert "--traceback" in line


@pytest.mark.parametrize("how", ["--traceback", "PARTGUARD_DEBUG=1"])
def test_traceback_on_request(
    run: Run, dsn: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(partguard.cli.check, "check", broken_check)
    argv = ["check", "-d", dsn]
    if how == "--traceback":
        argv.insert(0, how)
    else:
        monkeypatch.setenv("PARTGUARD_DEBUG", "1")
    rc, _, err = run(*argv)
    assert rc == 70
    assert err.startswith("Traceback (most recent call last):") and "in broken_check" in err
    assert err.splitlines()[-1].startswith("partguard: internal error: AssertionError")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_declining_the_fix_prompt_exits_1_and_changes_nothing(
    run: Run, dsn: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.execute("CREATE SCHEMA app")
    today = utc_today(conn)
    native_daily(conn, "app", "ev", "ts", [today - timedelta(days=d) for d in range(6, 2, -1)])
    conn.execute(
        "INSERT INTO app.ev (ts) SELECT now() - g * interval '1 hour' FROM generate_series(1, 40) g"
    )
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    rc, out, err = run("fix", "-d", dsn, "app.ev")
    assert rc == 1
    assert "Proceed?" in err and out.startswith("app.ev: declined")
    assert conn.execute("SELECT count(*) FROM ONLY app.ev_default").fetchone() == (40,)
    assert conn.execute("SELECT to_regnamespace('partguard')").fetchone() == (None,)
