"""Connections, the way psql makes them, plus the lock discipline every DDL obeys.

libpq already understands ``-d`` as a name, a conninfo string or a URI, the PG*
variables, ``~/.pgpass`` and service files; we only layer explicit ``-h -p -U`` on top
and never echo a password.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo

from .errors import ConnectionFailed, LockNotAvailable, PermissionDenied, UsageError

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
T = TypeVar("T")

# SQLSTATEs that mean "try again later" for a connection attempt.
_TRANSIENT_CONNECT = ("53300", "57P03", "08006", "08001", "08004", "57P01")

# Seconds a connection attempt may take when neither --connect-timeout, the conninfo's
# connect_timeout nor PGCONNECT_TIMEOUT says: a server that accepts TCP and never answers
# must not hang a timer's run (libpq alone waits forever).
DEFAULT_CONNECT_TIMEOUT = 5

# Seconds one lock attempt may wait (``SET LOCAL lock_timeout``). A DDL waiting in the lock
# queue stalls every later query on the table, so this is what the application can feel.
LOCK_ATTEMPT = 0.05


@dataclass(frozen=True)
class ConnParams:
    """What the user said about where to connect; libpq fills in the rest."""

    dbname: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    connect_timeout: int | None = None  # --connect-timeout: overrides the conninfo's

    def conninfo(self, application_name: str = "partguard") -> str:
        base = self.dbname or ""
        extra: dict[str, Any] = {
            k: v
            for k, v in (
                ("host", self.host),
                ("port", self.port),
                ("user", self.user),
                ("connect_timeout", self.connect_timeout),
            )
            if v
        }
        if _is_conninfo(base):
            # A conninfo or URI: parse it so our explicit -h/-p/-U can override its parts.
            try:
                params: dict[str, Any] = dict(conninfo_to_dict(base))
            except psycopg.ProgrammingError as exc:
                raise UsageError(
                    f"-d is not a valid connection string: {_first_line(exc)}"
                ) from None
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


def connect(
    params: ConnParams | str, *, autocommit: bool = True, within: float | None = None, **kwargs: Any
) -> Conn:
    """Open a session with settings that make catalog text unambiguous (ISO dates, UTC).

    Every attempt is bounded (``connect_timeout``, see ``with_connect_timeout``), and by
    ``within`` seconds when given: the time a caller has left.
    """
    conninfo = params.conninfo() if isinstance(params, ConnParams) else params
    conninfo, timeout = with_connect_timeout(conninfo, within)
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, **kwargs)
    except psycopg.errors.ConnectionTimeout as exc:
        raise ConnectionFailed(
            f"cannot connect to {_where(conninfo)}: no answer within {timeout}s (connect_timeout)"
        ) from exc
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect: {_first_line(exc)}") from exc
    conn.execute("SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'")
    return conn


def with_connect_timeout(conninfo: str, within: float | None = None) -> tuple[str, int]:
    """``conninfo`` with a ``connect_timeout``, and that timeout in seconds.

    Precedence: the conninfo's own (``--connect-timeout`` is put there by ConnParams, over
    a DSN's), then ``PGCONNECT_TIMEOUT``, then DEFAULT_CONNECT_TIMEOUT. ``within`` caps it;
    libpq counts whole seconds and psycopg waits at least 2 per host address.
    """
    try:
        params: dict[str, Any] = dict(conninfo_to_dict(conninfo))
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"not a valid connection string: {_first_line(exc)}") from None
    given = params.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
    try:
        timeout = int(float(given)) if given is not None else DEFAULT_CONNECT_TIMEOUT
    except ValueError:
        raise UsageError(f"connect_timeout must be a number of seconds, not {given!r}") from None
    if within is not None:
        cap = max(1, math.ceil(within))
        timeout = cap if timeout <= 0 else min(timeout, cap)  # 0 is libpq's "wait forever"
    params["connect_timeout"] = timeout
    return make_conninfo("", **params), timeout_from_conninfo(params)  # as psycopg waits


def _where(conninfo: str) -> str:
    d = conninfo_to_dict(conninfo)
    host = d.get("host") or os.environ.get("PGHOST") or "the local socket"
    port = d.get("port") or os.environ.get("PGPORT")
    return f"{host} port {port}" if port else str(host)


def scalar(
    conn: Conn, query: LiteralString | sql.Composed, params: Sequence[object] | None = None
) -> object:
    """The first value of the row a query that always returns one (``SELECT f()``, ``EXISTS``)
    returns; ProgrammingError if it returned none."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise psycopg.ProgrammingError(f"no row from {query!r}")
    return row[0]


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
    """Connect, retrying transient refusals (too many clients, starting up, reset, no
    answer) with jittered exponential backoff until ``retry_for`` seconds have passed.

    ``retry_for`` bounds the whole wait: an attempt to a server that never answers is cut
    at what is left of it (give or take libpq's whole seconds).
    """
    deadline = time.monotonic() + retry_for
    attempt = 0
    delay = 0.5
    while True:
        attempt += 1
        try:
            return connect(
                params, autocommit=autocommit, within=max(0.0, deadline - time.monotonic())
            )
        except ConnectionFailed as exc:
            cause = exc.__cause__
            sqlstate = getattr(cause, "sqlstate", None)
            text = str(exc)
            transient = (
                sqlstate in _TRANSIENT_CONNECT
                or isinstance(cause, psycopg.errors.ConnectionTimeout)
                or any(
                    s in text
                    for s in (
                        "too many clients",
                        "starting up",
                        "shutting down",
                        "Connection refused",
                        "reserved for",
                        "recovery",
                        "terminating connection",
                    )
                )
            )
            if on_attempt:
                on_attempt(attempt, text)
            remaining = deadline - time.monotonic()
            if not transient or remaining <= 0:
                plural = "" if attempt == 1 else "s"
                raise ConnectionFailed(f"{text} (after {attempt} attempt{plural})") from exc
            time.sleep(min(remaining, delay * (0.5 + random.random())))
            delay = min(delay * 2, 30.0)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def server_message(exc: psycopg.Error) -> tuple[str, str]:
    """(one line for a log, the full text) of a server error.

    The line keeps what a DBA needs: the message, partman's non-empty DETAIL/HINT lines
    and the statement it was running when it failed (its first ``SQL statement`` context);
    pg_partman re-raises every error as P0001 with all of them packed into the message.
    """
    d = exc.diag
    primary = (d.message_primary or str(exc)).strip()
    parts = [primary]
    for label, value in (
        ("DETAIL", d.message_detail),
        ("HINT", d.message_hint),
        ("CONTEXT", d.context),
    ):
        if value:
            parts.append(f"{label}: {value.strip()}")
    full = "\n".join(parts)
    return one_line(primary, d.message_detail, d.message_hint) if primary else type(
        exc
    ).__name__, full


