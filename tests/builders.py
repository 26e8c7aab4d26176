"""The test builders and oracles live in :mod:`partguard.testing` (shared with ``partguard
demo`` and benchmarks/): import them from there. This re-export keeps ``from builders import
…`` working for tests written before the move; ``Background`` is the loop the split tests
drive their writers and readers with."""

from __future__ import annotations

from typing import Any

import psycopg

from partguard.testing.build import *
from partguard.testing.catalog import *
from partguard.testing.live import *
from partguard.testing.oracles import *

Conn = psycopg.Connection[Any]


class Background:
    """A loop on its own connection in a thread (a writer, a reader): ``step(conn)`` runs
    until ``stop()``; each error is recorded as its first line, never raised."""

    def __init__(self, dsn: str, pause: float = 0.002) -> None:
        import threading

        self.dsn, self.pause = dsn, pause
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def step(self, conn: Conn) -> None:
        raise NotImplementedError

    def start(self, settle: float = 0.0) -> Any:
        import time

        self._thread.start()
        time.sleep(settle)
        return self

    def _loop(self) -> None:
        import time

        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self._stop.is_set():
                try:
                    self.step(c)
                except psycopg.Error as exc:
                    self.errors.append(str(exc).splitlines()[0])
                time.sleep(self.pause)

    def stop(self) -> Any:
        self._stop.set()
        self._thread.join(30)
        return self
