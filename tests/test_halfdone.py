"""Nothing half-done, nothing silent (issue 8, items 1-4).

Each test is an incident report: a fix that fails at its swap (a lock, a privilege), a copy
cut off by a server restart, a fix killed half-way, the old script's detached DEFAULT, a
copy on an almost full server, rows left in quarantine. Afterwards either the table is as
it was (catalog and rows, apart from partguard's own journal) and a live insert far in the
future lands in it, or check, metrics, maintain and ``fix --status`` say what is left and
the command that finishes it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from partguard.execute import fault_action
from partguard.plan.steps import create_helpers
from partguard.sandbox import Sandbox
from partguard.testing.build import fixes_incident
from partguard.testing.catalog import kids, midnight, utc_today
from partguard.testing.oracles import (
    PARTMAN_FORMATS,
    assert_exactly_once,
    assert_partman_healthy,
    has_wide_child,
    outside_partguard,
)

Conn = psycopg.Connection[Any]
Run = Callable[..., tuple[int, str, str]]


# --- what the tests look at ---------------------------------------------------------


def far_insert(conn: Conn, payload: str) -> int:
    """A live insert a month ahead, as the application makes it: the rows it reports."""
    return conn.execute(
        "INSERT INTO public.fixes (ts, payload) VALUES (now() + interval '30 days', %s)", (payload,)
    ).rowcount


def where_is(conn: Conn, payload: str) -> list[str]:
    """Which relation of public.fixes holds the rows with ``payload`` (none: not visible)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT tableoid::regclass::text FROM public.fixes WHERE payload = %s", (payload,)
        )
    ]


def check_json(run: Run, dsn: str) -> tuple[int, list[dict[str, Any]]]:
    rc, out, err = run("check", "-d", dsn, "-t", "public.fixes", "--format", "json")
    assert out, err
    return rc, json.loads(out)["findings"]


def only(findings: list[dict[str, Any]], code: str) -> dict[str, Any]:
    hits = [f for f in findings if f["code"] == code]
    assert len(hits) == 1, findings
    return hits[0]


def metric(run: Run, dsn: str, name: str) -> float:
    rc, out, err = run("metrics", "-d", dsn, "-t", "public.fixes")
    assert rc == 0, err
    m = re.search(rf'^{name}{{schema="public",table="fixes"}} (\S+)$', out, re.MULTILINE)
    assert m, out
    return float(m.group(1))


def helpers_on_default(conn: Conn) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgname = 'partguard_divert' UNION ALL "
            "SELECT conname FROM pg_constraint WHERE conname = 'partguard_span'"
        )
    ]


def runs(conn: Conn) -> list[tuple[str, bool]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT state, finished_at IS NOT NULL FROM partguard.fix_run ORDER BY run_id"
        )
    ]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("partguard: "), err
    return lines[-1]


def killed_cli(*argv: str, fault: str) -> subprocess.CompletedProcess[str]:
    """``partguard <argv>`` in its own process, SIGKILLed at ``fault`` (execute.fault)."""
    env = {**os.environ, "PARTGUARD_FAULT": fault}
    return subprocess.run(
        [sys.executable, "-m", "partguard", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def role(conn: Conn) -> Iterator[str]:
    """A login role of this test's own (roles are cluster-wide), dropped afterwards."""
    name = f"app_{conn.info.dbname}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def app_schema_table(conn: Conn, role: str) -> None:
    """The incident in schema ``app``, which the superuser owns: ``role`` owns the table and its
    partitions and may CREATE in the database and (until a test revokes it) in the schema."""
    r = sql.Identifier(role)
    conn.execute(
        sql.SQL(
            "CREATE SCHEMA app; GRANT USAGE, CREATE ON SCHEMA app TO {r}; "
            "GRANT CREATE ON DATABASE {db} TO {r}"
        ).format(r=r, db=sql.Identifier(conn.info.dbname))
    )
    if conn.execute("SELECT to_regclass('partman.part_config')").fetchone() != (None,):
        conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA partman TO {r}; GRANT SELECT ON partman.part_config TO {r}"
            ).format(r=r)
        )  # a native table, but fix must see that partman does not manage it
    fixes_incident(conn, partman=False, rows=2000, schema="app")
    for (rel,) in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'app'::regnamespace "
        "AND relkind IN ('r', 'p')"
    ).fetchall():
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier("app", rel), r))


# --- 1. a failure at the swap leaves the table as it was --------------------------------


