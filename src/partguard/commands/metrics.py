"""``partguard metrics``: the check report as Prometheus samples.

In the incident nobody knew maintenance had been failing for days. These metrics make the
same facts ``check`` finds visible to alerting: a snapshot runs on its own short-lived
connection (no connection held between scrapes: the pool was what ran out), and a database
that cannot be reached is reported as ``partguard_up 0`` rather than as an exporter error.

Served over HTTP, every scraper of a database shares one snapshot (``SnapshotCache``):
cached for ``cache_for`` seconds, refreshed by one thread at a time, so a Prometheus HA
pair (or ten scrapers) costs the database one connection and one catalog read, and a slow
or dead database never makes a scrape outlast its timeout. ``serve_targets`` does that for
a fleet: ``/probe?target=NAME`` per database, ``/metrics`` for the exporter itself.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from ..db import ConnParams, connect
from ..errors import os_failure
from ..inspect.connections import TOP_HOLDERS, Clients
from ..inspect.snapshot import Options
from .check import CheckReport, check

log = logging.getLogger(__name__)

# A scrape must finish well inside Prometheus' scrape timeout, and must never queue behind
# DDL for long: these bound every statement of the snapshot (connecting is bounded by
# db.connect's connect_timeout).
STATEMENT_TIMEOUT = "20s"
LOCK_TIMEOUT = "2s"
CACHE_FOR = 5.0  # --cache-for: scrapers within this many seconds share one snapshot
DEFAULT_WAIT = 30.0  # how long a scrape without Prometheus' timeout header waits for a refresh
STALE_FOR = 60.0  # the longest a previous snapshot stands in for one still running

_TABLE = ("schema", "table")


@dataclass(frozen=True)
class Scrape:
    report: CheckReport | None  # None: the database could not be checked
    duration: float
    error: str | None = None


def scrape(params: ConnParams | str, options: Options, target: str = "") -> Scrape:
    """One snapshot on a fresh connection; any failure becomes ``Scrape(None, …, error)``.
    ``target`` names the database in the log (the fleet exporter's target name)."""
    start = time.monotonic()
    try:
        with connect(params) as conn:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false), "
                "set_config('lock_timeout', %s, false)",
                (STATEMENT_TIMEOUT, LOCK_TIMEOUT),
            )
            report = check(conn, options)
    except Exception as exc:  # noqa: BLE001 - an exporter answers "down", it does not crash
        log.warning(
            "metrics%s: cannot check the database: %s",
            f" {target}" if target else "",
            (str(exc).strip().splitlines() or [type(exc).__name__])[0],
        )
        return Scrape(None, time.monotonic() - start, str(exc))
    return Scrape(report, time.monotonic() - start)


def families(s: Scrape) -> list[Metric]:
    """Prometheus metric families for one scrape (units in names, ``partguard_`` prefix)."""
    up = GaugeMetricFamily(
        "partguard_up",
        "1 if the database could be reached and checked.",
        value=0 if s.report is None else 1,
    )
    took = GaugeMetricFamily(
        "partguard_scrape_duration_seconds",
        "Time taken to snapshot and check the database.",
        value=s.duration,
    )
    out: list[Metric] = [up, took]
    if s.report is None:
        return out
    srv = s.report.server
    out += [
        GaugeMetricFamily(
            "partguard_connections_used", "Client backends connected now.", value=srv.used
        ),
        GaugeMetricFamily(
            "partguard_connections_max", "The server's max_connections.", value=srv.max_connections
        ),
        GaugeMetricFamily(
            "partguard_connections_reserved",
            "Slots ordinary roles cannot use: superuser_reserved_connections "
            "plus reserved_connections (PG 16+).",
            value=srv.superuser_reserved + srv.reserved,
        ),
        GaugeMetricFamily(
            "partguard_in_recovery",
            "1 if the server is a hot standby (in recovery): maintenance and repairs "
            "run on the primary.",
            value=int(srv.in_recovery),
        ),
        GaugeMetricFamily(
            "partguard_orphan_configs",
            "pg_partman configs whose table is gone or not partitioned.",
            value=sum(f.code == "orphan_config" for f in s.report.findings),
        ),
    ]
    if s.report.clients is not None:
        out += connection_families(s.report.clients)
    per_table = {
        "default_rows": "Rows in the DEFAULT partition (estimate, at least those seen).",
        "runway_seconds": "How far ahead of now children exist (negative: ran out that long ago).",
        "gaps": "Holes between consecutive children.",
        "misaligned_children": "Children whose bounds are off the partition grid.",
        "children": "Child partitions, not counting the DEFAULT.",
        "last_maintenance_success_timestamp_seconds": (
            "Unix time of the last successful maintenance (pg_partman 5.1+ or partguard)."
        ),
        "check_status": "Worst check finding: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        **_LEFTOVERS,
    }
    fams = {
        name: GaugeMetricFamily(f"partguard_{name}", doc, labels=_TABLE)
        for name, doc in per_table.items()
    }
    left = _leftovers(s.report)
    for t in s.report.tables:
        labels = [t.schema, t.table]
        values: dict[str, float | None] = {
            # No DEFAULT holds no rows; a DEFAULT that was not read (locked) is unknown.
            "default_rows": t.default_rows if t.has_default else 0,
            "runway_seconds": t.runway_seconds,
            "gaps": t.gaps,
            "misaligned_children": t.misaligned_children,
            "children": t.children,
            "last_maintenance_success_timestamp_seconds": t.last_maintenance.timestamp()
            if t.last_maintenance
            else None,
            "check_status": _STATUS[t.status],
            **left.get(f"{t.schema}.{t.table}", dict.fromkeys(_LEFTOVERS, 0.0)),
        }
        for name, value in values.items():
            if value is not None:  # unknown is absent, never a made-up zero
                fams[name].add_metric(labels, value)
    return out + list(fams.values())


