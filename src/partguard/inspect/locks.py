"""Who holds an advisory lock: the question behind "another fix is running" and behind
pg_partman's silent "maintenance already running" no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from ..db import Conn
from .partman import Partman

# pg_locks splits a bigint advisory key into classid (high 32 bits) and objid (low 32 bits).
_HOLDERS_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(a.state, ''),
       a.backend_start, a.state_change, coalesce(a.query, '')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = ({key} >> 32) & 4294967295
  AND l.objid::bigint = {key} & 4294967295
  AND l.pid <> pg_backend_pid()
ORDER BY a.backend_start
"""


@dataclass(frozen=True)
class LockHolder:
    """A session holding an advisory lock, as pg_stat_activity sees it."""

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


def advisory_holders(conn: Conn, key: sql.Composable) -> list[LockHolder]:
    """Other sessions holding the session-level advisory lock ``key`` (a bigint expression)."""
    query = sql.SQL(_HOLDERS_SQL).format(key=sql.SQL("({})::bigint").format(key))
    return [LockHolder(*row) for row in conn.execute(query)]


def partman_lock_holders(conn: Conn, partman: Partman | None) -> list[tuple[str, LockHolder]]:
    """(key text, holder) for every other session holding one of partman's maintenance locks."""
    if partman is None:
        return []
    return [
        (key, holder)
        for key in partman.lock_keys
        for holder in advisory_holders(conn, sql.SQL("hashtext({})").format(sql.Literal(key)))
    ]


def stuck_partman_locks(conn: Conn, partman: Partman | None) -> list[tuple[str, LockHolder]]:
    """partman locks held by a session that is not running anything: a ``run_maintenance_proc()``
    that failed keeps its session lock while its session idles (a running one is 'active')."""
    return [(k, h) for k, h in partman_lock_holders(conn, partman) if h.state != "active"]