def test_lock_taken_just_before_the_swap_is_undone_and_live_inserts_land_in_the_table(
    run: Run, dsn: str, conn: Conn, partman_version: str | None
) -> None:
    fixes_incident(conn, partman=partman_version is not None)
    conn.execute(
        "INSERT INTO public.fixes (ts, payload) VALUES ('2999-01-01', 'outlier')"
    )  # quarantined, then back
    before = outside_partguard(conn)
    diverted: list[int] = []

    with psycopg.connect(dsn) as blocker:

        def parent_locked_when_the_swap_comes() -> None:
            # A reader that touched only the parent (ACCESS SHARE on it alone) starts now.
            blocker.execute("LOCK TABLE ONLY public.fixes IN ACCESS SHARE MODE")
            with psycopg.connect(dsn, autocommit=True) as writer:
                diverted.append(far_insert(writer, "during"))

        with fault_action("validate", parent_locked_when_the_swap_comes):
            rc, _out, err = run(
                "fix",
                "-d",
                dsn,
                "public.fixes",
                "--yes",
                "--strategy",
                "instant",
                "--lock-timeout",
                "100ms",
                "--retries",
                "1",
            )
        pid = blocker.info.backend_pid
        blocker.rollback()

    assert rc == 75, err
    assert diverted == [0], (
        "the writer's insert was not diverted during the run: the test proves nothing"
    )
    line = one_line(err)
    assert f"pid {pid}" in line and "undone" in line and "rolled back" in line, line
    assert helpers_on_default(conn) == []
    assert where_is(conn, "during") == ["fixes_default"]
    assert where_is(conn, "outlier") == ["fixes_default"]
    assert far_insert(conn, "after") == 1 and where_is(conn, "after") == ["fixes_default"]
    conn.execute("DELETE FROM public.fixes WHERE payload IN ('during', 'after')")
    assert outside_partguard(conn) == before
    assert runs(conn) == [("rolled_back", True)]
    rc, findings = check_json(run, dsn)
    assert {"unfinished_fix", "quarantine_rows"}.isdisjoint(f["code"] for f in findings), findings


def test_when_the_undo_cannot_be_done_either_the_error_says_what_is_left_and_how_to_finish(
    run: Run, dsn: str, conn: Conn, partman_version: str | None
) -> None:
    fixes_incident(conn, partman=partman_version is not None)
    before = outside_partguard(conn)

    with psycopg.connect(dsn) as blocker:

        def whole_table_locked_when_the_swap_comes() -> None:
            blocker.execute("LOCK TABLE public.fixes IN ACCESS SHARE MODE")  # the DEFAULT too

        with fault_action("validate", whole_table_locked_when_the_swap_comes):
            rc, _out, err = run(
                "fix",
                "-d",
                dsn,
                "public.fixes",
                "--yes",
                "--strategy",
                "instant",
                "--lock-timeout",
                "100ms",
                "--retries",
                "1",
            )
        assert far_insert(conn, "diverted") == 0  # still diverting: what the message must say
        blocker.rollback()

    assert rc == 75, err
    line = one_line(err)
    assert (
        "the undo failed too" in line
        and "trigger partguard_divert and CHECK partguard_span on public.fixes_default" in line
    )
    assert f"finish it: partguard fix -d {conn.info.dbname} public.fixes --yes" in line
    assert f"undo it: partguard fix -d {conn.info.dbname} public.fixes --abort" in line
    assert runs(conn) == [("validate", False)]

    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--abort")  # the command it gave

    assert rc == 0 and "put 1 quarantined rows back" in out, out + err
    assert helpers_on_default(conn) == [] and where_is(conn, "diverted") == ["fixes_default"]
    conn.execute("DELETE FROM public.fixes WHERE payload = 'diverted'")
    assert outside_partguard(conn) == before
    assert runs(conn) == [("rolled_back", True)]


