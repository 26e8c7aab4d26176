"""``partguard metrics`` on a real cluster: scraped over HTTP, written for node_exporter, and
the shipped alert rules and dashboard checked against the metrics actually exported."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from partguard.cli import main
from partguard.sandbox import Sandbox
from partguard.testing.build import create_parent, drop_children
from partguard.testing.catalog import midnight, utc_today

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """{(name, sorted labels): value} from an exposition, parsed by prometheus_client."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def table_value(s: Samples, name: str, schema: str, table: str) -> float:
    return s[(name, (("schema", schema), ("table", table)))]


class Exporter:
    """``partguard metrics --listen 127.0.0.1:0`` in a child process, as systemd would run it."""

    def __init__(self, dsn: str, *extra: str) -> None:
        code = "import sys; from partguard.cli import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "metrics", "-d", dsn, "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", line)
        assert m, f"no listen address in {line!r}"
        self.url = m.group(1)

    def scrape(self) -> Samples:
        with urllib.request.urlopen(self.url, timeout=30) as resp:
            assert resp.status == 200
            return samples(resp.read().decode())

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def exporter() -> Iterator[Callable[..., Exporter]]:
    started: list[Exporter] = []

    def start(dsn: str, *extra: str) -> Exporter:
        started.append(Exporter(dsn, *extra))
        return started[-1]

    yield start
    for e in started:
        e.stop()


def incident(conn: Any) -> datetime:
    """app.events with children only up to 2 days ago and a day of rows in the DEFAULT."""
    conn.execute("CREATE SCHEMA app")
    conn.execute(
        "CREATE TABLE app.events (ts timestamptz NOT NULL, v text) PARTITION BY RANGE (ts)"
    )
    conn.execute("CREATE INDEX ON app.events (ts)")
    today = utc_today(conn)
    create_parent(conn, "app.events", "ts", "1 day", start=str(today - timedelta(days=5)))
    edge = midnight(today - timedelta(days=2))
    drop_children(conn, "app.events", lambda k: k.lower >= edge)
    conn.execute(
        "INSERT INTO app.events SELECT %s + g * interval '1 minute', 'x' "
        "FROM generate_series(0, 1439) g",
        (edge,),
    )
    conn.execute("ANALYZE app.events")
    return edge


def test_listen_serves_metrics_that_match_the_database(
    dsn: str, conn: Any, partman: str, exporter: Callable[..., Exporter]
) -> None:
    edge = incident(conn)
    e = exporter(dsn, "--cache-for", "0")
    s = e.scrape()
    assert s[("partguard_up", ())] == 1
    assert 0 < s[("partguard_scrape_duration_seconds", ())] < 30
    db = conn.execute(
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "(SELECT count(*) FROM app.events_default), "
        "(SELECT count(*) FROM pg_inherits WHERE inhparent = 'app.events'::regclass) - 1, "
        "extract(epoch FROM now())"
    ).fetchone()
    max_conn, su_reserved, default_rows, children, now = db
    assert s[("partguard_connections_max", ())] == max_conn
    # PG 15 has no reserved_connections: only the superuser slots are reserved.
    assert s[("partguard_connections_reserved", ())] == su_reserved
    assert s[("partguard_connections_used", ())] >= 2  # this test's session and the scraper's
    assert table_value(s, "partguard_default_rows", "app", "events") == default_rows == 1440
    assert table_value(s, "partguard_children", "app", "events") == children == 3
    assert table_value(s, "partguard_gaps", "app", "events") == 0
    assert table_value(s, "partguard_misaligned_children", "app", "events") == 0
    assert table_value(s, "partguard_check_status", "app", "events") == 2
    runway = table_value(s, "partguard_runway_seconds", "app", "events")
    assert runway == pytest.approx(edge.timestamp() - float(now), abs=30)
    # Without a cache each scrape is a fresh snapshot: the new child shows up in the next one.
    conn.execute(
        "CREATE TABLE app.events_later PARTITION OF app.events "
        "FOR VALUES FROM ('2100-01-01 00:00+00') TO ('2100-01-02 00:00+00')"
    )
    assert table_value(e.scrape(), "partguard_children", "app", "events") == 4
    rc, err = e.stop()
    assert rc == 0 and "Traceback" not in err


