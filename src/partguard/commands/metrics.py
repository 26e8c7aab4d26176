"""``partguard metrics``: the check report as Prometheus samples.

In the incident nobody knew maintenance had been failing for days. These metrics make the
same facts ``check`` finds visible to alerting: each scrape takes a fresh snapshot on its
own short-lived connection (no connection held between scrapes: the pool was what ran
out), and a database that cannot be reached is reported as ``partguard_up 0`` rather
than as an exporter error.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..db import ConnParams, connect
from ..errors import os_failure
from ..guards import warn_if_pooled
from ..inspect.connections import TOP_HOLDERS, Clients
from ..inspect.snapshot import Options
from .check import CheckReport, check

log = logging.getLogger(__name__)

# A scrape must finish well inside Prometheus' scrape timeout, and must never queue behind
# DDL for long: these bound every statement of the snapshot (connecting is bounded by
# db.connect's connect_timeout).
STATEMENT_TIMEOUT = "20s"
LOCK_TIMEOUT = "2s"

_TABLE = ("schema", "table")


@dataclass(frozen=True)
class Scrape:
    report: CheckReport | None  # None: the database could not be checked
    duration: float
    error: str | None = None


def scrape(params: ConnParams | str, options: Options) -> Scrape:
    """One snapshot on a fresh connection; any failure becomes ``Scrape(None, …, error)``."""
    start = time.monotonic()
    try:
        with connect(params) as conn:
            conn.execute("SELECT set_config('statement_timeout', %s, false), "
                         "set_config('lock_timeout', %s, false)", (STATEMENT_TIMEOUT, LOCK_TIMEOUT))
            warn_if_pooled(conn, params, "metrics")
            report = check(conn, options)
    except Exception as exc:  # noqa: BLE001 - an exporter answers "down", it does not crash
        log.warning("metrics: cannot check the database: %s", str(exc).strip().splitlines()[0])
        return Scrape(None, time.monotonic() - start, str(exc))
    return Scrape(report, time.monotonic() - start)


def families(s: Scrape) -> list[Metric]:
    """Prometheus metric families for one scrape (units in names, ``partguard_`` prefix)."""
    up = GaugeMetricFamily("partguard_up", "1 if the database could be reached and checked.",
                           value=0 if s.report is None else 1)
    took = GaugeMetricFamily("partguard_scrape_duration_seconds",
                             "Time taken to snapshot and check the database.", value=s.duration)
    out: list[Metric] = [up, took]
    if s.report is None:
        return out
    srv = s.report.server
    out += [
        GaugeMetricFamily("partguard_connections_used", "Client backends connected now.",
                          value=srv.used),
        GaugeMetricFamily("partguard_connections_max", "The server's max_connections.",
                          value=srv.max_connections),
        GaugeMetricFamily("partguard_connections_reserved",
                          "Slots ordinary roles cannot use: superuser_reserved_connections "
                          "plus reserved_connections (PG 16+).",
                          value=srv.superuser_reserved + srv.reserved),
        GaugeMetricFamily("partguard_in_recovery",
                          "1 if the server is a hot standby (in recovery): maintenance and repairs "
                          "run on the primary.", value=int(srv.in_recovery)),
        GaugeMetricFamily("partguard_orphan_configs",
                          "pg_partman configs whose table is gone or not partitioned.",
                          value=sum(f.code == "orphan_config" for f in s.report.findings)),
    ]
    if s.report.clients is not None:
        out += connection_families(s.report.clients)
    per_table = {
        "default_rows": "Rows in the DEFAULT partition (estimate, at least those seen).",
        "runway_seconds": "How far ahead of now children exist (negative: ran out that long ago).",
        "gaps": "Holes between consecutive children.",
        "misaligned_children": "Children whose bounds are off the partition grid.",
        "children": "Child partitions, not counting the DEFAULT.",
        "last_maintenance_success_timestamp_seconds":
            "Unix time of the last successful maintenance (pg_partman 5.1+ or partguard).",
        "check_status": "Worst check finding: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        **_LEFTOVERS,
    }
    fams = {name: GaugeMetricFamily(f"partguard_{name}", doc, labels=_TABLE)
            for name, doc in per_table.items()}
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
            "last_maintenance_success_timestamp_seconds":
                t.last_maintenance.timestamp() if t.last_maintenance else None,
            "check_status": _STATUS[t.status],
            **left.get(f"{t.schema}.{t.table}", dict.fromkeys(_LEFTOVERS, 0.0)),
        }
        for name, value in values.items():
            if value is not None:  # unknown is absent, never a made-up zero
                fams[name].add_metric(labels, value)
    return out + list(fams.values())


def connection_families(clients: Clients) -> list[Metric]:
    """Who holds the slots: the largest (application_name, usename) pairs, the rest "other"."""
    held = GaugeMetricFamily("partguard_connections", "Client backends by application, role and "
                             f"state (the {TOP_HOLDERS} largest pairs; the rest as 'other').",
                             labels=("application_name", "usename", "state"))
    for (app, user, state), n in sorted(clients.series().items()):
        held.add_metric([app, user, state], n)
    oldest = GaugeMetricFamily("partguard_connections_idle_in_transaction_max_seconds",
                               "Longest time a backend has been idle in transaction, by "
                               "application and role (absent when none is).",
                               labels=("application_name", "usename"))
    for (app, user), age in sorted(clients.oldest_idle_in_transaction().items()):
        oldest.add_metric([app, user], age)
    return [held, oldest]


_STATUS = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}

_LEFTOVERS = {
    "unfinished_fixes": "Interrupted repairs (check's CRITICAL unfinished_fix): fix runs left unfinished "
                        "with no fix running, instant's helpers on the DEFAULT, a detached DEFAULT holding rows.",
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
            m["unfinished_fixes"] += 1.0 if f.severity.value == "critical" else 0.0
            m["unfinished_fix_rows"] += float(f.detail.get("rows_not_visible") or 0)
        else:
            m["quarantine_rows"] += float(f.detail.get("rows") or 0)
    return out


class CheckCollector(Collector):
    """A custom collector: every ``collect`` (one per scrape) runs a fresh check."""

    def __init__(self, params: ConnParams | str, options: Options) -> None:
        self.params, self.options = params, options

    def collect(self) -> Iterator[Metric]:
        yield from families(scrape(self.params, self.options))

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not connect to the database


def registry_for(params: ConnParams | str, options: Options) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(CheckCollector(params, options))
    return reg


def exposition(params: ConnParams | str, options: Options) -> tuple[bytes, bool]:
    """The text exposition of one scrape, and whether the database was up."""
    s = scrape(params, options)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(families(s)))
    return generate_latest(reg), s.report is not None


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


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


def serve(
    params: ConnParams | str, options: Options, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on host:port from a daemon thread (port 0: any free port)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry_for(params, options))
    except OSError as exc:
        raise os_failure(exc, f"cannot listen on {host}:{port}") from None
    log.info("metrics: serving on %s:%d", host, server.server_port)
    return server, thread