def test_a_lock_held_on_the_parent_fails_the_run_before_its_first_commit(
    run: Run, dsn: str, conn: Conn, partman_version: str | None
) -> None:
    """A long transaction that read only recent children (plan-time pruning) holds the parent
    but not the DEFAULT: instant's first steps would pass and its swap would fail."""
    fixes_incident(conn, partman=partman_version is not None)
    before = outside_partguard(conn)
    day = midnight(utc_today(conn) - timedelta(days=6))

    with psycopg.connect(dsn) as blocker:
        blocker.execute(
            sql.SQL("SELECT count(*) FROM public.fixes WHERE ts >= {} AND ts < {}").format(
                sql.Literal(day), sql.Literal(day + timedelta(days=1))
            )
        )
        held = {
            r[0]
            for r in blocker.execute(
                "SELECT relation::regclass::text FROM pg_locks WHERE pid = pg_backend_pid() AND relation IS NOT NULL"
            )
        }
        assert "fixes" in held and "fixes_default" not in held, held
        pid = blocker.info.backend_pid
        rc, _out, err = run(
            "fix",
            "-d",
            dsn,
            "public.fixes",
            "--yes",
            "--strategy",
            "instant",
            "--lock-timeout",
            "100ms",
            "--retries",
            "1",
        )
        blocker.rollback()

    assert rc == 75, err
    assert "lock check" in one_line(err) and f"blocked by pid {pid}" in err
    assert conn.execute("SELECT to_regnamespace('partguard')").fetchone() == (None,), (
        "something was committed"
    )
    assert outside_partguard(conn) == before
    assert far_insert(conn, "after") == 1 and where_is(conn, "after") == ["fixes_default"]


def test_no_create_on_the_schema_is_refused_before_anything_changes(
    run: Run, dsn: str, conn: Conn, role: str
) -> None:
    app_schema_table(conn, role)
    conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA app FROM {}").format(sql.Identifier(role)))
    before = outside_partguard(conn)

    rc, out, err = run(
        "fix", "-d", make_conninfo(dsn, user=role), "app.fixes", "--yes", "--strategy", "instant"
    )

    assert rc == 77 and out == "", err
    line = one_line(err)
    assert (
        len(err.strip().splitlines()) == 1
        and "CREATE on schema app" in line
        and "nothing changed" in line
    )
    assert conn.execute("SELECT to_regnamespace('partguard')").fetchone() == (None,)
    assert outside_partguard(conn) == before
    assert (
        conn.execute(
            "INSERT INTO app.fixes (ts, payload) VALUES (now() + interval '30 days', 'x')"
        ).rowcount
        == 1
    )


def test_create_revoked_just_before_the_swap_is_undone(
    run: Run, dsn: str, conn: Conn, role: str
) -> None:
    app_schema_table(conn, role)
    before = outside_partguard(conn)

    def revoke() -> None:
        with psycopg.connect(dsn, autocommit=True) as dba:
            dba.execute(sql.SQL("REVOKE CREATE ON SCHEMA app FROM {}").format(sql.Identifier(role)))

    with fault_action("validate", revoke):
        rc, _out, err = run(
            "fix",
            "-d",
            make_conninfo(dsn, user=role),
            "app.fixes",
            "--yes",
            "--strategy",
            "instant",
        )

    assert rc == 77, err
    line = one_line(err)
    assert "permission denied for schema app" in line and "undone" in line, line
    assert helpers_on_default(conn) == []
    assert outside_partguard(conn) == before
    assert (
        conn.execute(
            "INSERT INTO app.fixes (ts, payload) VALUES (now() + interval '30 days', 'x')"
        ).rowcount
        == 1
    )
    assert runs(conn) == [("rolled_back", True)]


def test_a_dry_run_needs_only_read_access(
    run: Run, dsn: str, conn: Conn, role: str, partman_version: str | None
) -> None:
    fixes_incident(conn, partman=partman_version is not None)
    conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
    before = outside_partguard(conn)

    rc, out, err = run(
        "fix",
        "-d",
        make_conninfo(dsn, user=role),
        "public.fixes",
        "--dry-run",
        "--strategy",
        "instant",
    )

    assert rc == 0, err
    assert "DETACH PARTITION" in out and "VALIDATE CONSTRAINT" in out
    assert "this role could not run the repair" in err and "ownership of the table" in err
    assert outside_partguard(conn) == before


# --- 2. check, metrics, maintain and fix --status see an unfinished fix ------------------