def one_line(primary: str, detail: str | None = None, hint: str | None = None) -> str:
    """A server error's (or partman WARNING's) text on one line: its message, the DETAIL/HINT
    lines that say something, and the statement it was running (its first ``SQL statement``
    context)."""
    lines = [ln.strip() for ln in primary.strip().splitlines()]
    line = lines[0] if lines else "error"
    extras: list[str] = []
    for label in ("DETAIL:", "HINT:"):
        for ln in lines[1:] + [f"DETAIL: {detail or ''}", f"HINT: {hint or ''}"]:
            text = ln[len(label) :].strip() if ln.startswith(label) else ""
            if text and text not in extras:
                extras.append(text)
                break
    stmt = next(
        (ln for ln in lines[1:] if ln.startswith(("CONTEXT: SQL statement", "SQL statement"))), None
    )
    if stmt:
        extras.append("while running " + stmt.split("SQL statement", 1)[1].strip())
    if extras:
        line = f"{line} ({'; '.join(extras)})"
    return " ".join(line.split())


def error_line(exc: BaseException) -> str:
    """Any error as one line: a server error through ``server_message``, else its text
    with line breaks folded (messages end up in journald lines and one-line findings)."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return server_message(exc)[0]
    return " ".join(str(exc).split()) or type(exc).__name__


def parse_duration(text: str) -> float:
    """``2s``, ``500ms``, ``10m``, ``1h`` or plain seconds -> seconds."""
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
        app = self.application or "no application_name"
        return f"pid {self.pid} ({app}, {self.state} since {self.since}): {q[:200]}"


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
    attempt_timeout: float = LOCK_ATTEMPT,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work`` in one transaction, in short lock attempts, retrying with backoff.

    A DDL waiting for a lock queues every later query on the table behind it. So each
    attempt waits at most ``attempt_timeout`` (``SET LOCAL lock_timeout``), and between
    attempts the application has the table back for a jittered pause that grows from one
    attempt to half a second. One *try* keeps attempting for ``lock_timeout`` seconds;
    after a failed try a longer pause (0.2 s doubling, at most 10 s) lets a long
    transaction finish, and ``retries`` more tries follow. When every try fails, the
    error names who held the lock.
    """
    per_attempt = min(attempt_timeout, lock_timeout) if lock_timeout > 0 else attempt_timeout
    ms = sql.Literal(f"{max(1, int(per_attempt * 1000))}ms")
    attempts = 0
    for trial in range(1, retries + 2):
        deadline = time.monotonic() + lock_timeout
        pause = per_attempt
        while True:
            attempts += 1
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(ms))
                    return work(conn)
            except pgerrors.LockNotAvailable:
                pass
            except pgerrors.InsufficientPrivilege as exc:
                raise PermissionDenied(f"{what}: {_first_line(exc)}") from None
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sleep(min(left, pause * (0.5 + random.random())))
            pause = min(pause * 2, 0.5)
        held = blockers(conn, relations) if relations else []
        if trial > retries:
            who = "; ".join(b.describe() for b in held) or "a session that has since let go"
            raise LockNotAvailable(
                f"{what}: lock not granted within {lock_timeout:g}s after {trial} "
                f"tr{'y' if trial == 1 else 'ies'} ({attempts} attempts of {per_attempt * 1000:g} ms); "
                f"blocked by {who}"
            )
        backoff = min(10.0, 0.2 * 2 ** (trial - 1)) * (0.5 + random.random())
        log.warning(
            "%s: lock not granted within %gs (try %d/%d, %d attempts), retrying in %.1fs",
            what,
            lock_timeout,
            trial,
            retries + 1,
            attempts,
            backoff,
        )
        sleep(backoff)
    raise AssertionError("unreachable")


@contextmanager
def lowered_lock_timeout(conn: Conn, seconds: float) -> Iterator[None]:
    """The session's lock_timeout at most ``seconds`` for a block, then as it was."""
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'lock_timeout'").fetchone()
    before = int(row[0]) if row else 0  # milliseconds; 0 waits forever
    ms = max(1, int(seconds * 1000))
    if 0 < before <= ms:
        yield
        return
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{ms}ms",))
    try:
        yield
    finally:
        if not (conn.closed or conn.broken):
            with contextlib.suppress(psycopg.Error):  # an aborted transaction restores it anyway
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{before}ms",))


@contextmanager
def advisory_lock(conn: Conn, key: int) -> Iterator[bool]:
    """A session-level advisory lock; yields whether we got it (never waits)."""
    got = bool(scalar(conn, "SELECT pg_try_advisory_lock(%s)", (key,)))
    try:
        yield got
    finally:
        if got and not (conn.closed or conn.broken):
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
