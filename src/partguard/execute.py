"""The only code that opens transactions for a repair: it runs a plan's steps
(plan/steps.py) by their kind — short catalog transactions under lock_timeout, scans, the
journalled block-range copy on several connections, the journal check, partman's
maintenance — and reports progress. It holds the per-table advisory lock too.
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
from .db import (
    LOCK_ATTEMPT,
    Conn,
    ConnParams,
    advisory_lock,
    connect_retrying,
    error_line,
    one_line,
    run_locked,
)
from .errors import ConnectionFailed, PartguardError, VerificationFailed
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
        self, step: Step, *, check: Callable[[Conn, list[Any]], None] | None = None
    ) -> list[Any]:
        """Run one step's statements in one transaction and record it done in the same
        transaction, so the journal never claims a step that rolled back. ``check`` sees
        the rows the statements returned before that record: raising stops the run there."""
        result: list[Any] = []
        attempt_started = [0.0]

        def work(conn: Conn) -> None:
            result.clear()
            # Locks are taken from here on; earlier tries and back-off sleeps held none.
            attempt_started[0] = time.monotonic()
            if step.kind == "scan":
                # A long VALIDATE is fine (it blocks nobody); a server statement_timeout is not.
                conn.execute("SET LOCAL statement_timeout = 0")
            for stmt in step.statements:
                cur = conn.execute(stmt)
                if cur.description:
                    result.extend(cur.fetchall())
            if check is not None:
                check(conn, result)
            fault(step.name)
            if step.journalled:
                journal.set_state(conn, self.run_id, step.name)

        run_locked(
            self.conn,
            work,
            lock_timeout=self.lock_timeout,
            retries=self.retries,
            relations=self.relations,
            what=step.name,
            attempt_timeout=self.lock_attempt,
        )
        if step.blocks_application:
            self.timings.locked[step.name] = time.monotonic() - attempt_started[0]
        return result


@dataclass(frozen=True)
class CopyJob:
    """What a copy_ranges step needs besides its statements."""

    conns: Sequence[Conn]  # the main connection first; each one is a worker
    schema: str
    holding: str
    chunk_pages: int
    on_progress: Callable[[Progress], None] | None = None


@dataclass
class PlanResult:
    rows: dict[str, list[Any]] = field(default_factory=dict)  # what each step's statements returned
    rows_copied_now: int = 0  # copy_ranges: rows moved (copied or quarantined) by this invocation
    copy_s: float = 0.0
    maintenance: str | None = None  # 'ok' or 'failed: …'


def run_plan(
    runner: Runner,
    steps: Sequence[Step],
    *,
    copy: CopyJob | None = None,
    failed_set_marker: str = "",
) -> PlanResult:
    """Run ``steps`` in order, each as its kind says (plan/steps.py ``StepKind``)."""
    out = PlanResult()
    for step in steps:
        log.info("fix run %d: %s (%s)", runner.run_id, step.name, step.kind)
        if step.kind == "copy_ranges":
            assert copy is not None, "a copy_ranges step needs a CopyJob"
            out.rows_copied_now, out.copy_s = _copy_ranges(runner, step, copy)
        elif step.kind == "check":
            out.rows[step.name] = runner.step(
                step, check=partial(_journal_accounts_for, runner.run_id, step)
            )
        elif step.kind == "maintenance":
            out.maintenance = _maintenance(runner, step, failed_set_marker)
        else:
            if step.name == "drop":
                fault("before-drop")
            out.rows[step.name] = runner.step(step)
    return out


def _journal_accounts_for(run_id: int, step: Step, conn: Conn, rows: list[Any]) -> None:
    """verify: every row of the holding table is accounted for by a committed range, or
    we stop with the holding table intact."""
    copied, quarantined, _ = journal.chunk_totals(conn, run_id)
    counted = int(rows[0][0]) if rows else 0
    if counted != copied + quarantined:
        raise VerificationFailed(
            f"{step.name}: the holding table holds {counted} rows but the journal accounts for "
            f"{copied} copied + {quarantined} quarantined; nothing dropped, rerun to resume"
        )


def _copy_ranges(runner: Runner, step: Step, job: CopyJob) -> tuple[int, float]:
    """The ranges not yet journalled; returns the rows moved now and the time it took."""
    from .inspect.catalog import relation_pages

    total = relation_pages(runner.conn, job.schema, job.holding)
    done = journal.done_chunks(runner.conn, runner.run_id)
    all_chunks = chunks(total, job.chunk_pages)
    todo = [c for c in all_chunks if c[0] not in done]
    done_pages = sum(min(e, total) - f for f, e in all_chunks if f in done)
    started = time.monotonic()
    rows = copy_chunks(
        job.conns,
        step.statements,
        runner.run_id,
        todo,
        total,
        lock_timeout=runner.lock_timeout,
        retries=runner.retries,
        relations=runner.relations,
        lock_attempt=runner.lock_attempt,
        on_progress=job.on_progress,
        done_pages=done_pages,
    )
    took = time.monotonic() - started
    journal.set_state(runner.conn, runner.run_id, step.name)
    return rows, took


@contextmanager
def skipped_sets(conn: Conn, marker: str) -> Iterator[list[str]]:
    """Collect, on one line each, the WARNINGs partman 5.5 raises instead of failing for a
    partition set it skipped (``marker`` in their text) while the block runs."""
    skipped: list[str] = []

    def watch(d: Any) -> None:
        text = d.message_primary or ""
        if marker and marker in text:
            skipped.append(one_line(text))

    conn.add_notice_handler(watch)
    try:
        yield skipped
    finally:
        conn.remove_notice_handler(watch)


def _maintenance(runner: Runner, step: Step, failed_set_marker: str) -> str:
    """partman's maintenance for this table; a failure is reported, not fatal: the rows
    are already safe, and ``maintain`` will say it again loudly. partman 5.5 reports a set
    it skipped only as a WARNING (``failed_set_marker`` in its text)."""
    with skipped_sets(runner.conn, failed_set_marker) as skipped:
        try:
            runner.step(step)
        except Exception as exc:  # noqa: BLE001 - surfaced in the outcome
            log.warning("partman maintenance after fix failed: %s", error_line(exc))
            journal.set_state(runner.conn, runner.run_id, step.name)
            return f"failed: {error_line(exc)}"
    if skipped:
        log.warning("partman maintenance after fix failed: %s", skipped[0])
        return f"failed: {skipped[0]}"
    return "ok"


def partman_maintenance(
    conn: Conn,
    stmt: sql.Composed,
    zone: str,
    failed_set_marker: str,
    *,
    lock_timeout: float,
    retries: int,
    lock_attempt: float = LOCK_ATTEMPT,
) -> str:
    """One pg_partman maintenance call outside a fix run (after a re-cut), in the grid's
    zone: "ok", or "failed: <one line>" for an error or a skipped set."""

    def work(c: Conn) -> None:
        c.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(zone)))
        c.execute(stmt)

    with skipped_sets(conn, failed_set_marker) as skipped:
        try:
            run_locked(
                conn,
                work,
                lock_timeout=lock_timeout,
                retries=retries,
                what="partman maintenance",
                attempt_timeout=lock_attempt,
            )
        except (PartguardError, psycopg.Error) as exc:
            return f"failed: {error_line(exc)}"
    return f"failed: {skipped[0]}" if skipped else "ok"


def take_locks(
    conn: Conn,
    rels: Sequence[sql.Composable],
    *,
    lock_timeout: float,
    retries: int,
    relations: Sequence[int],
    what: str,
) -> None:
    """Take, and let go at once, ACCESS EXCLUSIVE on ``rels`` (ONLY each): proof, before a
    run's first commit, that its swap's locks can be had."""
    stmt = sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(sql.SQL("ONLY {}").format(r) for r in rels)
    )
    run_locked(
        conn,
        lambda c: c.execute(stmt),
        lock_timeout=lock_timeout,
        retries=retries,
        relations=relations,
        what=what,
    )


@contextmanager
def table_lock(conn: Conn, key: int, busy: Callable[[], PartguardError]) -> Iterator[None]:
    """The per-table advisory lock a fix holds for its whole run; ``busy()`` is raised
    when another session has it."""
    with advisory_lock(conn, key) as got:
        if not got:
            raise busy()
        yield


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


def open_workers(
    params: ConnParams | str, jobs: int, *, retry_for: float
) -> tuple[list[Conn], str | None]:
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
            log.warning(
                "copy: connection %d of %d refused, copying on %d: %s",
                i,
                jobs,
                len(conns) + 1,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
            return conns, str(exc).strip().splitlines()[0] if str(exc).strip() else type(
                exc
            ).__name__
        conns.append(conn)
    return conns, None


def _worker_conninfo(params: ConnParams | str, i: int) -> str:
    """Each copy connection says what it is in pg_stat_activity."""
    name = f"partguard copy {i}"
    return (
        params.conninfo(name)
        if isinstance(params, ConnParams)
        else make_conninfo(params, application_name=name)
    )


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
                args = {"first_block": first, "end_block": end}
                try:
                    copied = run_locked(
                        conn,
                        partial(_copy_one, statements, run_id, args),
                        lock_timeout=lock_timeout,
                        retries=retries,
                        relations=relations,
                        what="copy",
                        attempt_timeout=lock_attempt,
                    )
                except psycopg.OperationalError as exc:
                    if not conn.broken:
                        raise
                    work.put((first, end))  # rolled back with the connection: someone else's now
                    lost.append(
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "connection lost"
                    )
                    log.warning(
                        "copy: a connection was lost (%s); going on with the others", lost[-1]
                    )
                    return
                with lock:
                    state["pages"] += min(end, total_pages) - first
                    state["rows"] += copied
                    state["chunks"] += 1
                    snapshot = Progress(
                        state["pages"], total_pages, state["rows"], time.monotonic() - started
                    )
                    n = state["chunks"]
                if on_progress:
                    on_progress(snapshot)
                fault(f"copy:{n}")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=worker, args=(c,), name=f"partguard-copy-{i}", daemon=True)
        for i, c in enumerate(conns, 1)
    ]
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
        raise PartguardError(
            f"copy: every connection was lost ({lost[-1] if lost else 'no reason given'})"
        )
    return state["rows"]


def _copy_one(
    statements: Sequence[sql.Composed], run_id: int, args: dict[str, int], conn: Conn
) -> int:
    """Quarantine, then copy, then the range's journal row, in the caller's transaction.
    Returns the rows it moved (copied + quarantined): counted here, since a query after the
    commit could meet a lost connection outside the worker's handling of one."""
    quarantine, copy = statements
    moved = conn.execute(quarantine, args).rowcount
    per_child = {str(child): int(n) for child, n in conn.execute(copy, args).fetchall()}
    journal.record_chunk(conn, run_id, args["first_block"], args["end_block"], per_child, moved)
    return sum(per_child.values()) + moved
