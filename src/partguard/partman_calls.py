"""Calling pg_partman's maintenance so that its failures cannot pass for success.

Two traps, both measured on 4.7.2: ``run_maintenance`` returns with only a NOTICE ("Partman
maintenance already running.") when another session holds its advisory lock, which a failed
``run_maintenance_proc()`` keeps for as long as its session lives; and it re-raises every
error as P0001 with the original message, DETAIL, HINT and CONTEXT packed into the text, so
the SQLSTATE (a lock timeout, say) is lost and must be read back from the message.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .db import Conn, one_line, server_message
from .inspect.locks import LockHolder, advisory_holders, partman_lock_holders, stuck_partman_locks
from .inspect.partman import ALREADY_RUNNING, LOCK_TIMEOUT_TEXT, SKIPPED_SET, Partman

__all__ = [
    "ALREADY_RUNNING",
    "LOCK_TIMEOUT_TEXT",
    "SKIPPED_SET",
    "LockHolder",
    "is_lock_timeout",
    "maintenance_lock_holder",
    "maintenance_lock_holders",
    "one_line",
    "run_maintenance_sql",
    "server_message",
    "skipped_for_a_lock",
    "stuck_partman_locks",
]


def skipped_for_a_lock(notices: list[tuple[str, str]]) -> bool:
    """partman 5.5 swallowed a lock timeout into a WARNING: to be retried like one."""
    return any(SKIPPED_SET in text and LOCK_TIMEOUT_TEXT in text for _, text in notices)


def maintenance_lock_holder(conn: Conn, partman: Partman | None = None) -> LockHolder | None:
    """Another session holding one of partman's maintenance advisory locks, if any."""
    held = maintenance_lock_holders(conn, partman)
    return held[0][1] if held else None


def maintenance_lock_holders(conn: Conn, partman: Partman | None) -> list[tuple[str, LockHolder]]:
    """(key text, holder) for every other session holding one of partman's maintenance locks."""
    if partman is None:
        holders = advisory_holders(conn, sql.SQL("hashtext('pg_partman run_maintenance')"))
        return [("pg_partman run_maintenance", h) for h in holders]
    return partman_lock_holders(conn, partman)


def run_maintenance_sql(partman: Partman, parent_table: str) -> sql.Composed:
    return partman.run_maintenance_sql(parent_table)


def is_lock_timeout(exc: psycopg.Error) -> bool:
    """A lock timeout, whether raised as 55P03 or re-raised by partman as P0001."""
    if exc.sqlstate == "55P03":
        return True
    return exc.sqlstate == "P0001" and (exc.diag.message_primary or "").startswith(
        LOCK_TIMEOUT_TEXT
    )
