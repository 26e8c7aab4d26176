"""Through PgBouncer: in transaction mode a session advisory lock or a SET stays on a server
connection the next client gets, so fix and maintain refuse it (exit 78) and check warns;
in session mode nothing is refused and a real repair goes through.

PgBouncer is Debian's ``pgbouncer`` (scripts/install-deps.sh installs it as an optional
step): skipped without it, except in CI, where its absence fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from partguard.sandbox import OS_USER, Sandbox
from partguard.testing.build import native_outage, partman_due
from partguard.testing.catalog import children, count

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]
Bouncer = Callable[[str], int]  # pool_mode -> the port PgBouncer listens on


def _pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bouncer(cluster: Sandbox) -> Iterator[Bouncer]:
    """Start PgBouncer in front of the session's cluster (trust auth, TCP on a free port)."""
    binary = _pgbouncer()
    if binary is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(
                "pgbouncer is not installed; CI must test through it: run scripts/install-deps.sh",
                pytrace=False,
            )
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer)")
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(pool_mode: str) -> int:
        home = Path(tempfile.mkdtemp(prefix="partguard-pgbouncer-", dir="/tmp"))
        port = _free_port()
        (home / "users.txt").write_text(f'"{cluster.user}" ""\n')
        (home / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={cluster.host} port={cluster.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {home}/users.txt\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = 10\nmax_client_conn = 100\n"
            f"logfile = {home}/pgbouncer.log\npidfile = {home}/pgbouncer.pid\n"
        )
        extra: dict[str, Any] = {}
        if os.geteuid() == 0:  # PgBouncer, like PostgreSQL, refuses to run as root
            home.chmod(0o755)
            for f in [home, *home.iterdir()]:
                shutil.chown(f, OS_USER)
            extra = {"user": OS_USER}
        proc = subprocess.Popen(
            [binary, str(home / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **extra,
        )
        started.append((proc, home))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = home / "pgbouncer.log"
                    raise AssertionError(
                        f"pgbouncer did not start: {log.read_text() if log.exists() else ''}"
                    ) from None
                time.sleep(0.05)

    yield start
    for proc, home in started:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def through(port: int, dsn: str) -> list[str]:
    """Connection options that reach the test's database through PgBouncer on ``port``."""
    d = conninfo_to_dict(dsn)
    return ["-h", "127.0.0.1", "-p", str(port), "-U", str(d["user"]), "-d", str(d["dbname"])]


def advisory_locks(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    assert row is not None
    return int(row[0])


REFUSED = "needs a direct connection (or a session-mode pooler): another client got this session's server connection"


def test_fix_through_a_transaction_pooler_is_refused_and_changes_nothing(
    run: Run, dsn: str, conn: Conn, bouncer: Bouncer
) -> None:
    native_outage(conn, 48)
    rows = count(conn, "public.events_default")
    port = bouncer("transaction")
    for extra in (["--yes"], ["--dry-run"]):
        rc, out, err = run("fix", *through(port, dsn), "public.events", *extra)
        assert (rc, out) == (78, ""), err
        assert err.startswith(f"partguard: fix {REFUSED}") and err.count("\n") == 1, err
    assert count(conn, "public.events_default") == rows
    assert conn.execute("SELECT to_regnamespace('partguard')").fetchone() == (None,)
    assert advisory_locks(conn) == 0  # no lock left behind on a pooled server connection


def test_maintain_through_a_transaction_pooler_is_refused(
    run: Run, dsn: str, conn: Conn, bouncer: Bouncer, partman: str
) -> None:
    assert partman_due(conn)
    before = children(conn, "public.fixes")
    port = bouncer("transaction")
    rc, out, err = run("maintain", *through(port, dsn))
    assert (rc, out) == (78, ""), err
    assert err.startswith(f"partguard: maintain {REFUSED}") and err.count("\n") == 1, err
    assert children(conn, "public.fixes") == before
    assert advisory_locks(conn) == 0


def test_check_through_a_transaction_pooler_warns_and_still_checks(
    run: Run, dsn: str, conn: Conn, bouncer: Bouncer, caplog: pytest.LogCaptureFixture
) -> None:
    native_outage(conn, 48)
    rc, out, err = run("check", "-d", dsn, "--format", "json")
    direct = json.loads(out)
    assert (rc, err) == (2, "")
    port = bouncer("transaction")
    caplog.clear()
    rc, out, err = run("check", *through(port, dsn), "--format", "json")
    pooled = json.loads(out)
    assert rc == 2
    # The CLI's log handler prints warnings as one stderr line; in-process pytest captures them.
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("check: connected through a transaction-mode pooler"), warning
    assert [(f["code"], f["detail"].get("rows_exact")) for f in pooled["findings"]] == [
        (f["code"], f["detail"].get("rows_exact")) for f in direct["findings"]
    ]


def test_a_session_pooler_is_not_mistaken_for_one_and_fix_goes_through(
    run: Run, dsn: str, conn: Conn, bouncer: Bouncer
) -> None:
    """The port differs from the server's, as behind any proxy; the session is kept, so the
    repair runs, its copy workers connecting through PgBouncer too."""
    native_outage(conn, 48)
    port = bouncer("session")
    rc, out, err = run("check", *through(port, dsn))
    assert (rc, err) == (2, "")
    rc, out, err = run(
        "fix", *through(port, dsn), "public.events", "--yes", "--strategy", "copy", "--jobs", "2"
    )
    assert rc == 0, out + err
    assert count(conn, "public.events_default") == 0
    rc, out, err = run("check", *through(port, dsn))
    assert (rc, err) == (0, ""), out