def connection_families(clients: Clients) -> list[Metric]:
    """Who holds the slots: the largest (application_name, usename) pairs, the rest "other"."""
    held = GaugeMetricFamily(
        "partguard_connections",
        "Client backends by application, role and "
        f"state (the {TOP_HOLDERS} largest pairs; the rest as 'other').",
        labels=("application_name", "usename", "state"),
    )
    for (app, user, state), n in sorted(clients.series().items()):
        held.add_metric([app, user, state], n)
    oldest = GaugeMetricFamily(
        "partguard_connections_idle_in_transaction_max_seconds",
        "Longest time a backend has been idle in transaction, by "
        "application and role (absent when none is).",
        labels=("application_name", "usename"),
    )
    for (app, user), age in sorted(clients.oldest_idle_in_transaction().items()):
        oldest.add_metric([app, user], age)
    return [held, oldest]


_STATUS = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}

_LEFTOVERS = {
    "unfinished_fixes": "Interrupted repairs (check's CRITICAL unfinished_fix): fix runs left "
    "unfinished with no fix running, instant's helpers on the DEFAULT, a detached DEFAULT holding rows.",
    "recut_owed": "Re-cuts an auto fix owes (check's WARNING unfinished_fix of kind recut): a wide "
    "child it stopped before re-cutting; every row is visible (partguard fix finishes it).",
    "unfinished_fix_rows": "Rows unfinished repairs keep out of sight of the table (holding table, "
    "detached DEFAULT, rows a run set aside), running ones included.",
    "quarantine_rows": "Rows a fix set aside in partguard.<table>_quarantine (NULL keys, outliers).",
}


def _leftovers(report: CheckReport) -> dict[str, dict[str, float]]:
    """The leftover metrics per table ('schema.table'), from check's findings."""
    out: dict[str, dict[str, float]] = {}
    for f in report.findings:
        if f.table is None or f.code not in ("unfinished_fix", "quarantine_rows"):
            continue
        m = out.setdefault(f.table, dict.fromkeys(_LEFTOVERS, 0.0))
        if f.code == "unfinished_fix":
            # A re-cut an auto fix owes is a WARNING (nothing is out of sight): its own gauge
            # (and alert), counted unless a fix is finishing it now.
            owed = f.detail.get("kind") == "recut" and not f.detail.get("running")
            m["unfinished_fixes"] += 1.0 if f.severity.value == "critical" else 0.0
            m["recut_owed"] += 1.0 if owed else 0.0
            m["unfinished_fix_rows"] += float(f.detail.get("rows_not_visible") or 0)
        else:
            m["quarantine_rows"] += float(f.detail.get("rows") or 0)
    return out


def exposition(params: ConnParams | str, options: Options) -> tuple[bytes, bool]:
    """The text exposition of one scrape, and whether the database was up."""
    s = scrape(params, options)
    return render(families(s)), s.report is not None


def render(metrics: Iterable[Metric]) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(list(metrics)))
    return generate_latest(reg)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


# --- one snapshot for every scraper ------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A finished snapshot and its exposition, rendered once for every scraper."""

    scrape: Scrape
    body: bytes
    at: float  # time.monotonic() when the snapshot finished
    late: bool = False  # a stand-in (up 0) for a snapshot still running: it has no age

    def age(self) -> float:
        return max(0.0, time.monotonic() - self.at)


