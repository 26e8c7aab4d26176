"""Runs the re-cut's steps: one small executor that dispatches on ``Step.kind``.

The only code that opens transactions for a split. Every statement it runs is one of the
step's own (holes filled with literals); what it adds is how: lock_timeout and retries,
one snapshot shared by several connections, parallel index builds, the replay loop, timing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import errors as pgerrors
from psycopg import sql

from .db import Conn, ConnParams, connect, run_locked
from .errors import PartguardError
from .execute import Progress, chunks, fault
from .plan.split import SplitPlan
from .plan.split_steps import REPLAY_SMALL, Step, fill

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What a run did, for the report and the journal's detail."""

    rows_copied: int = 0
    changes_replayed: int = 0
    locks: dict[str, float] = field(default_factory=dict)  # step -> seconds its locks were held
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time


@dataclass
class Executor:
    conn: Conn  # autocommit; holds the table's advisory lock
    params: ConnParams | str  # for the extra connections
    plan: SplitPlan
    relations: Sequence[int]  # oids whose lock holders an error names
    lock_timeout: float = 2.0
    retries: int = 5
    jobs: int = 1
    chunk_pages: int = 2048
    on_progress: Callable[[Progress], None] | None = None
    tally: Tally = field(default_factory=Tally)

    def run(self, step: Step) -> None:
        started = time.monotonic()
        label = step.name or step.kind
        log.info("split %s: %s", self.plan.table, label)
        if step.kind in ("catalog_tx", "swap"):
            self._tx(step.statements, label, lock_from=step.lock_from, inside=f"split:in-{label}")
        elif step.kind == "copy_ranges":
            self._copy(step)
        elif step.kind == "build_index":
            self._parallel(step.groups, label)
            self._tx(step.finish, label)
        elif step.kind == "replay":
            self._replay(step)
        elif step.kind == "cleanup":
            self._autocommit(step.statements)
            self._tx(step.finish, label)
        else:  # pragma: no cover - Kind is a closed Literal
            raise PartguardError(f"unknown step kind {step.kind!r}")
        self.tally.seconds[label] = round(time.monotonic() - started, 3)
        fault(f"split:{label}")

    # --- transactions under lock_timeout --------------------------------------------

    def _tx(
        self,
        stmts: Sequence[sql.Composed],
        what: str,
        *,
        conn: Conn | None = None,
        lock_from: int | None = None,
        inside: str | None = None,
        scan: bool = False,
    ) -> list[Any]:
        """One transaction of ``stmts``; a deadlock (a writer taking the same locks in the
        other order) is retried like a lock timeout: it is the same "not now". With
        ``lock_from``, the time from that statement to the commit is the lock time reported."""
        c = conn or self.conn
        out: list[Any] = []
        began = [0.0]
        split_at = lock_from or 0

        def work(cx: Conn) -> None:
            out.clear()
            if scan:
                cx.execute("SET LOCAL statement_timeout = 0")
            before, after = stmts[:split_at], stmts[split_at:]
            if before:
                cx.execute(sql.SQL(";\n").join(before))
            began[0] = time.monotonic()
            if len(after) == 1:
                cur = cx.execute(after[0])
                if cur.description:
                    out.extend(cur.fetchall())
            elif after:
                # In one round trip: the locks are held for the server's work, not for the
                # client's latency between statements.
                cx.execute(sql.SQL(";\n").join(after))
            if inside:
                fault(inside)

        for attempt in range(self.retries + 1):
            try:
                run_locked(
                    c,
                    work,
                    lock_timeout=self.lock_timeout,
                    retries=self.retries,
                    relations=self.relations,
                    what=f"split {what}",
                )
                break
            except pgerrors.DeadlockDetected:
                if attempt == self.retries:
                    raise
                log.warning("split %s: deadlock with another session, retrying", what)
                time.sleep(0.2 * (attempt + 1))
        if lock_from is not None:
            self.tally.locks[what] = round(time.monotonic() - began[0], 4)
        return out

    def _autocommit(self, stmts: Sequence[sql.Composed]) -> None:
        """Statements that may not run inside a transaction block, each on its own."""
        c = self.conn
        c.execute(
            sql.SQL("SET lock_timeout = {}").format(
                sql.Literal(f"{int(self.lock_timeout * 1000)}ms")
            )
        )
        try:
            for stmt in stmts:
                for attempt in range(self.retries + 1):
                    try:
                        c.execute(stmt)
                        break
                    except pgerrors.LockNotAvailable:
                        if attempt == self.retries:
                            raise
                        time.sleep(0.2 * 2**attempt)
        finally:
            c.execute("RESET lock_timeout")

    # --- copy: one snapshot, several connections --------------------------------------

    def _copy(self, step: Step) -> None:
        for stmt in step.statements:
            self._tx((stmt,), "copy")
        c = self.conn
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            c.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(self.lock_timeout * 1000)}ms")
                )
            )
            c.execute("SET LOCAL statement_timeout = 0")
            snapshot = _scalar(c, "SELECT pg_export_snapshot()") if self.jobs > 1 else ""
            work: list[tuple[sql.Composed, int, int, int]] = []
            total = 0
            for src, (tmpl,) in zip(self.plan.sources, step.groups, strict=True):
                pages = int(
                    _scalar(
                        c,
                        sql.SQL(
                            "SELECT pg_relation_size({}::regclass) / "
                            "current_setting('block_size')::bigint"
                        ).format(sql.Literal(sql.Identifier(src.schema, src.name).as_string(None))),
                    )
                )
                total += pages
                # The last range runs one block past the end: the snapshot's rows are all
                # below the size read after it was taken.
                work += [
                    (tmpl, lo, hi, min(hi, pages) - lo)
                    for lo, hi in chunks(pages, self.chunk_pages)
                ]
            self._copy_ranges(snapshot, work, total)
            for stmt in step.finish:
                c.execute(stmt)
            fault("split:in-copied")
            c.execute("COMMIT")
        except BaseException:
            if not c.closed and not c.broken:
                c.execute("ROLLBACK")
            raise

    def _copy_ranges(
        self, snapshot: str, work: list[tuple[sql.Composed, int, int, int]], total: int
    ) -> None:
        items: queue.Queue[tuple[sql.Composed, int, int, int]] = queue.Queue()
        for w in work:
            items.put(w)
        lock = threading.Lock()
        done = {"pages": 0, "rows": 0}
        started = time.monotonic()

        def drain(c: Conn, stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    tmpl, lo, hi, pages = items.get_nowait()
                except queue.Empty:
                    return
                n = c.execute(fill(tmpl, {"lo": _tid(lo), "hi": _tid(hi)})).rowcount
                with lock:
                    done["pages"] += max(pages, 0)
                    done["rows"] += n
                    pr = Progress(done["pages"], total, done["rows"], time.monotonic() - started)
                if self.on_progress:
                    self.on_progress(pr)
                fault("split:copy")

        def in_snapshot(c: Conn, stop: threading.Event) -> None:
            c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            c.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            c.execute("SET LOCAL statement_timeout = 0")
            drain(c, stop)
            # Before the snapshot's own transaction commits: that one journals the copy done.
            c.execute("ROLLBACK" if stop.is_set() else "COMMIT")

        self._fan_out(self.jobs - 1, drain, in_snapshot, "copy")
        self.tally.rows_copied = done["rows"]

    # --- index builds on several connections -----------------------------------------

    def _parallel(self, groups: Sequence[Sequence[sql.Composed]], what: str) -> None:
        items: queue.Queue[Sequence[sql.Composed]] = queue.Queue()
        for g in groups:
            items.put(g)

        def drain(c: Conn, stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    group = items.get_nowait()
                except queue.Empty:
                    return
                for n, stmt in enumerate(group):
                    self._tx((stmt,), what, conn=c, scan=True)
                    if n == 0:
                        fault("split:index")

        self._fan_out(min(self.jobs, len(groups)) - 1, drain, drain, what)

    def _fan_out(
        self,
        extra: int,
        on_main: Callable[[Conn, threading.Event], None],
        on_worker: Callable[[Conn, threading.Event], None],
        what: str,
    ) -> None:
        """``on_main`` on our connection and ``on_worker`` on ``extra`` more, in threads; the
        first error stops them all (after their current statement) and is raised here."""
        errors: list[BaseException] = []
        stop = threading.Event()

        def guarded(fn: Callable[[Conn, threading.Event], None], c: Conn) -> None:
            try:
                fn(c, stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                stop.set()

        def worker() -> None:
            try:
                c = connect(self.params)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                stop.set()
                return
            try:
                guarded(on_worker, c)
            finally:
                c.close()

        threads = [
            threading.Thread(target=worker, name=f"partguard-split-{i}", daemon=True)
            for i in range(max(0, extra))
        ]
        for t in threads:
            t.start()
        guarded(on_main, self.conn)
        for t in threads:
            t.join()
        if errors:
            first = errors[0]
            if isinstance(first, (PartguardError, KeyboardInterrupt, pgerrors.Error)):
                raise first
            raise PartguardError(f"split {what} failed: {_first_line(first)}") from first

    # --- replay ---------------------------------------------------------------------------

    def _replay(self, step: Step) -> None:
        (call,) = step.statements
        batches = 0
        while True:
            rows = self._tx((call,), "replay")
            n = int(rows[0][0]) if rows else 0
            self.tally.changes_replayed += n
            batches += 1
            if batches == 1:
                fault("split:replay")
            if n < REPLAY_SMALL:
                break
        if step.finish:
            self._tx(step.finish, "replay")


def _tid(block: int) -> sql.Composable:
    return sql.SQL("{}::tid").format(sql.Literal(f"({block},0)"))


def _scalar(conn: Conn, query: Any) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