def test_copy_cut_off_by_a_server_restart_is_critical_everywhere_until_finished(
    run: Run, make_cluster: Callable[..., Sandbox], partman_version: str | None
) -> None:
    sandbox = make_cluster()
    dsn = sandbox.create_database(
        "halfdone", partman=partman_version is not None, partman_version=partman_version
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        fixes_incident(conn, partman=partman_version is not None, rows=20_000)
        before = sorted(r[0] for r in conn.execute("SELECT id FROM public.fixes"))

    with fault_action("copy:2", sandbox.restart):
        rc, out, err = run(
            "fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "copy", "--chunk-pages", "16"
        )

    with psycopg.connect(dsn, autocommit=True) as conn:
        (hold,) = conn.execute(
            "SELECT detail->'params'->>'holding' FROM partguard.fix_run"
        ).fetchone()  # type: ignore[misc]
        missing = conn.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {}) - sum(rows_copied + rows_quarantined) FROM partguard.fix_chunk"
            ).format(sql.Identifier("public", hold))
        ).fetchone()[0]  # type: ignore[index]
        visible = conn.execute("SELECT count(*) FROM public.fixes").fetchone()[0]  # type: ignore[index]
    assert rc != 0 and 0 < missing < 20_000 and visible == 20_000 - missing
    line = one_line(err)
    assert (
        f"{missing} rows in public.{hold}" in line
        and "partguard fix -d halfdone public.fixes --yes" in line
    ), line

    for restarted in (False, True):
        if restarted:
            sandbox.restart()
        rc, findings = check_json(run, dsn)
        f = only(findings, "unfinished_fix")
        assert rc == 2 and f["severity"] == "critical", findings
        assert f["detail"]["rows_not_visible"] == missing and f["detail"]["rows_exact"]
        assert f["detail"]["relation"] == f"public.{hold}" and f["detail"]["kind"] == "copy"
        assert "partguard fix -d halfdone public.fixes --yes" in f["message"]
        assert metric(run, dsn, "partguard_unfinished_fix_rows") == missing
        assert metric(run, dsn, "partguard_unfinished_fixes") == 1
    rc, out, err = run("fix", "-d", dsn, "--status")
    assert (
        rc == 0
        and f"holding=public.{hold} ({missing} rows not visible yet)" in out
        and "INTERRUPTED" in out
    )
    if partman_version is not None:
        rc, out, err = run(
            "maintain", "-d", dsn, "-t", "public.fixes", "--format", "json", "--retry-for", "5s"
        )
        table = json.loads(out)["tables"][0]
        assert rc == 2 and table["severity"] == 2 and "interrupted" in table["message"], out

    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0, err
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT id FROM public.fixes")) == before
    rc, findings = check_json(run, dsn)
    assert "unfinished_fix" not in {f["code"] for f in findings}, findings
    assert metric(run, dsn, "partguard_unfinished_fix_rows") == 0


def test_instant_killed_before_its_swap_is_critical_and_abort_undoes_it(
    run: Run, dsn: str, conn: Conn, partman_version: str | None
) -> None:
    fixes_incident(conn, partman=partman_version is not None)
    before = outside_partguard(conn)

    proc = killed_cli(
        "fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant", fault="validate"
    )
    assert proc.returncode == -9, proc.stderr
    assert far_insert(conn, "diverted") == 0  # INSERT 0 0: what the finding must warn about

    rc, findings = check_json(run, dsn)
    f = only(findings, "unfinished_fix")
    assert rc == 2 and f["severity"] == "critical"
    assert f["detail"]["kind"] == "instant" and f["detail"]["trigger"] and f["detail"]["check"]
    assert (
        f["detail"]["rows_not_visible"] == 1 and f["detail"]["relation"] == "public.fixes_default"
    )
    assert "INSERT 0 0" in f["message"] and "partguard fix -d" in f["message"]
    assert f["detail"]["undo_command"].endswith("public.fixes --abort")
    assert metric(run, dsn, "partguard_unfinished_fixes") == 1
    assert metric(run, dsn, "partguard_unfinished_fix_rows") == 1

    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--abort")
    assert rc == 0 and "rolled back" in out and "put 1 quarantined rows back" in out, out + err
    assert helpers_on_default(conn) == [] and where_is(conn, "diverted") == ["fixes_default"]
    assert far_insert(conn, "after") == 1 and where_is(conn, "after") == ["fixes_default"]
    conn.execute("DELETE FROM public.fixes WHERE payload IN ('diverted', 'after')")
    assert outside_partguard(conn) == before
    rc, findings = check_json(run, dsn)
    assert "unfinished_fix" not in {f["code"] for f in findings}, findings
    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--abort")
    assert rc == 0 and "no unfinished fix run" in out, out + err


def fixes_rows(conn: Conn) -> Counter[tuple[Any, ...]]:
    """Every row of public.fixes, with multiplicity."""
    return Counter(tuple(r) for r in conn.execute("SELECT id, ts, payload FROM public.fixes"))


