"""Connections, the way psql makes them, plus the lock discipline every DDL obeys.

libpq already understands ``-d`` as a name, a conninfo string or a URI, the PG*
variables, ``~/.pgpass`` and service files; we only layer explicit ``-h -p -U`` on top
and never echo a password.
"""

from __future__ import annotations

import logging
import random
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed, LockNotAvailable, PermissionDenied

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
T = TypeVar("T")

# SQLSTATEs that mean "try again later" for a connection attempt.
_TRANSIENT_CONNECT = ("53300", "57P03", "08006", "08001", "08004", "57P01")


@dataclass(frozen=True)
class ConnParams:
    """What the user said about where to connect; libpq fills in the rest."""

    dbname: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None

    def conninfo(self, application_name: str = "partguard") -> str:
        base = self.dbname or ""
        extra: dict[str, Any] = {
            k: v for k, v in (("host", self.host), ("port", self.port), ("user", self.user)) if v
        }
        if _is_conninfo(base):
            # A conninfo or URI: parse it so our explicit -h/-p/-U can override its parts.
            params: dict[str, Any] = dict(conninfo_to_dict(base))
        else:
            params = {"dbname": base} if base else {}
        params.update(extra)
        params.setdefault("application_name", application_name)
        return make_conninfo("", **params)

    def command_args(self, database: str = "") -> str:
        """``-d … -h … -p … -U …`` as the user gave them (``database`` when no -d), shell-quoted
        and never with a password: the options of every command partguard prints."""
        base = self.dbname or ""
        if _is_conninfo(base) and "password" in (parts := conninfo_to_dict(base)):
            base = make_conninfo("", **{k: v for k, v in parts.items() if k != "password"})
        given = (("-d", base or database), ("-h", self.host), ("-p", self.port), ("-U", self.user))
        return " ".join(f"{flag} {shlex.quote(str(v))}" for flag, v in given if v)

    def describe(self) -> str:
        """The target without secrets, for messages."""
        d = conninfo_to_dict(self.conninfo())
        return " ".join(f"{k}={v}" for k, v in d.items() if k in ("host", "port", "dbname", "user"))


def _is_conninfo(dbname: str) -> bool:
    return "=" in dbname or dbname.startswith(("postgresql://", "postgres://"))


def connect(params: ConnParams | str, *, autocommit: bool = True, **kwargs: Any) -> Conn:
    """Open a session with settings that make catalog text unambiguous (ISO dates, UTC)."""
    conninfo = params.conninfo() if isinstance(params, ConnParams) else params
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect: {_first_line(exc)}") from exc
    conn.execute("SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'")
    return conn


def session_timezone(conn: Conn) -> str:
    """The TimeZone a session of this role in this database starts with.

    That is the zone pg_partman computes boundaries in when a plain ``psql -c CALL
    run_maintenance_proc()`` runs it; ``reset_val`` survives our own ``SET TimeZone``.
    """
    row = conn.execute("SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'").fetchone()
    return str(row[0]) if row else "UTC"


def connect_retrying(
    params: ConnParams | str,
    retry_for: float,
    *,
    on_attempt: Callable[[int, str], None] | None = None,
    autocommit: bool = True,
) -> Conn:
    """Connect, retrying transient refusals (too many clients, starting up, reset) with
    jittered exponential backoff until ``retry_for`` seconds have passed."""
    deadline = time.monotonic() + retry_for
    attempt = 0
    delay = 0.5
    while True:
        attempt += 1
        try:
            return connect(params, autocommit=autocommit)
        except ConnectionFailed as exc:
            cause = exc.__cause__
            sqlstate = getattr(cause, "sqlstate", None)
            text = str(exc)
            transient = sqlstate in _TRANSIENT_CONNECT or any(
                s in text
                for s in ("too many clients", "starting up", "shutting down", "Connection refused",
                          "reserved for", "recovery", "terminating connection")
            )
            if on_attempt:
                on_attempt(attempt, text)
            remaining = deadline - time.monotonic()
            if not transient or remaining <= 0:
                raise ConnectionFailed(f"{text} (after {attempt} attempts)") from exc
            time.sleep(min(remaining, delay * (0.5 + random.random())))
            delay = min(delay * 2, 30.0)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def parse_duration(text: str) -> float:
    """``2s``, ``500ms``, ``10m``, ``1h`` or plain seconds -> seconds."""
    from .errors import UsageError

    t = text.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("min", 60.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], factor
            break
    else:
        mult = 1.0
    try:
        value = float(t) * mult
    except ValueError:
        raise UsageError(f"not a duration: {text!r} (use e.g. 2s, 500ms, 10m)") from None
    if value < 0:
        raise UsageError(f"duration must not be negative: {text!r}")
    return value


@dataclass(frozen=True)
class Blocker:
    pid: int
    application: str
    state: str
    since: str
    query: str

    def describe(self) -> str:
        q = " ".join(self.query.split())
        return f"pid {self.pid} ({self.application or 'no application_name'}, {self.state} since {self.since}): {q[:200]}"


def blockers(conn: Conn, relations: Sequence[int]) -> list[Blocker]:
    """Sessions holding locks on ``relations`` (oids) other than ours."""
    rows = conn.execute(
        """
        SELECT DISTINCT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),
               coalesce(to_char(coalesce(a.xact_start, a.backend_start), 'YYYY-MM-DD HH24:MI:SS TZ'), ''),
               coalesce(a.query, '')
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.granted AND l.relation = ANY(%s::oid[]) AND l.pid <> pg_backend_pid()
        ORDER BY 1
        """,
        (list(relations),),
    ).fetchall()
    return [Blocker(*r) for r in rows]


def run_locked(
    conn: Conn,
    work: Callable[[Conn], T],
    *,
    lock_timeout: float,
    retries: int,
    relations: Sequence[int] = (),
    what: str = "DDL",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work`` in one transaction under ``lock_timeout``, retrying with backoff.

    A DDL that waits for a lock queues every later query on the table behind it, so we
    wait at most ``lock_timeout`` and give the application the table back between tries.
    When every try fails, the error names who held the lock.
    """
    ms = max(1, int(lock_timeout * 1000))
    for attempt in range(1, retries + 2):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{ms}ms")))
                return work(conn)
        except pgerrors.LockNotAvailable:
            held = blockers(conn, relations) if relations else []
            if attempt > retries:
                who = "; ".join(b.describe() for b in held) or "a session that has since let go"
                raise LockNotAvailable(
                    f"{what}: lock not granted within {lock_timeout:g}s after {attempt} tries; "
                    f"blocked by {who}"
                ) from None
            pause = min(10.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("%s: lock_timeout (try %d/%d), retrying in %.1fs", what, attempt,
                        retries + 1, pause)
            sleep(pause)
        except pgerrors.InsufficientPrivilege as exc:
            raise PermissionDenied(f"{what}: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


@contextmanager
def advisory_lock(conn: Conn, key: int) -> Iterator[bool]:
    """A session-level advisory lock; yields whether we got it (never waits)."""
    got = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])  # type: ignore[index]
    try:
        yield got
    finally:
        if got and not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
