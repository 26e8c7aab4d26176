"""Calling pg_partman's maintenance so that its failures cannot pass for success.

Two traps, both measured on 4.7.2: ``run_maintenance`` returns with only a NOTICE ("Partman
maintenance already running.") when another session holds its advisory lock, which a failed
``run_maintenance_proc()`` keeps for as long as its session lives; and it re-raises every
error as P0001 with the original message, DETAIL, HINT and CONTEXT packed into the text, so
the SQLSTATE (a lock timeout, say) is lost and must be read back from the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from ..db import Conn
from ..inspect.partman import Partman

ALREADY_RUNNING = "maintenance already running"
LOCK_TIMEOUT_TEXT = "canceling statement due to lock timeout"

# pg_locks splits a bigint advisory key into classid (high 32 bits) and objid (low 32 bits).
_HOLDER_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(a.state, ''),
       a.backend_start, a.state_change, coalesce(a.query, '')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = (hashtext('pg_partman run_maintenance')::bigint >> 32) & 4294967295
  AND l.objid::bigint = hashtext('pg_partman run_maintenance')::bigint & 4294967295
  AND l.pid <> pg_backend_pid()
ORDER BY a.backend_start
"""


@dataclass(frozen=True)
class LockHolder:
    """The session holding pg_partman's maintenance lock, as pg_stat_activity sees it."""

    pid: int
    application: str
    user: str
    state: str
    connected_since: datetime | None
    state_since: datetime | None
    query: str

    def describe(self) -> str:
        q = " ".join(self.query.split())[:160]
        since = f", {self.state or 'unknown state'} since {_ts(self.state_since)}"
        return (
            f"pid {self.pid} (application {self.application or '(none)'}, user {self.user}, "
            f"connected since {_ts(self.connected_since)}{since}; last query: {q or '(hidden)'})"
        )


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "?"


def maintenance_lock_holder(conn: Conn) -> LockHolder | None:
    """Another session holding ``hashtext('pg_partman run_maintenance')``, if any."""
    row = conn.execute(_HOLDER_SQL).fetchone()
    return LockHolder(*row) if row else None


def run_maintenance_sql(partman: Partman, parent_table: str) -> sql.Composed:
    """The per-table call; both named parameters exist in 4.7.x and 5.x. No jobmon: its
    logging commits separately and is not what we report from."""
    return sql.SQL("SELECT {f}(p_parent_table := {t}, p_jobmon := false)").format(
        f=partman.func("run_maintenance"), t=sql.Literal(parent_table)
    )


def is_lock_timeout(exc: psycopg.Error) -> bool:
    """A lock timeout, whether raised as 55P03 or re-raised by partman as P0001."""
    if exc.sqlstate == "55P03":
        return True
    return exc.sqlstate == "P0001" and (exc.diag.message_primary or "").startswith(LOCK_TIMEOUT_TEXT)


def server_message(exc: psycopg.Error) -> tuple[str, str]:
    """(one line for a log, the full text) of a server error.

    The line keeps what a DBA needs: the message, partman's non-empty DETAIL/HINT lines
    and the statement it was running when it failed (its first ``SQL statement`` context).
    """
    d = exc.diag
    primary = (d.message_primary or str(exc)).strip()
    parts = [primary]
    for label, value in (("DETAIL", d.message_detail), ("HINT", d.message_hint), ("CONTEXT", d.context)):
        if value:
            parts.append(f"{label}: {value.strip()}")
    full = "\n".join(parts)
    lines = [ln.strip() for ln in primary.splitlines()]
    line = lines[0] if lines else type(exc).__name__
    extras: list[str] = []
    for label in ("DETAIL:", "HINT:"):
        for ln in lines[1:] + [f"DETAIL: {d.message_detail or ''}", f"HINT: {d.message_hint or ''}"]:
            text = ln[len(label):].strip() if ln.startswith(label) else ""
            if text and text not in extras:
                extras.append(text)
                break
    stmt = next((ln for ln in lines[1:] if ln.startswith(("CONTEXT: SQL statement", "SQL statement"))), None)
    if stmt:
        extras.append("while running " + stmt.split("SQL statement", 1)[1].strip())
    if extras:
        line = f"{line} ({'; '.join(extras)})"
    return " ".join(line.split()), full