def killed_between_swap_and_recut(
    run: Run, dsn: str, conn: Conn, partman_version: str | None
) -> None:
    """``fix`` (auto) SIGKILLed after its instant swap is journalled done, before the re-cut:
    check and ``fix --status`` say the re-cut is owed, and the same command finishes it."""
    managed = partman_version is not None
    fixes_incident(conn, partman=managed)
    before = fixes_rows(conn)
    proc = killed_cli("fix", "-d", dsn, "public.fixes", "--yes", fault="auto:before-recut")
    assert proc.returncode == -9, proc.stderr
    assert runs(conn) == [("done", True)]
    (wide,) = conn.execute(
        "SELECT detail->'params'->>'span_child' FROM partguard.fix_run"
    ).fetchone()
    assert has_wide_child(kids(conn, "public.fixes")), kids(conn, "public.fixes")

    rc, findings = check_json(run, dsn)
    f = only(findings, "unfinished_fix")
    db = conn.info.dbname
    assert rc == 1 and f["severity"] == "warning", findings  # nothing out of sight: WARNING
    assert f["detail"]["kind"] == "recut" and f["detail"]["child"] == wide
    assert f["detail"]["rows_not_visible"] == 0 and f"public.{wide}" in f["message"]
    assert f["detail"]["command"] == f"partguard fix -d {db} public.fixes --yes"
    assert f["detail"]["command"] in f["message"]
    split = f["detail"]["split_command"]
    assert split.startswith("partguard split -d ") and split.endswith(" public.fixes --yes")
    assert split in f["message"]
    assert metric(run, dsn, "partguard_recut_owed") == 1
    assert metric(run, dsn, "partguard_unfinished_fixes") == 0  # nothing out of sight: no page
    assert metric(run, dsn, "partguard_unfinished_fix_rows") == 0
    rc, out, err = run("fix", "-d", dsn, "--status")
    assert rc == 0 and "RE-CUT OWED" in out and f"public.{wide}" in out, out + err

    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0, out + err
    assert "fixed with instant+recut" in out and "re-cut online into" in out, out
    ks = kids(conn, "public.fixes")
    assert not has_wide_child(ks) and all(k.upper - k.lower == timedelta(days=1) for k in ks), ks
    assert all(a.upper == b.lower for a, b in itertools.pairwise(ks)), "a hole or an overlap"
    assert_exactly_once(before, fixes_rows(conn))
    rc, findings = check_json(run, dsn)
    assert "unfinished_fix" not in {f["code"] for f in findings}, findings
    assert "wide_child" not in {f["code"] for f in findings}, findings
    assert metric(run, dsn, "partguard_recut_owed") == 0
    rc, out, err = run("fix", "-d", dsn, "--status")
    assert rc == 0 and "OWED" not in out and "finished" in out, out + err
    if managed:
        assert partman_version is not None
        assert_partman_healthy(
            dsn, "public.fixes", PARTMAN_FORMATS[int(partman_version[0])]["1 day"], "UTC"
        )
    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0 and "nothing to do" in out, out + err


def test_auto_killed_between_swap_and_recut_owes_the_recut_until_rerun(
    run: Run, dsn: str, conn: Conn, partman_version: str | None
) -> None:
    killed_between_swap_and_recut(run, dsn, conn, partman_version)


def test_auto_killed_between_swap_and_recut_on_a_native_table(
    run: Run, dsn: str, conn: Conn
) -> None:
    killed_between_swap_and_recut(run, dsn, conn, None)


