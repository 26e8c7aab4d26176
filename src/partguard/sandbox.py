"""A throwaway PostgreSQL cluster for tests and ``partguard demo``.

Tests must hit a real server (partman's behaviour is the thing under test), but must never
touch a real one: each Sandbox is a fresh ``initdb`` in a temp dir on a free port, tuned for
speed over durability, and removed again on ``stop()``.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from partguard.db import scalar
from partguard.errors import PartguardError

PG_LIB = Path("/usr/lib/postgresql")  # Debian/Ubuntu layout: one bin dir per major
PG_SHARE = Path("/usr/share/postgresql")
OS_USER = "postgres"  # who runs the server when we are root (PostgreSQL refuses root)

Setting = str | int | float | bool

# Speed over durability: the data is thrown away anyway.
DEFAULT_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "128MB",
    "max_locks_per_transaction": "256",  # partition-heavy tests lock many relations
    "TimeZone": "UTC",
    "listen_addresses": "127.0.0.1",
}


def _hint(major: int | None) -> str:
    n = major if major is not None else "<N>"
    return f"install postgresql-{n} and postgresql-{n}-partman, or run `make demo`"


def find_pg_bin(major: int | None = None) -> Path:
    """Where the server binaries are: $PARTGUARD_PG_BIN, else the Debian layout.

    Without ``major`` prefer the newest major that has pg_partman, since most tests need it.
    """
    env = os.environ.get("PARTGUARD_PG_BIN")
    if env:
        path = Path(env)
        if not (path / "pg_ctl").is_file():
            raise PartguardError(f"PARTGUARD_PG_BIN={env} has no pg_ctl; {_hint(major)}")
        return path
    if major is not None:
        path = PG_LIB / str(major) / "bin"
        if not (path / "pg_ctl").is_file():
            raise PartguardError(f"PostgreSQL {major} is not installed; {_hint(major)}")
        return path
    installed = sorted((int(p.parts[-3]) for p in PG_LIB.glob("[0-9]*/bin/pg_ctl")), reverse=True)
    if not installed:
        raise PartguardError(f"no PostgreSQL server found under {PG_LIB}; {_hint(None)}")
    partman = [m for m in installed if (PG_SHARE / f"{m}/extension/pg_partman.control").exists()]
    return PG_LIB / str((partman or installed)[0]) / "bin"


@functools.cache
def server_major(pg_bin: Path) -> int:
    """The major version of the server in ``pg_bin`` (asks the binary, not the path)."""
    out = subprocess.run(
        [str(pg_bin / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"\(PostgreSQL\) (\d+)", out)
    if not m:
        raise PartguardError(f"cannot parse the version of {pg_bin / 'postgres'}: {out.strip()!r}")
    return int(m.group(1))


def _extension_dirs(pg_bin: Path) -> list[Path]:
    return [
        PG_SHARE / str(server_major(pg_bin)) / "extension",  # Debian
        pg_bin.parent / "share" / "extension",  # source build (--prefix)
        pg_bin.parent / "share" / "postgresql" / "extension",
    ]


def partman_available(pg_bin: Path) -> bool:
    """Whether ``CREATE EXTENSION pg_partman`` can work on this server (its control file exists)."""
    return any((d / "pg_partman.control").is_file() for d in _extension_dirs(pg_bin))


_INSTALL_SCRIPT = re.compile(r"pg_partman--(\d+(?:\.\d+)+)\.sql")


def partman_versions(pg_bin: Path) -> list[str]:
    """Every pg_partman version this server can ``CREATE EXTENSION … VERSION`` directly (its full
    install script is present; upgrade scripts ``a--b.sql`` do not count), oldest first."""
    found: set[str] = set()
    for d in _extension_dirs(pg_bin):
        if (d / "pg_partman.control").is_file():
            for f in d.glob("pg_partman--*.sql"):
                if m := _INSTALL_SCRIPT.fullmatch(f.name):
                    found.add(m.group(1))
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sandbox:
    """One private cluster: ``with Sandbox() as sb: psycopg.connect(sb.dsn())``."""

    host = "127.0.0.1"
    user = "postgres"  # the cluster's superuser (initdb -U), whoever runs the server

    def __init__(
        self,
        pg_bin: Path | None = None,
        settings: Mapping[str, Setting] | None = None,
        keep: bool = False,
    ) -> None:
        self.pg_bin = pg_bin if pg_bin is not None else find_pg_bin()
        self.major = server_major(self.pg_bin)
        self.has_partman = partman_available(self.pg_bin)
        self.settings: dict[str, Setting] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.keep = keep
        self.port = 0
        self._tmp: Path | None = None
        self.primary: Sandbox | None = None  # set on a streaming replica (``replica()``)

    @property
    def datadir(self) -> Path:
        if self._tmp is None:
            raise PartguardError("the sandbox is not started")
        return self._tmp / "data"

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the right OS user, detached from our terminal's Ctrl-C."""
        assert self._tmp is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", HOME=str(self._tmp))
        extra: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                gid = pwd.getpwnam(OS_USER).pw_gid
            except KeyError:
                raise PartguardError(f"running as root needs an OS user {OS_USER!r}") from None
            extra = {"user": OS_USER, "group": gid, "extra_groups": []}
        proc = subprocess.run(
            [str(self.pg_bin / args[0]), *args[1:]],
            check=False,
            cwd=self._tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            **extra,
        )
        if check and proc.returncode != 0:
            raise self._failed(args[0], proc)
        return proc

    def _failed(self, what: str, proc: subprocess.CompletedProcess[str]) -> PartguardError:
        out = (proc.stderr.strip() or proc.stdout.strip()).replace("\n", " ")
        return PartguardError(f"{what} failed (exit {proc.returncode}): {out}{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n--- server log ---\n" + "\n".join(tail) if tail else ""

    def _write_conf(self) -> None:
        conf = dict(self.settings, port=self.port, unix_socket_directories=str(self._tmp))
        body = "".join(f"{k} = {_conf_value(v)}\n" for k, v in conf.items())
        path = self.datadir / "partguard.conf"
        path.write_text(body)
        if os.geteuid() == 0:
            shutil.chown(path, OS_USER, OS_USER)

    def _start_args(self) -> list[str]:
        return ["-w", "-t", "60", "-D", str(self.datadir), "-l", str(self.logfile)]

    def start(self) -> Self:
        """initdb + start on a free port; on failure clean up and raise with the server log."""
        if self._tmp is not None:
            raise PartguardError("the sandbox is already started")
        self._tmp = Path(tempfile.mkdtemp(prefix="partguard-", dir="/tmp"))
        try:
            self._tmp.chmod(0o755)
            if os.geteuid() == 0:
                shutil.chown(self._tmp, OS_USER, OS_USER)
            self._init_datadir()
            for attempt in range(3):  # the free port can be taken before the server binds it
                self.port = _free_port()
                self._write_conf()
                proc = self._run("pg_ctl", "start", *self._start_args(), check=False)
                if proc.returncode == 0:
                    break
                if attempt == 2 or "could not bind" not in self._log_tail():
                    raise self._failed("pg_ctl start", proc)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _init_datadir(self) -> None:
        if self.primary is None:
            initdb_args = ["-D", str(self.datadir), "-U", self.user, "-A", "trust", "-E", "UTF8"]
            self._run("initdb", *initdb_args, "--no-locale", "--no-sync")
            with (self.datadir / "postgresql.conf").open("a") as f:
                f.write("\ninclude 'partguard.conf'\n")
            return
        # initdb's pg_hba.conf lets 127.0.0.1 replicate with trust, and wal_level=replica and
        # max_wal_senders are PostgreSQL's defaults: the primary needs no change.
        p = self.primary
        self._run(
            "pg_basebackup",
            "-D",
            str(self.datadir),
            "-h",
            p.host,
            "-p",
            str(p.port),
            "-U",
            p.user,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        # The copy brings the primary's postgresql.conf (which includes partguard.conf, rewritten
        # with our own port) and its server log, which would only confuse ours.
        with self.logfile.open("w"):
            pass

    def replica(self) -> Sandbox:
        """A started hot standby of this (started) cluster: ``pg_basebackup -R``, streaming
        replication, read-only queries allowed. ``stop()`` it like any sandbox."""
        if self._tmp is None:
            raise PartguardError("the primary is not started")
        standby = Sandbox(pg_bin=self.pg_bin, settings=self.settings, keep=self.keep)
        standby.primary = self
        return standby.start()

    def wait_replayed(self, timeout: float = 60.0) -> None:
        """On a replica: wait until it has replayed everything its primary has written so far."""
        if self.primary is None:
            raise PartguardError("not a replica")
        with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            # The insert position, not pg_current_wal_lsn() (the write position): with
            # synchronous_commit off a commit can sit in WAL buffers behind the latter.
            lsn = scalar(conn, "SELECT pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()
                if row and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise PartguardError(
                        f"the replica has not replayed up to {lsn} after {timeout:g}s"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (fast, else immediate) and delete its directory unless ``keep``."""
        if self._tmp is None:
            return
        atexit.unregister(self.stop)
        data = str(self.datadir)
        if (self.datadir / "postmaster.pid").exists() and (
            self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", data, check=False)
        ).returncode != 0:
            self._run("pg_ctl", "stop", "-m", "immediate", "-D", data, check=False)
        if not self.keep:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def restart(self) -> None:
        """Restart on the same port, e.g. to apply a restart-only setting set by ALTER SYSTEM."""
        self._run("pg_ctl", "restart", "-m", "fast", *self._start_args())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq conninfo string for ``dbname`` (TCP, trust auth: no password)."""
        return make_conninfo("", host=self.host, port=self.port, user=self.user, dbname=dbname)

    def create_database(
        self,
        name: str,
        partman: bool = True,
        template: str | None = None,
        partman_version: str | None = None,
    ) -> str:
        """CREATE DATABASE (optionally from ``template``), with pg_partman in schema ``partman``
        when asked and installed (``partman_version``, else the control file's default);
        returns the new database's dsn."""
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(stmt)
        if partman and self.has_partman:
            with psycopg.connect(self.dsn(name), autocommit=True) as conn:
                conn.execute("CREATE SCHEMA IF NOT EXISTS partman")
                create: sql.SQL | sql.Composed = sql.SQL(
                    "CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman"
                )
                if partman_version is not None:
                    create = sql.SQL("{} VERSION {}").format(create, sql.Literal(partman_version))
                conn.execute(create)
        return self.dsn(name)


if __name__ == "__main__":
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on kill, too
    with Sandbox() as sandbox:
        print(sandbox.dsn(), f"(PostgreSQL {sandbox.major}, partman: {sandbox.has_partman})")
        print("Ctrl-C stops it and removes", sandbox.datadir.parent, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