class SnapshotCache:
    """The latest snapshot of one database, shared by everyone who scrapes it.

    A scrape is answered from the cache while the snapshot is younger than ``cache_for``;
    after that the first scraper starts a refresh in a thread of its own (never two at
    once) and every scraper waits for it until its own deadline. One whose deadline comes
    first gets the previous snapshot while that is younger than ``stale_for``, else
    ``partguard_up 0``; the refresh goes on and serves the next scrape. So a slow or hanging
    database never makes a scrape outlast Prometheus' timeout and never gets a second
    connection from us.
    """

    def __init__(
        self, fetch: Callable[[], Scrape], cache_for: float = CACHE_FOR, name: str = ""
    ) -> None:
        self.fetch, self.cache_for, self.name = fetch, cache_for, name
        self.stale_for = max(STALE_FOR, 3 * cache_for)
        self.snapshots = 0  # refreshes started: each is one connection to the database
        self._cond = threading.Condition()
        self._entry: Entry | None = None
        self._running_since: float | None = None

    @property
    def last(self) -> Entry | None:
        """The newest finished snapshot, without refreshing (the exporter's own metrics)."""
        with self._cond:
            return self._entry

    def get(self, wait: float) -> Entry:
        """A snapshot no older than ``cache_for`` if one can be had within ``wait`` seconds."""
        start = time.monotonic()
        with self._cond:
            entry = self._entry
            if entry is not None and start - entry.at < self.cache_for:
                return entry
            if self._running_since is None:
                self._running_since = start
                self.snapshots += 1
                threading.Thread(
                    target=self._refresh,
                    daemon=True,
                    name=f"partguard-snapshot-{self.name or 'db'}",
                ).start()
            deadline = start + wait
            while self._entry is entry and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            if self._entry is not None and self._entry is not entry:
                return self._entry
            if entry is not None and entry.age() < self.stale_for:
                return entry  # the refresh is late: the previous one, its age exported
            running = time.monotonic() - (self._running_since or start)
        msg = f"the snapshot has been running for {running:.1f}s"
        log.warning(
            "metrics%s: %s; answering partguard_up 0", f" {self.name}" if self.name else "", msg
        )
        late = Scrape(None, running, msg)
        return Entry(late, render(families(late)), time.monotonic(), late=True)

    def _refresh(self) -> None:
        start = time.monotonic()
        try:
            s = self.fetch()
            body = render(families(s))
        except Exception as exc:  # noqa: BLE001 - the cache must always get an answer
            log.warning("metrics: snapshot failed: %s", exc)
            s = Scrape(None, time.monotonic() - start, str(exc))
            body = render(families(s))
        with self._cond:
            self._entry = Entry(s, body, time.monotonic())
            self._running_since = None
            self._cond.notify_all()


def cache_families(cache: SnapshotCache, entry: Entry) -> list[Metric]:
    """How old the served snapshot is and how many were taken: next to the database's own."""
    out: list[Metric] = [
        CounterMetricFamily(
            "partguard_snapshots",
            "Snapshots taken of this database; each is one connection and one catalog read.",
            value=cache.snapshots,
        ),
    ]
    if not entry.late:
        out.append(
            GaugeMetricFamily(
                "partguard_snapshot_age_seconds",
                "Seconds since the snapshot served here finished (scrapers share it).",
                value=entry.age(),
            )
        )
    return out


def target_families(caches: Mapping[str, SnapshotCache]) -> list[Metric]:
    """The fleet exporter's view of its targets (last snapshot, no refresh), by ``target``."""
    up = GaugeMetricFamily(
        "partguard_target_up",
        "1 if the target's last snapshot reached and checked its database.",
        labels=["target"],
    )
    took = GaugeMetricFamily(
        "partguard_target_scrape_duration_seconds",
        "Time the target's last snapshot took.",
        labels=["target"],
    )
    age = GaugeMetricFamily(
        "partguard_target_snapshot_age_seconds",
        "Seconds since the target's last snapshot finished.",
        labels=["target"],
    )
    count = CounterMetricFamily(
        "partguard_target_snapshots", "Snapshots taken of the target.", labels=["target"]
    )
    for name, cache in caches.items():
        count.add_metric([name], cache.snapshots)
        entry = cache.last
        if entry is not None:  # never probed: unknown, so absent
            up.add_metric([name], 0 if entry.scrape.report is None else 1)
            took.add_metric([name], entry.scrape.duration)
            age.add_metric([name], entry.age())
    return [up, took, age, count]


# --- HTTP ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One database the fleet exporter probes, by the name scrapers ask for."""

    name: str
    params: ConnParams | str
    options: Options = field(default_factory=Options)


def cache_for_target(target: Target, cache_for: float) -> SnapshotCache:
    return SnapshotCache(
        lambda: scrape(target.params, target.options, target.name), cache_for, target.name
    )