def test_last_maintenance_is_exported_from_partguards_journal(
    dsn: str, conn: Any, partman: str
) -> None:
    """partman 4.7 keeps no record of its runs: partguard maintain's journal provides it."""
    from partguard import journal

    incident(conn)
    journal.ensure_schema(conn)
    run_id = conn.execute(
        "INSERT INTO partguard.maintenance_run (status) VALUES ('ok') RETURNING run_id"
    ).fetchone()[0]
    done = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    conn.execute(
        "INSERT INTO partguard.maintenance_table "
        "(run_id, table_name, status, finished_at) VALUES (%s, 'app.events', 'ok', %s)",
        (run_id, done),
    )
    text = _stdout_of_main(["metrics", "-d", dsn])
    s = samples(text)
    ts = table_value(s, "partguard_last_maintenance_success_timestamp_seconds", "app", "events")
    assert ts == done.timestamp()


def _stdout_of_main(argv: list[str]) -> str:
    # capsys would also work; a subprocess keeps stdout exactly what a cron job would get.
    code = "import sys; from partguard.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def test_database_down_is_up_zero_and_the_exporter_keeps_serving(
    make_cluster: Callable[..., Sandbox], exporter: Callable[..., Exporter]
) -> None:
    sb = make_cluster()
    e = exporter(sb.dsn(), "--cache-for", "0")
    assert e.scrape()[("partguard_up", ())] == 1
    sb.stop()
    for _ in range(2):  # and again: the server survived the failed scrape
        s = e.scrape()
        assert s[("partguard_up", ())] == 0
        assert ("partguard_connections_used", ()) not in s  # unknown is absent, not zero
    rc, err = e.stop()
    assert rc == 0 and "Traceback" not in err and "cannot check the database" in err


def test_textfile_is_replaced_atomically(
    dsn: str, conn: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn.execute("CREATE TABLE public.t (ts timestamptz) PARTITION BY RANGE (ts)")
    conn.execute(
        "CREATE TABLE public.t_1 PARTITION OF public.t "
        "FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2026-01-02 00:00+00')"
    )
    path = tmp_path / "partguard.prom"
    path.write_text("old contents\n")
    old_inode = path.stat().st_ino
    with path.open() as reader:  # what node_exporter has open while we write
        rc = main(["metrics", "-d", dsn, "--textfile", str(path)])
        assert rc == 0
        assert reader.read() == "old contents\n"  # the old file was never written in place
    assert path.stat().st_ino != old_inode  # a new file was renamed over it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partguard.prom"]  # no temp left
    assert path.stat().st_mode & 0o777 == 0o644
    s = samples(path.read_text())
    assert s[("partguard_up", ())] == 1
    assert table_value(s, "partguard_children", "public", "t") == 1
    assert capsys.readouterr().out == ""


def test_stdout_exposition_when_the_database_is_down_exits_unknown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(["metrics", "-d", f"host=127.0.0.1 port={closed_port()} dbname=x"])
    out = capsys.readouterr().out
    assert rc == 3
    assert samples(out)[("partguard_up", ())] == 0


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool") or next(
        (p for p in ("/usr/bin/promtool",) if os.path.exists(p)), None
    )
    if promtool is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("promtool is missing in CI: install the prometheus package")
        pytest.skip("promtool is not installed")
    rules = str(ROOT / "docs/prometheus-alerts.yml")
    check = subprocess.run(
        [promtool, "check", "rules", rules], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout
    # The rules fire on an incident's series and stay quiet on a healthy table.
    test = subprocess.run(
        [promtool, "test", "rules", "prometheus-alerts.test.yml"],
        cwd=ROOT / "tests/data",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def exported_names() -> set[str]:
    from partguard.commands.check import CheckReport, ServerSummary, TableSummary
    from partguard.commands.metrics import Scrape, families
    from partguard.inspect.connections import Clients

    now = datetime.now(UTC)
    server = ServerSummary("15.0", 150000, "db", "u", "UTC", now, 100, 3, 0, 1, 97, False, "", None)
    table = TableSummary(
        "s",
        "t",
        "ok",
        "range",
        "ts",
        "timestamp with time zone",
        "1 day",
        "UTC",
        "partman",
        1,
        True,
        0,
        1.0,
        None,
        None,
        0,
        0,
        now,
        None,
    )
    return {
        f.name for f in families(Scrape(CheckReport(0, server, (table,), (), Clients(())), 0.1))
    }


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    names = exported_names()
    assert {
        "partguard_up",
        "partguard_default_rows",
        "partguard_runway_seconds",
        "partguard_last_maintenance_success_timestamp_seconds",
        "partguard_connections_used",
    } <= names
    rules = (ROOT / "docs/prometheus-alerts.yml").read_text()
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    assert dashboard["panels"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"partguard_[a-z_]+", rules + "\n".join(exprs)))
    assert used <= names, used - names
    assert {
        "partguard_default_rows",
        "partguard_runway_seconds",
        "partguard_connections_used",
        "partguard_last_maintenance_success_timestamp_seconds",
    } <= used