def test_a_manual_split_settles_the_owed_recut_and_instant_owes_nothing(
    run: Run, dsn: str, conn: Conn, partman: str
) -> None:
    """The owed re-cut is read from the catalog: ``partguard split`` settles it, nothing to
    clear; ``--strategy instant`` stops after its swap and owes nothing."""
    fixes_incident(conn, partman=True)
    proc = killed_cli("fix", "-d", dsn, "public.fixes", "--yes", fault="auto:before-recut")
    assert proc.returncode == -9, proc.stderr
    rc, findings = check_json(run, dsn)
    assert only(findings, "unfinished_fix")["detail"]["kind"] == "recut"
    rc, out, err = run("split", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0, out + err
    assert not has_wide_child(kids(conn, "public.fixes"))
    rc, findings = check_json(run, dsn)
    assert "unfinished_fix" not in {f["code"] for f in findings}, findings
    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0 and "nothing to do" in out, out + err

    conn.execute("DROP TABLE public.fixes")
    conn.execute("DELETE FROM partman.part_config WHERE parent_table = 'public.fixes'")
    fixes_incident(conn, partman=True)
    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant")
    assert rc == 0 and "fixed with instant in" in out, out + err
    assert has_wide_child(kids(conn, "public.fixes"))
    rc, findings = check_json(run, dsn)
    assert "unfinished_fix" not in {f["code"] for f in findings}, findings
    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes")
    assert rc == 0 and "nothing to do" in out and "re-cut" not in out, out + err


def test_a_default_the_old_script_detached_is_critical_with_its_rows(
    run: Run, dsn: str, conn: Conn
) -> None:
    fixes_incident(conn, partman=False, rows=20_000)
    conn.execute("ALTER TABLE public.fixes DETACH PARTITION public.fixes_default")

    rc, findings = check_json(run, dsn)

    f = only(findings, "unfinished_fix")
    assert rc == 2 and f["severity"] == "critical"
    assert (
        f["detail"]["kind"] == "detached_default"
        and f["detail"]["relation"] == "public.fixes_default"
    )
    assert f["detail"]["rows_not_visible"] == 20_000 and f["detail"]["rows_exact"]
    assert f"partguard fix -d {conn.info.dbname} public.fixes --yes" in f["message"]
    assert metric(run, dsn, "partguard_unfinished_fix_rows") == 20_000
    assert metric(run, dsn, "partguard_unfinished_fixes") == 1


# --- 3. copy on an almost full server ---------------------------------------------------


def test_copy_with_all_but_one_slot_taken_runs_on_fewer_connections(
    run: Run, make_cluster: Callable[..., Sandbox]
) -> None:
    sandbox = make_cluster({"max_connections": 12})
    dsn = sandbox.create_database("pressure", partman=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        fixes_incident(conn, partman=False, rows=20_000)
    idle: list[Conn] = []
    try:
        while True:  # the incident's pool: every slot taken by idle sessions
            try:
                idle.append(psycopg.connect(dsn, connect_timeout=5))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc), exc
                break
        idle.pop().close()  # one slot left: fix's own connection
        time.sleep(1)  # the server lets that backend go a moment after the client

        rc, out, err = run(
            "fix",
            "-d",
            dsn,
            "public.fixes",
            "--yes",
            "--strategy",
            "copy",
            "--jobs",
            "4",
            "--chunk-pages",
            "16",
        )
    finally:
        for c in idle:
            c.close()

    assert rc == 0, err
    assert "copy ran on 1 of 4 connections" in out and "too many clients" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM public.fixes").fetchone() == (
            20_000,
            20_000,
        )
        assert conn.execute("SELECT state FROM partguard.fix_run").fetchall() == [("done",)]
    rc, findings = check_json(run, dsn)
    assert "unfinished_fix" not in {f["code"] for f in findings}, findings


def test_copy_goes_on_when_a_worker_connection_is_lost(run: Run, dsn: str, conn: Conn) -> None:
    fixes_incident(conn, partman=False, rows=20_000)
    killed: list[bool] = []

    def terminate_the_other_worker() -> None:
        with psycopg.connect(dsn, autocommit=True) as dba:
            row = dba.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'partguard copy 2'"
            ).fetchone()
        killed.append(bool(row and row[0]))

    with fault_action("copy:1", terminate_the_other_worker):
        rc, _out, err = run(
            "fix",
            "-d",
            dsn,
            "public.fixes",
            "--yes",
            "--strategy",
            "copy",
            "--jobs",
            "2",
            "--chunk-pages",
            "16",
        )

    assert killed == [True], "no worker connection was terminated: the test proves nothing"
    assert rc == 0, err
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM public.fixes").fetchone() == (
        20_000,
        20_000,
    )
    assert conn.execute("SELECT state FROM partguard.fix_run").fetchall() == [("done",)]


