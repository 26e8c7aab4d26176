"""Servers and connections partguard must not change things through, found before it tries.

- A hot standby (``pg_is_in_recovery()``) is read-only: every write fails with "cannot execute
  … in a read-only transaction". An HA pair often runs the maintenance timer on both nodes,
  so on the standby ``maintain`` does nothing and says so (as pg_partman 5.1+ does), and
  ``fix`` refuses: the repair belongs on the primary.
- A transaction-mode (or statement-mode) pooler such as PgBouncer hands each transaction to
  whichever server connection is free. A session advisory lock (one ``fix`` per table,
  partman's maintenance lock) and a session ``SET`` (lock_timeout, TimeZone) then stay on a
  server connection another client gets next. No SQL asks the pooler its mode, so we watch
  for the effect: a second client that gets our server session while we hold none.
"""

from __future__ import annotations

import logging

import psycopg

from .db import Conn, ConnParams, connect
from .errors import ConnectionFailed, PoolerNotSupported, StandbyServer

log = logging.getLogger(__name__)

STANDBY_NOTE = "the server is a hot standby (in recovery, read-only)"


def in_recovery(conn: Conn) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def refuse_standby(conn: Conn, what: str) -> None:
    """Raise ``StandbyServer`` (exit 69) when ``conn`` is to a standby."""
    if in_recovery(conn):
        raise StandbyServer(
            f"{what} changes the database and {STANDBY_NOTE}: run it against the primary"
        )


def pooled_session(conn: Conn, params: ConnParams | str) -> str | None:
    """Evidence that ``conn`` does not own its server session, or None.

    A direct connection reaches the port the server listens on (TCP or socket file), so the
    common case costs one query. Behind anything else (a pooler, but also an ssh tunnel or a
    mapped container port) a second client begins a transaction: a transaction-mode pooler
    gives it the server connection we just used (PgBouncer reuses the most recent one), and
    our next statement then runs on another. Session pooling and tunnels keep both apart.
    """
    row = conn.execute("SELECT current_setting('port')::int, pg_backend_pid()").fetchone()
    assert row is not None
    server_port, pid = int(row[0]), int(row[1])
    if conn.info.port == server_port:
        return None
    try:
        other = connect(params)
    except ConnectionFailed as exc:
        log.warning(
            "connected on port %s, the server listens on %d: cannot tell whether a pooler keeps "
            "the session (a second connection failed: %s)",
            conn.info.port,
            server_port,
            exc,
        )
        return None
    try:
        with other.transaction():
            theirs = _pid(other)
            if theirs == pid:
                return f"another client got this session's server connection, backend pid {pid}"
            ours = _pid(conn)
            if ours != pid:
                return f"the server session changed between two statements, backend pid {pid}, then {ours}"
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "pooling" in text:  # PgBouncer's statement mode: "transaction blocks not allowed …"
            return text
        log.warning("cannot tell whether a pooler keeps the session: %s", text)
    finally:
        other.close()
    return None


def refuse_pooler(conn: Conn, params: ConnParams | str, what: str) -> None:
    """Raise ``PoolerNotSupported`` (exit 78) when the session does not survive between statements."""
    why = pooled_session(conn, params)
    if why is not None:
        raise PoolerNotSupported(
            f"{what} needs a direct connection (or a session-mode pooler): {why}, so session advisory "
            "locks and SET would not hold; connect to PostgreSQL itself, not through a transaction-mode pooler"
        )


def warn_if_pooled(conn: Conn, params: ConnParams | str, what: str) -> str | None:
    """For read-only commands: log the evidence and carry on (prepared statements off, since
    they live in one server session too). Returns the evidence."""
    why = pooled_session(conn, params)
    if why is not None:
        conn.prepare_threshold = None
        log.warning(
            "%s: connected through a transaction-mode pooler (%s): its lock_timeout may not "
            "hold; connect directly for reliable results",
            what,
            why,
        )
    return why


def _pid(conn: Conn) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])
