"""Live traffic while partguard works: a writer that never stops inserting and a reader
that keeps counting, each on its own connection and thread.

Every row the writer commits carries a unique id, recorded per table, so an oracle can
account for each one afterwards (:func:`partguard.testing.oracles.assert_exactly_once`).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]
# One insert: (table it writes, statement, parameters).
Insert = tuple[str, sql.SQL | sql.Composed, Sequence[Any]]


@dataclass
class Writer:
    """Every ``period`` seconds, takes the next id and runs the inserts ``inserts(tick, id)``
    gives, timing each one (an insert waits for any lock on its table). Records what was
    committed (``committed``: every id; ``committed_to``: per table), what failed, and the
    latency of every insert (``samples``: (monotonic start, seconds)). A broken connection
    is replaced."""

    dsn: str
    inserts: Callable[[int, int], Sequence[Insert]]
    next_id: int = 10_000_000
    period: float = 0.002
    warmup: float = 0.2  # start() waits this long: a few rows before the work starts
    linger: float = 0.0  # stop() waits this long first: a few rows after it ends
    application_name: str = "partguard-test-writer"
    committed: set[int] = field(default_factory=set)
    committed_to: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)
    max_latency: float = 0.0
    attempts: int = 0
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._conn = self._connect()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        time.sleep(self.warmup)
        return self

    def _connect(self) -> Conn:
        return psycopg.connect(self.dsn, autocommit=True, application_name=self.application_name)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            tick += 1
            self.next_id += 1
            rid = self.next_id
            for table, stmt, params in self.inserts(tick, rid):
                self.attempts += 1
                t0 = time.monotonic()
                try:
                    self._conn.execute(stmt, params)
                    self.committed.add(rid)
                    self.committed_to[table].add(rid)
                except psycopg.Error as exc:
                    self.errors.append((str(exc).strip().splitlines() or ["?"])[0])
                    if self._conn.broken:
                        self._conn = self._connect()
                self.samples.append((t0, time.monotonic() - t0))
                self.max_latency = max(self.max_latency, self.samples[-1][1])
            time.sleep(self.period)

    def stop(self) -> Writer:
        time.sleep(self.linger)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._conn.close()
        return self


OUTAGE_MOMENT = "now() - interval '2 days' - (random() * interval '1 day')"


def fixes_writer(
    dsn: str, table: str = "public.fixes", when: tuple[str, str] = (OUTAGE_MOMENT, "now()")
) -> Writer:
    """The writer of :func:`partguard.testing.build.live_incident`'s table: a row every
    ~2 ms, its key in turn each of the SQL expressions ``when`` (a moment of the outage
    days, now)."""
    stmts = [
        sql.SQL("INSERT INTO {} (id, received_at, device_id, v) VALUES (%s, {}, %s, %s)").format(
            sql.Identifier(*table.split(".")), sql.SQL(w)
        )
        for w in when
    ]

    def inserts(tick: int, rid: int) -> list[Insert]:
        return [(table, stmts[tick % 2], (rid, rid % 50, tick))]

    return Writer(dsn, inserts)


@dataclass
class Reader:
    """Runs ``query`` (a count) over and over; records every answer that is not ``expected``."""

    dsn: str
    expected: int
    query: sql.SQL | sql.Composed
    params: Sequence[Any] = ()
    shortfalls: list[int] = field(default_factory=list)
    reads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                row = c.execute(self.query, self.params).fetchone()
                n = int(row[0]) if row else -1
                self.reads += 1
                if n != self.expected:
                    self.shortfalls.append(n)
                time.sleep(0.001)

    def stop(self) -> Reader:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        return self
