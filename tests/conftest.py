"""Fixtures on a real PostgreSQL cluster (no mocks): partguard's behaviour depends on the server
and on pg_partman, so that is what the tests run against.

- ``cluster``: one Sandbox for the whole session.
- ``dsn`` / ``conn``: a fresh database per test (pg_partman in schema ``partman`` when installed),
  dropped afterwards.
- ``partman_version``: the extension's version, or None; ``partman``: the same, but skips the test
  when pg_partman is missing (never in CI: there the ``cluster`` fixture fails instead).
- ``make_cluster``: extra clusters with special settings, e.g. ``make_cluster({"max_connections":
  10})``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from partguard.errors import PartguardError
from partguard.sandbox import Sandbox, Setting

TEMPLATE = "partguard_template"
_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Sandbox]:
    """The session's cluster, with a template database that already has pg_partman."""
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    try:
        sandbox = Sandbox().start()
    except PartguardError as e:
        if in_ci:
            pytest.fail(f"no PostgreSQL cluster in CI: {e}", pytrace=False)
        pytest.skip(f"no PostgreSQL cluster: {e}")
    try:
        if in_ci and not sandbox.has_partman:
            pytest.fail(
                f"pg_partman is not installed for PostgreSQL {sandbox.major} ({sandbox.pg_bin}); "
                "CI must test with it: run scripts/install-deps.sh",
                pytrace=False,
            )
        # CREATE DATABASE ... TEMPLATE copies files: much faster than CREATE EXTENSION per test.
        sandbox.create_database(TEMPLATE, partman=True)
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def partman_version(cluster: Sandbox) -> str | None:
    """The installed pg_partman version (e.g. "4.7.2"), or None when it is not available."""
    with psycopg.connect(cluster.dsn(TEMPLATE)) as c:
        row = c.execute(
            "select extversion from pg_extension where extname = 'pg_partman'"
        ).fetchone()
    return None if row is None else str(row[0])


@pytest.fixture
def partman(partman_version: str | None) -> str:
    """For tests that need pg_partman: its version; skips the test locally when missing."""
    if partman_version is None:
        pytest.skip("pg_partman is not installed")
    return partman_version


@pytest.fixture
def dsn(cluster: Sandbox, partman_version: str | None) -> Iterator[str]:
    """A fresh database for this test (copied from the session template), dropped afterwards."""
    name = f"t_{next(_db_counter):04d}"
    # partman_version is requested so that the template's only other connection is closed
    # before the copy starts (CREATE DATABASE refuses a template that is in use).
    yield cluster.create_database(name, partman=False, template=TEMPLATE)
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def make_cluster(cluster: Sandbox) -> Iterator[Callable[..., Sandbox]]:
    """A factory for extra clusters with special server settings; all stopped at teardown."""
    started: list[Sandbox] = []

    def factory(settings: Mapping[str, Setting] | None = None) -> Sandbox:
        sandbox = Sandbox(pg_bin=cluster.pg_bin, settings=settings)
        started.append(sandbox)
        return sandbox.start()

    yield factory
    for sandbox in started:
        sandbox.stop()


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``partguard <argv>`` in-process, as a user runs it: (exit code, stdout, stderr)."""
    from partguard.cli import main

    def _run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return _run
