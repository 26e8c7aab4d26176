"""The only code that opens transactions for a repair: steps under lock_timeout, the
journalled block-range copy on several connections, and progress reporting.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import journal
from .db import LOCK_ATTEMPT, Conn, ConnParams, connect_retrying, error_line, run_locked
from .errors import ConnectionFailed, PartguardError
from .plan.steps import Step

log = logging.getLogger(__name__)

Work = Callable[[Conn], Any]

_ACTIONS: dict[str, Callable[[], None]] = {}


def fault(point: str) -> None:
    """Crash-test hook: ``PARTGUARD_FAULT=<point>`` kills this process at ``point``.

    The crash tests need a SIGKILL at an exact place (inside the swap, mid-copy, before the
    drop); timing a kill from outside would make them flaky. Unset in production. An
    in-process test may also run an action there (``fault_action``).
    """
    action = _ACTIONS.get(point)
    if action is not None:
        action()
    if os.environ.get("PARTGUARD_FAULT") == point:
        log.warning("PARTGUARD_FAULT=%s: killing myself", point)
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def fault_action(point: str, action: Callable[[], None]) -> Iterator[None]:
    """Tests: run ``action`` when a run reaches ``point`` (in the thread that reaches it,
    inside that step's transaction), e.g. take a lock on the parent just before the swap."""
    _ACTIONS[point] = action
    try:
        yield
    finally:
        _ACTIONS.pop(point, None)


@dataclass
class Timings:
    """How long each locking step held its locks; the report's "longest lock"."""

    locked: dict[str, float] = field(default_factory=dict)

    @property
    def longest(self) -> float:
        return max(self.locked.values(), default=0.0)


@dataclass
class Runner:
    conn: Conn
    run_id: int
    lock_timeout: float
    retries: int
    relations: Sequence[int]
    timings: Timings = field(default_factory=Timings)
    lock_attempt: float = LOCK_ATTEMPT

    def step(
        self,
        step: Step,
        *,
        before: Work | None = None,
        between: Callable[[Conn, int], None] | None = None,
        after: Work | None = None,
        scan: bool = False,
        state: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Any:
        """Run one step's statements in one transaction and record it done in the same
        transaction, so the journal never claims a step that rolled back."""
        result: list[Any] = []
        attempt_started = [0.0]

        def work(conn: Conn) -> None:
            # Locks are taken from here on; earlier tries and back-off sleeps held none.
            attempt_started[0] = time.monotonic()
            if scan:
                # A long VALIDATE is fine (it blocks nobody); a server statement_timeout is not.
                conn.execute("SET LOCAL statement_timeout = 0")
            if before:
                before(conn)
            for i, stmt in enumerate(step.statements):
                if between:
                    between(conn, i)
                cur = conn.execute(stmt)
                if cur.description:
                    result.extend(cur.fetchall())
            if between:
                between(conn, len(step.statements))
            if after:
                after(conn)
            fault(step.name)
            journal.set_state(conn, self.run_id, state or step.name, detail=detail or {})

        run_locked(self.conn, work, lock_timeout=self.lock_timeout, retries=self.retries,
                   relations=self.relations, what=f"{step.name}", attempt_timeout=self.lock_attempt)
        if step.kind == "ddl":  # steps whose locks block the application (not private tables)
            self.timings.locked[step.name] = time.monotonic() - attempt_started[0]
        return result


@dataclass(frozen=True)
class Progress:
    done_pages: int
    total_pages: int
    rows: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.done_pages or self.done_pages >= self.total_pages:
            return None if self.done_pages < self.total_pages else 0.0
        return self.elapsed * (self.total_pages - self.done_pages) / self.done_pages


def chunks(total_pages: int, chunk_pages: int) -> list[tuple[int, int]]:
    """Block ranges covering the heap; the last one is open-ended so nothing is missed."""
    out = []
    first = 0
    while first < total_pages:
        out.append((first, first + chunk_pages))
        first += chunk_pages
    if out:
        # The holding table is private and immutable, but be generous with its last block.
        out[-1] = (out[-1][0], max(out[-1][1], total_pages) + 1)
    return out or [(0, 1)]


def open_workers(params: ConnParams | str, jobs: int, *, retry_for: float) -> tuple[list[Conn], str | None]:
    """The copy's extra connections (``jobs - 1``: the main connection is a worker too),
    opened and checked before the swap commits, so a full server costs parallelism, never
    a half-done copy. A refused connection (too many clients, starting up) is retried with
    backoff for ``retry_for`` seconds; after that the copy runs on what it has. Returns the
    connections and, when fewer than asked, why."""
    conns: list[Conn] = []
    for i in range(2, jobs + 1):
        try:
            conn = connect_retrying(_worker_conninfo(params, i), retry_for)
            conn.execute("SELECT 1")
        except (ConnectionFailed, psycopg.OperationalError) as exc:
            log.warning("copy: connection %d of %d refused, copying on %d: %s", i, jobs, len(conns) + 1,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            return conns, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        conns.append(conn)
    return conns, None


def _worker_conninfo(params: ConnParams | str, i: int) -> str:
    """Each copy connection says what it is in pg_stat_activity."""
    name = f"partguard copy {i}"
    return params.conninfo(name) if isinstance(params, ConnParams) else make_conninfo(params, application_name=name)


def copy_chunks(
    conns: Sequence[Conn],
    statements: Sequence[sql.Composed],
    run_id: int,
    todo: list[tuple[int, int]],
    total_pages: int,
    *,
    lock_timeout: float,
    retries: int,
    relations: Sequence[int],
    on_progress: Callable[[Progress], None] | None = None,
    done_pages: int = 0,
    lock_attempt: float = LOCK_ATTEMPT,
) -> int:
    """Copy block ranges on ``conns`` (one worker each); every range commits with its
    journal row.

    Returns rows copied in this call. A worker whose connection is lost hands its range
    back and stops; the others go on. Any other error stops every worker after its current
    range; what committed stays committed and a rerun skips it.
    """
    work: queue.Queue[tuple[int, int]] = queue.Queue()
    for c in todo:
        work.put(c)
    lock = threading.Lock()
    state = {"pages": done_pages, "rows": 0, "chunks": 0}
    errors: list[BaseException] = []
    started = time.monotonic()
    stop = threading.Event()

    lost: list[str] = []

    def worker(conn: Conn) -> None:
        try:
            while not stop.is_set():
                try:
                    first, end = work.get_nowait()
                except queue.Empty:
                    return
                args = {"run_id": run_id, "first_block": first, "end_block": end}
                try:
                    run_locked(
                        conn,
                        partial(_copy_one, statements, args),
                        lock_timeout=lock_timeout, retries=retries, relations=relations, what="copy",
                        attempt_timeout=lock_attempt,
                    )
                except psycopg.OperationalError as exc:
                    if not conn.broken:
                        raise
                    work.put((first, end))  # rolled back with the connection: someone else's now
                    lost.append(str(exc).strip().splitlines()[0] if str(exc).strip() else "connection lost")
                    log.warning("copy: a connection was lost (%s); going on with the others", lost[-1])
                    return
                copied = _rows_of(conn, run_id, first)
                with lock:
                    state["pages"] += min(end, total_pages) - first
                    state["rows"] += copied
                    state["chunks"] += 1
                    snapshot = Progress(state["pages"], total_pages, state["rows"], time.monotonic() - started)
                    n = state["chunks"]
                if on_progress:
                    on_progress(snapshot)
                fault(f"copy:{n}")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(c,), name=f"partguard-copy-{i}", daemon=True)
               for i, c in enumerate(conns, 1)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: let each worker finish its range before the caller goes on
        stop.set()
        for t in threads:
            t.join()
        raise
    if errors:
        exc = errors[0]
        if isinstance(exc, PartguardError):
            raise exc
        raise PartguardError(f"copy failed: {error_line(exc)}") from exc
    if not work.empty():
        raise PartguardError(f"copy: every connection was lost ({lost[-1] if lost else 'no reason given'})")
    return state["rows"]


def _copy_one(statements: Sequence[sql.Composed], args: dict[str, int], conn: Conn) -> None:
    """Quarantine, then copy + journal: the second statement records the first's count."""
    quarantine, copy = statements
    moved = conn.execute(quarantine, args).rowcount
    conn.execute(copy, {**args, "quarantined": moved})


def _rows_of(conn: Conn, run_id: int, first: int) -> int:
    row = conn.execute(
        "SELECT rows_copied + rows_quarantined FROM partguard.fix_chunk WHERE run_id = %s AND first_block = %s",
        (run_id, first),
    ).fetchone()
    return int(row[0]) if row else 0