# --- 4. quarantined rows -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["instant", "copy"])
def test_quarantined_rows_are_a_warning_with_count_and_key_range(
    run: Run, dsn: str, conn: Conn, strategy: str
) -> None:
    fixes_incident(conn, partman=False)
    conn.execute(
        "INSERT INTO public.fixes (ts, payload) VALUES ('2999-01-01 00:00Z', 'far'), "
        "('1970-01-01 00:00Z', 'early'), ('2999-06-01 00:00Z', 'far')"
    )
    rc, out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", strategy)
    assert rc == 0 and "quarantined rows kept in partguard.fixes_quarantine: 3" in out, out + err

    rc, findings = check_json(run, dsn)

    f = only(findings, "quarantine_rows")
    assert rc == 1 and f["severity"] == "warning", findings
    assert f["detail"]["rows"] == 3 and f["detail"]["null_rows"] == 0
    assert f["detail"]["min_key"].startswith("1970-01-01") and f["detail"]["max_key"].startswith(
        "2999-06-01"
    )
    assert (
        "partguard.fixes_quarantine holds 3 rows" in f["message"]
        and "1970-01-01 … 2999-06-01" in f["message"]
    )
    assert metric(run, dsn, "partguard_quarantine_rows") == 3
    conn.execute("DELETE FROM partguard.fixes_quarantine")
    rc, findings = check_json(run, dsn)
    assert rc == 0 and "quarantine_rows" not in {f["code"] for f in findings}
    assert metric(run, dsn, "partguard_quarantine_rows") == 0


def test_an_application_role_without_rights_on_partguard_keeps_writing_while_inserts_are_diverted(
    run: Run, dsn: str, conn: Conn, role: str, partman_version: str | None
) -> None:
    """The DBA runs fix; the application writes as its own role, which may insert into the
    table and nothing else. While instant's trigger diverts its inserts to partguard's
    quarantine, they still succeed (the trigger writes as partguard's own role), and the
    rows that get a child afterwards are back in the table."""
    fixes_incident(conn, partman=partman_version is not None)
    conn.execute(sql.SQL("GRANT INSERT, SELECT ON public.fixes TO {}").format(sql.Identifier(role)))
    seen: list[tuple[str, int]] = []

    def the_application_inserts() -> None:
        with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as app:
            for when, tag in (
                ("now() + interval '2 days'", "app-soon"),
                ("'2000-01-01'", "app-old"),
            ):
                cur = app.execute(
                    sql.SQL("INSERT INTO public.fixes (ts, payload) VALUES ({}, %s)").format(
                        sql.SQL(when)
                    ),
                    (tag,),
                )
                seen.append((tag, cur.rowcount))
        with psycopg.connect(dsn, autocommit=True) as dba:
            held = dba.execute(
                "SELECT payload FROM partguard.fixes_quarantine WHERE payload LIKE 'app-%' ORDER BY 1"
            ).fetchall()
        seen.append(("quarantined", len(held)))

    with fault_action("validate", the_application_inserts):
        rc, _out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant")

    # Both inserts were diverted (INSERT 0 0, no error) while the trigger stood.
    assert seen == [("app-soon", 0), ("app-old", 0), ("quarantined", 2)], (seen, err)
    assert rc == 0, err
    assert helpers_on_default(conn) == []
    assert conn.execute(
        "SELECT count(*) FROM public.fixes WHERE payload = 'app-soon' AND tableoid <> "
        "'public.fixes_default'::regclass"
    ).fetchone() == (1,)
    assert conn.execute(
        "SELECT count(*) FROM partguard.fixes_quarantine WHERE payload = 'app-old'"
    ).fetchone() == (1,)


def test_tables_of_the_same_name_in_two_schemas_keep_their_own_quarantine(
    run: Run, dsn: str, conn: Conn
) -> None:
    """``a.fixes`` and ``b.fixes`` both set rows aside: one shared quarantine table would mix
    them (and put one table's rows back into the other). Each gets its own, and check counts
    each table's own."""
    for schema, far in (("a", "2999-01-01"), ("b", "1970-01-01")):
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        fixes_incident(conn, partman=False, schema=schema)
        conn.execute(
            sql.SQL("INSERT INTO {} (ts, payload) VALUES (%s, %s), (%s, %s)").format(
                sql.Identifier(schema, "fixes")
            ),
            (far, f"{schema}-far-1", far, f"{schema}-far-2"),
        )
    for schema in ("a", "b"):
        rc, out, err = run("fix", "-d", dsn, f"{schema}.fixes", "--yes", "--strategy", "instant")
        assert rc == 0, err

    names = [
        r[0]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'partguard'::regnamespace "
            "AND relname LIKE '%%quarantine' ORDER BY 1"
        )
    ]
    assert names == ["b_fixes_quarantine", "fixes_quarantine"]
    held = {
        n: sorted(
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT payload FROM {}").format(sql.Identifier("partguard", n))
            )
        )
        for n in names
    }
    assert held == {
        "fixes_quarantine": ["a-far-1", "a-far-2"],
        "b_fixes_quarantine": ["b-far-1", "b-far-2"],
    }
    rc, out, err = run("check", "-d", dsn, "--format", "json")
    findings = json.loads(out)["findings"]
    counts = {f["table"]: f["detail"]["rows"] for f in findings if f["code"] == "quarantine_rows"}
    assert counts == {"a.fixes": 2, "b.fixes": 2}, findings


