"""Who holds the connections: on a real server whose slots a pool has taken (the incident's root
cause), ``check`` names the pool, its clients and idle sessions, the role and database limits
that bind, and ``metrics`` exports the holders with bounded label cardinality."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from test_metrics import samples

from partguard.sandbox import Sandbox

Run = Callable[..., tuple[int, str, str]]


def check_json(run: Run, dsn: str) -> tuple[int, dict[str, Any]]:
    rc, out, err = run("check", "-d", dsn, "--format", "json")
    assert err == "", err
    return rc, json.loads(out)


def connections_finding(doc: dict[str, Any]) -> dict[str, Any]:
    (f,) = [f for f in doc["findings"] if f["code"] == "connections"]
    return f


@pytest.fixture
def held() -> Iterator[list[psycopg.Connection[Any]]]:
    conns: list[psycopg.Connection[Any]] = []
    yield conns
    for c in conns:
        c.close()


def test_a_pool_that_fills_the_server_is_named(
    make_cluster: Callable[..., Sandbox], run: Run, held: list[psycopg.Connection[Any]]
) -> None:
    sb = make_cluster({"max_connections": 20})  # 17 usable: 3 are superuser_reserved
    with psycopg.connect(sb.dsn(), autocommit=True) as c:
        c.execute("CREATE ROLE app LOGIN")
    tcp = make_conninfo(sb.dsn(), user="app", application_name="ingest-pool")
    local = make_conninfo(tcp, host=str(sb.datadir.parent))  # the Unix socket: a second client
    for i in range(17):
        held.append(psycopg.connect(tcp if i % 2 else local, autocommit=True))
    with pytest.raises(psycopg.OperationalError, match="reserved"):
        psycopg.connect(tcp)  # the pool has every ordinary slot: the server is full
    for c in held[:2]:  # two instances forgot to commit
        c.autocommit = False
        c.execute("SELECT 1")
    time.sleep(1.1)

    rc, doc = check_json(run, sb.dsn())  # as the superuser: one of the 3 reserved slots
    f = connections_finding(doc)
    assert (rc, f["severity"]) == (2, "critical")
    msg = f["message"]
    assert msg.startswith(
        "18 of 17 usable connection slots in use"
    )  # the superuser check is the 18th
    assert "held by ingest-pool (user app): 2 clients × ~8 = 17 of 17 usable slots" in msg
    assert "15 idle" in msg and "2 idle in transaction (oldest 00:00:" in msg
    assert "postgres is a superuser: it can" in msg
    pool = f["detail"]["pools"][0]
    assert (pool["application_name"], pool["usename"], pool["clients"], pool["total"]) == (
        "ingest-pool",
        "app",
        2,
        17,
    )
    assert (pool["idle"], pool["idle_in_transaction"], pool["active"]) == (15, 2, 0)
    assert pool["oldest_idle_in_transaction_seconds"] >= 1
    assert sorted(pool["client_addrs"]) == ["127.0.0.1", "local"]
    groups = {(g["application_name"], g["client_addr"]): g["total"] for g in f["detail"]["groups"]}
    assert groups[("ingest-pool", "127.0.0.1")] == 8 and groups[("ingest-pool", "local")] == 9
    assert (f["detail"]["idle"], f["detail"]["idle_in_transaction"]) == (15, 2)

    rc, out, err = run("metrics", "-d", sb.dsn())
    assert rc == 0, err
    s = samples(out)

    def series(state: str) -> float:
        key = (("application_name", "ingest-pool"), ("state", state), ("usename", "app"))
        return s[("partguard_connections", key)]

    assert (series("idle"), series("idle_in_transaction"), series("active")) == (15, 2, 0)
    age = s[
        (
            "partguard_connections_idle_in_transaction_max_seconds",
            (("application_name", "ingest-pool"), ("usename", "app")),
        )
    ]
    assert age >= 1


def test_role_and_database_limits_that_bind(
    dsn: str, conn: Any, run: Run, held: list[psycopg.Connection[Any]]
) -> None:
    db = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute("CREATE ROLE reporting LOGIN CONNECTION LIMIT 4")
    conn.execute("CREATE ROLE maint LOGIN CONNECTION LIMIT 2")
    conn.execute("GRANT pg_read_all_data TO maint")  # what check needs; not the stats
    try:
        for _ in range(4):
            held.append(
                psycopg.connect(make_conninfo(dsn, user="reporting", application_name="bi"))
            )
        rc, doc = check_json(run, dsn)  # as the superuser: the server is nowhere near full
        f = connections_finding(doc)
        assert (rc, f["severity"]) == (1, "warning")
        assert "role reporting has 4 of its CONNECTION LIMIT 4" in f["message"]
        assert [(lim["kind"], lim["name"], lim["used"]) for lim in f["detail"]["limits"]] == [
            ("role", "reporting", 4)
        ]

        # The maintenance role at its own limit: check (as maint) is the last one it gets.
        held.append(psycopg.connect(make_conninfo(dsn, user="maint")))
        rc, doc = check_json(run, make_conninfo(dsn, user="maint"))
        f = connections_finding(doc)
        assert (rc, f["severity"]) == (2, "critical")
        assert (
            "role maint has 2 of its CONNECTION LIMIT 2 (maintenance as maint is refused once "
            "it is reached)"
        ) in f["message"]
        # maint may not see the other roles' state: counted, not guessed, and the fix named.
        assert "is hidden from maint (GRANT pg_read_all_stats TO maint" in f["message"]
        assert "maint is not a superuser: it cannot" in f["message"]

        conn.execute("GRANT pg_read_all_stats TO maint")
        # 7 here: this test's, 4 reporting, maint's, and the check's own.
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 7").format(sql.Identifier(db)))
        rc, doc = check_json(run, make_conninfo(dsn, user="maint"))
        f = connections_finding(doc)
        assert "hidden" not in f["message"]
        assert (
            f"database {db} has 7 of its CONNECTION LIMIT 7 (maintenance as maint" in f["message"]
        )
    finally:
        for c in held:
            c.close()
        held.clear()
        conn.execute("DROP OWNED BY maint")
        conn.execute("DROP ROLE reporting")
        conn.execute("DROP ROLE maint")


def test_metrics_keep_the_largest_holders_and_sum_the_rest(
    dsn: str, run: Run, held: list[psycopg.Connection[Any]]
) -> None:
    for i in range(14):  # 14 applications, app-0 the largest: 11 series pairs at most
        for _ in range(1 + (i == 0) * 3):
            held.append(psycopg.connect(make_conninfo(dsn, application_name=f"app-{i}")))
    rc, out, err = run("metrics", "-d", dsn)
    assert rc == 0, err
    s = samples(out)
    conns = {labels: v for (name, labels), v in s.items() if name == "partguard_connections"}
    pairs = {(dict(k)["application_name"], dict(k)["usename"]) for k in conns}
    assert len(pairs) == 11 and ("other", "other") in pairs
    assert ("app-0", "postgres") in pairs
    assert sum(conns.values()) == s[("partguard_connections_used", ())]
    assert {dict(k)["state"] for k in conns} <= {
        "active",
        "idle",
        "idle_in_transaction",
        "unknown",
        "other",
    }