def _process_registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def scrape_wait(environ: Mapping[str, Any]) -> float:
    """How long this scrape may wait for a refresh: Prometheus' own timeout minus a margin
    for rendering and the network (``X-Prometheus-Scrape-Timeout-Seconds``)."""
    try:
        timeout = float(environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS", ""))
    except ValueError:
        return DEFAULT_WAIT
    if not 0 < timeout < 3600:  # nan, inf, nonsense: as without the header
        return DEFAULT_WAIT
    return max(0.1, timeout - min(1.0, timeout * 0.1))


class App:
    """The WSGI application: ``/metrics`` always; ``/probe?target=NAME`` with targets.

    With ``single`` (``-d``), ``/metrics`` is that database's metrics plus the process's;
    with ``targets`` (``--config``), ``/metrics`` is the exporter's own (process, and each
    target's last up/duration) and ``/probe`` serves one target, postgres_exporter-style.
    """

    def __init__(
        self,
        single: SnapshotCache | None = None,
        targets: Mapping[str, SnapshotCache] | None = None,
    ) -> None:
        self.single, self.targets = single, dict(targets or {})
        self.process = _process_registry()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"use GET\n", "text/plain"
        elif path == "/metrics":
            status, body, ctype = "200 OK", self.metrics(environ), CONTENT_TYPE_PLAIN_0_0_4
        elif path == "/probe" and self.targets:
            status, body, ctype = self.probe(environ)
        elif path == "/":
            status, body, ctype = "200 OK", self.index(), "text/plain; charset=utf-8"
        else:
            status, body, ctype = "404 Not Found", f"no such page: {path}\n".encode(), "text/plain"
        headers = [("Content-Type", ctype)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "") and len(body) > 1024:
            body = gzip.compress(body, compresslevel=5)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    def metrics(self, environ: Mapping[str, Any]) -> bytes:
        own = generate_latest(self.process)
        if self.single is not None:
            entry = self.single.get(scrape_wait(environ))
            return entry.body + render(cache_families(self.single, entry)) + own
        return render(target_families(self.targets)) + own

    def probe(self, environ: Mapping[str, Any]) -> tuple[str, bytes, str]:
        names = parse_qs(environ.get("QUERY_STRING", "")).get("target", [])
        if len(names) != 1 or names[0] not in self.targets:
            known = ", ".join(sorted(self.targets))
            why = "missing ?target=NAME" if not names else f"unknown target {names[0]!r}"
            return "400 Bad Request", f"{why}; targets: {known}\n".encode(), "text/plain"
        cache = self.targets[names[0]]
        entry = cache.get(scrape_wait(environ))
        return "200 OK", entry.body + render(cache_families(cache, entry)), CONTENT_TYPE_PLAIN_0_0_4

    def index(self) -> bytes:
        lines = ["partguard metrics", "", "/metrics"]
        lines += [f"/probe?target={name}" for name in sorted(self.targets)]
        return ("\n".join(lines) + "\n").encode()


def write_textfile(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` atomically, so node_exporter never reads a half-written file.

    The temporary file lives in the same directory (``os.replace`` is atomic only within
    a file system) and is named without ``.prom``, so the textfile collector ignores it.
    """
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise os_failure(exc, f"cannot write {target} (in {target.parent})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; node_exporter may run as another user
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_failure(exc, f"cannot write {target}") from None
        raise


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape still waiting must not hold up the exit
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


def serve(
    params: ConnParams | str,
    options: Options,
    host: str,
    port: int,
    *,
    cache_for: float = CACHE_FOR,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve one database's ``/metrics`` on host:port from a daemon thread (port 0: any
    free port); scrapers within ``cache_for`` seconds share one snapshot."""
    cache = SnapshotCache(lambda: scrape(params, options), cache_for)
    return _start(App(single=cache), host, port)


def serve_targets(
    targets: Sequence[Target],
    host: str,
    port: int,
    *,
    cache_for: float = CACHE_FOR,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/probe?target=NAME`` for each target and ``/metrics`` for the exporter."""
    caches = {t.name: cache_for_target(t, cache_for) for t in targets}
    return _start(App(targets=caches), host, port)


def _start(app: App, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    try:
        family = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
        server_class = type("Server", (_Server,), {"address_family": family})
        server: WSGIServer = make_server(
            host, port, app, server_class=server_class, handler_class=_QuietHandler
        )
    except OSError as exc:  # a busy port, an address not ours, a name that does not resolve
        raise os_failure(exc, f"cannot listen on {host}:{port}") from None
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="partguard-http")
    thread.start()
    log.info("metrics: serving on %s:%d", host, server.server_port)
    return server, thread