def test_partguards_schema_owned_by_another_role_is_refused_before_any_code_of_it_runs(
    run: Run, dsn: str, conn: Conn, role: str
) -> None:
    """A role that may CREATE in the database made schema partguard first and left a helper
    that would make it a superuser. The superuser's fix, split and maintain refuse (77) and
    run none of it; nothing changes."""
    r = sql.Identifier(role)
    conn.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), r)
    )
    fixes_incident(conn, partman=False)
    with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as evil:
        evil.execute("CREATE SCHEMA partguard")
        evil.execute(
            sql.SQL(
                "CREATE FUNCTION partguard.let_divert(q regclass) RETURNS void LANGUAGE sql "
                "AS $$ ALTER ROLE {} SUPERUSER $$"
            ).format(r)
        )
    before = outside_partguard(conn)
    try:
        _refused_everywhere(run, dsn, conn, role, before)
    finally:
        conn.execute("DROP SCHEMA IF EXISTS partguard CASCADE")


def _refused_everywhere(run: Run, dsn: str, conn: Conn, role: str, before: Any) -> None:
    for argv in (
        ("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant"),
        ("fix", "-d", dsn, "public.fixes", "--yes"),
        ("split", "-d", dsn, "public.fixes", "--yes"),
        ("maintain", "-d", dsn),
    ):
        rc, out, err = run(*argv)
        assert rc == 77, (argv, rc, out, err)
        line = one_line(err)
        assert f"schema partguard (owner {role})" in line, line
        assert f"function partguard.let_divert (owner {role})" in line, line
        assert "nothing changed" in line
    assert conn.execute(
        sql.SQL("SELECT rolsuper FROM pg_roles WHERE rolname = {}").format(sql.Literal(role))
    ).fetchone() == (False,)
    assert outside_partguard(conn) == before and helpers_on_default(conn) == []
    # The plan a DBA would run in psql refuses by itself too (the schema's owner is checked
    # inside the script, under the same advisory lock).
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="belongs to a role"):
        conn.execute(create_helpers())


def test_a_fix_runner_without_execute_on_divert_is_told_the_grant_before_anything_changes(
    run: Run, dsn: str, conn: Conn, role: str
) -> None:
    """A superuser's earlier run created partguard.divert() (EXECUTE revoked from PUBLIC);
    the owner of app.fixes runs instant: refused with the GRANT that lets it, then it works."""
    fixes_incident(conn, partman=False)
    rc, _out, err = run("fix", "-d", dsn, "public.fixes", "--yes", "--strategy", "instant")
    assert rc == 0, err
    app_schema_table(conn, role)
    r = sql.Identifier(role)
    conn.execute(
        sql.SQL(
            "GRANT USAGE, CREATE ON SCHEMA partguard TO {r}; "
            "GRANT SELECT ON ALL TABLES IN SCHEMA partguard TO {r}; "
            "GRANT INSERT, UPDATE ON partguard.fix_run, partguard.fix_chunk TO {r}"
        ).format(r=r)
    )
    before = outside_partguard(conn)
    as_role = make_conninfo(dsn, user=role)

    rc, out, err = run("fix", "-d", as_role, "app.fixes", "--yes", "--strategy", "instant")

    assert rc == 77, err
    line = one_line(err)
    assert "EXECUTE on partguard.divert()" in line and f"TO {role}" in line, line
    assert "nothing changed" in line
    assert outside_partguard(conn) == before and helpers_on_default(conn) == []
    conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION partguard.divert() TO {}").format(r))
    rc, out, err = run("fix", "-d", as_role, "app.fixes", "--yes", "--strategy", "instant")
    assert rc == 0, err
    assert conn.execute("SELECT count(*) FROM ONLY app.fixes_default").fetchone() == (0,)
