"""One exporter for a fleet (issue 11): ``partguard metrics --config targets.toml --listen``
serves ``/probe?target=NAME`` per database and ``/metrics`` for itself, on real clusters:
a live target, one on a port nothing listens on, one that accepts TCP and never answers;
passwords from .pgpass and service files only; the README's Prometheus config, run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from exporter import Proxy, in_parallel, running
from psycopg.conninfo import make_conninfo

from partguard.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-Pa55"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent() -> Iterator[Proxy]:
    """A server that accepts TCP and never says a word (a hung host, a half-open route)."""
    p = Proxy(closed_port(), stalled=True)  # never released: nothing is relayed
    yield p
    p.close()


def app_db(conn: psycopg.Connection[Any]) -> None:
    """A table with two children and a DEFAULT holding three rows."""
    conn.execute(
        "CREATE TABLE public.events (ts timestamptz NOT NULL, v text) PARTITION BY RANGE (ts)"
    )
    for day in ("2026-01-01", "2026-01-02"):
        conn.execute(
            f"CREATE TABLE public.events_{day.replace('-', '')} PARTITION OF public.events "
            f"FOR VALUES FROM ('{day} 00:00+00') TO ('{day} 00:00+00'::timestamptz + interval '1 day')"
        )
    conn.execute("CREATE TABLE public.events_default PARTITION OF public.events DEFAULT")
    conn.execute(
        "INSERT INTO public.events SELECT '2026-02-01 00:00+00'::timestamptz + g * interval '1 hour', 'x' "
        "FROM generate_series(1, 3) g"
    )


def targets_file(tmp_path: Path, body: str = "", **dsns: str) -> str:
    """A targets.toml: ``body`` as is, then one [target.NAME] per keyword, with its dsn."""
    path = tmp_path / "targets.toml"
    path.write_text(
        body + "".join(f'[target.{name}]\ndsn = "{dsn}"\n\n' for name, dsn in dsns.items())
    )
    return str(path)


def on_port(port: int) -> str:
    return f"host=127.0.0.1 port={port} dbname=x user=postgres"


def test_two_dead_targets_do_not_slow_the_live_one(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path, silent: Proxy
) -> None:
    app_db(conn)
    cfg = targets_file(
        tmp_path, live=dsn, refused=on_port(closed_port()), silent=on_port(silent.port)
    )
    with running("--config", cfg, "--listen", "127.0.0.1:0") as e:
        # All at once, as Prometheus' scrape loops would; the silent one a few times over.
        paths = ["/probe?target=silent"] * 3 + ["/probe?target=refused", "/probe?target=live"]
        replies = dict(
            zip(
                ["silent1", "silent2", "silent3", "refused", "live"],
                in_parallel(e, paths, timeout=10),
                strict=True,
            )
        )
        own = e.get("/metrics")
        err = e.stop()
    live = replies["live"]
    assert live.status == 200
    assert live.value("partguard_up") == 1
    assert live.value("partguard_children", schema="public", table="events") == 2
    assert live.value("partguard_default_rows", schema="public", table="events") == 3
    assert live.value("partguard_check_status", schema="public", table="events") == 2
    assert live.value("partguard_snapshots_total") == 1
    assert "target" not in live.body  # unlabelled: Prometheus' relabelling names it
    for name in ("refused", "silent1", "silent2", "silent3"):
        r = replies[name]
        assert r.status == 200 and r.value("partguard_up") == 0, name
        assert ("partguard_connections_used", ()) not in r.samples  # unknown, so absent
    # The live one had its answer while the silent target still held its scrapers.
    assert live.at < min(replies[f"silent{i}"].at for i in (1, 2, 3))
    # Three scrapes of the silent target, one connection attempt: refreshes are one at a time.
    assert silent.accepted == 1
    assert {replies[f"silent{i}"].value("partguard_snapshots_total") for i in (1, 2, 3)} == {1}
    # The exporter's own page: each target's last answer, and its process.
    assert own.value("partguard_target_up", target="live") == 1
    assert own.value("partguard_target_up", target="refused") == 0
    assert own.value("partguard_target_up", target="silent") == 0
    assert own.value("partguard_target_snapshots_total", target="silent") == 1
    assert own.value("process_resident_memory_bytes") > 0
    assert (
        "partguard_default_rows",
        (("schema", "public"), ("table", "events")),
    ) not in own.samples
    assert "timeout" in err or "timed out" in err  # the silent target's connect timed out, logged


def test_probe_asks_for_a_target_by_name_only(dsn: str, tmp_path: Path) -> None:
    cfg = targets_file(tmp_path, live=dsn)
    with running("--config", cfg, "--listen", "127.0.0.1:0") as e:
        unknown = e.get("/probe?target=" + urllib.parse.quote("host=evil.example dbname=x"))
        missing = e.get("/probe")
        index = e.get("/")
        e.stop()
    assert unknown.status == 400 and "unknown target" in unknown.body and "live" in unknown.body
    assert missing.status == 400 and "missing ?target=NAME" in missing.body
    assert index.status == 200 and "/probe?target=live" in index.body


def auth_cluster(make_cluster: Callable[..., Sandbox]) -> tuple[Sandbox, str]:
    """A cluster where role ``mon`` must give a password (scram); returns it and a dsn of
    role mon without one."""
    sb = make_cluster()
    dsn = sb.create_database("app", partman=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        app_db(c)
        c.execute(f"CREATE ROLE mon LOGIN PASSWORD '{SECRET}'")
        c.execute("GRANT pg_read_all_data TO mon")
    hba = sb.datadir / "pg_hba.conf"
    hba.write_text("host all mon 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    with psycopg.connect(sb.dsn(), autocommit=True) as c:
        c.execute("SELECT pg_reload_conf()")
    return sb, make_conninfo("", host="127.0.0.1", port=sb.port, dbname="app", user="mon")


def test_passwords_come_from_pgpass_and_service_files(
    make_cluster: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sb, mon = auth_cluster(make_cluster)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{sb.port}:app:mon:{SECRET}\n")
    pgpass.chmod(0o600)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[app]\nhost=127.0.0.1\nport={sb.port}\ndbname=app\nuser=mon\npassword={SECRET}\n"
    )
    cfg = targets_file(
        tmp_path,
        '[target.service]\nservice = "app"\n\n',
        pgpass=f"{mon} passfile={pgpass}",
        nopass=mon,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no PGPASSWORD
    env.update(PGSERVICEFILE=str(services), PGPASSFILE=str(tmp_path / "none"))
    with running("--config", cfg, "--listen", "127.0.0.1:0", env=env) as e:
        pgp, svc, nop = in_parallel(
            e, ["/probe?target=pgpass", "/probe?target=service", "/probe?target=nopass"]
        )
        own = e.get("/metrics")
        err = e.stop()
    assert pgp.value("partguard_up") == 1
    assert pgp.value("partguard_children", schema="public", table="events") == 2
    assert svc.value("partguard_up") == 1
    assert nop.value("partguard_up") == 0  # the server really asks for one
    assert "password" in err  # ... and says so in the log
    for text in (pgp.body, svc.body, nop.body, own.body, err):
        assert SECRET not in text


@pytest.mark.parametrize(
    "entry",
    [
        'dsn = "host=db1 dbname=orders password={secret}"',
        'dsn = "postgresql://mon:{secret}@db1/orders"',
        'dsn = "host=db1 dbname=orders"\npassword = "{secret}"',
    ],
)
def test_a_password_in_the_targets_file_is_refused(
    entry: str, tmp_path: Path, run: Callable[..., tuple[int, str, str]]
) -> None:
    cfg = targets_file(tmp_path, "[target.orders]\n" + entry.format(secret=SECRET) + "\n")
    rc, out, err = run("metrics", "--config", cfg, "--listen", "127.0.0.1:0")
    assert rc == 64 and out == ""
    assert (
        err.count("\n") == 1 and "[target.orders]: a password does not belong in this file" in err
    )
    assert SECRET not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-d", "x", "--listen", "127.0.0.1:0"],
            "--config takes every target from the file; drop -d",
        ),
        (["--textfile", "/tmp/x.prom"], "--config needs --listen HOST:PORT"),
    ],
)
def test_config_combines_with_listen_only(
    argv: list[str], message: str, tmp_path: Path, run: Callable[..., tuple[int, str, str]]
) -> None:
    cfg = targets_file(tmp_path, a="dbname=a")
    rc, _, err = run("metrics", "--config", cfg, *argv)
    assert rc == 64 and err == f"partguard: {message}\n"


def test_bad_targets_files_are_one_line_errors(
    tmp_path: Path, run: Callable[..., tuple[int, str, str]]
) -> None:
    for body, message in [
        ("", "no targets"),
        ('[target."a b"]\ndsn = "dbname=a"\n', "a target name is letters, digits"),
        ("[target.a]\ntables = []\n", 'needs dsn = "host=... dbname=..." or service = "NAME"'),
        ('[target.a]\ndsn = "host=h port"\n', "dsn is not a valid conninfo"),
        ('[target.a]\ndsn = "dbname=a"\nhost = "h"\n', "unknown key(s) host"),
        ("[targets.a]\n", "unknown section(s) targets"),
    ]:
        rc, _, err = run(
            "metrics", "--config", targets_file(tmp_path, body), "--listen", "127.0.0.1:0"
        )
        assert rc == 64 and err.count("\n") == 1 and message in err, (body, err)
    rc, _, err = run(
        "metrics", "--config", str(tmp_path / "absent.toml"), "--listen", "127.0.0.1:0"
    )
    assert rc == 64 and "cannot read" in err and err.count("\n") == 1


def test_dashboard_has_a_target_variable_used_by_every_query() -> None:
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    target = variables["target"]
    assert target["type"] == "query" and target["includeAll"] and target["allValue"] == ".*"
    assert "target)" in target["query"]["query"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    selectors = [m for e in exprs for m in re.findall(r"partguard_[a-z_]+(\{[^}]*\})?", e)]
    assert selectors and all('target=~"$target"' in s for s in selectors), selectors


def readme_scrape_config() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"```yaml\n(scrape_configs:.*?)```", text, re.DOTALL)
    assert found, "the README shows no Prometheus scrape config"
    return found.group(1)


def test_the_readme_scrape_config_runs_in_prometheus(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path, silent: Proxy
) -> None:
    """The documented config, against a real Prometheus: each target is scraped through
    /probe with its name as the ``target`` label; the silent one answers up 0 inside a 2 s
    scrape timeout (the scrape itself succeeds)."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("prometheus is missing in CI: install the prometheus package")
        pytest.skip("prometheus is not installed")
    app_db(conn)
    cfg = targets_file(tmp_path, live=dsn, silent=on_port(silent.port))
    with running("--config", cfg, "--listen", "127.0.0.1:0") as e:
        scrape = (
            readme_scrape_config()
            .replace("[orders, billing]", "[live, silent]")
            .replace("partguard-exporter:9187", f"127.0.0.1:{e.port}")
        )
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n" + scrape
        )
        check = subprocess.run(
            ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        web = closed_port()
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            want = {
                ("partguard", "live"),
                ("partguard", "silent"),
                ("partguard-exporter", "live"),
                ("partguard-exporter", "silent"),
            }
            deadline, got, up = time.monotonic() + 90, {}, {}
            while time.monotonic() < deadline and not (want <= set(got) and len(up) == 3):
                time.sleep(1)
                got = _query(web, "partguard_up or partguard_target_up")
                up = _query(web, "up")
        finally:
            prom.terminate()
            _, prom_err = prom.communicate(timeout=30)
        e.stop()
    assert want <= set(got), (got, prom_err[-2000:])
    assert got[("partguard", "live")] == 1
    assert got[("partguard", "silent")] == 0
    assert got[("partguard-exporter", "live")] == 1
    assert got[("partguard-exporter", "silent")] == 0
    # Every scrape succeeded, the silent target's too: it never outlasted the 2 s timeout.
    assert up == {
        ("partguard", "live"): 1,
        ("partguard", "silent"): 1,
        ("partguard-exporter", ""): 1,
    }


def _query(port: int, expr: str) -> dict[tuple[str, str], float]:
    """{(job, target): value} of an instant query, or {} while Prometheus is not ready."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.loads(resp.read().decode())
    except OSError:
        return {}
    return {
        (r["metric"].get("job", ""), r["metric"].get("target", "")): float(r["value"][1])
        for r in data.get("data", {}).get("result", [])
    }


def test_a_single_database_exporter_has_no_probe(dsn: str) -> None:
    with running("-d", dsn, "--listen", "127.0.0.1:0") as e:
        probe = e.get("/probe?target=x")
        metrics = e.get("/metrics")
        e.stop()
    assert probe.status == 404
    assert metrics.value("partguard_up") == 1 and metrics.value("process_resident_memory_bytes") > 0
