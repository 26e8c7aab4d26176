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

# The shared oracles (assert statements in partguard.testing) report like test code.
pytest.register_assert_rewrite("partguard.testing")

from partguard.errors import PartguardError  # noqa: E402 - after register_assert_rewrite
from partguard.sandbox import Sandbox, Setting, find_pg_bin, partman_versions  # noqa: E402

TEMPLATE = "partguard_template"  # pg_partman at the control file's default version
SUPPORTED_PARTMAN = ("4.7.2", "5.2.4", "5.5.0")  # what CI must test; scripts/install-deps.sh
_db_counter = itertools.count(1)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _versions_to_test() -> list[str]:
    """The pg_partman versions partman-dependent tests run against: every supported version
    installed (``PARTGUARD_PARTMAN_VERSIONS=5.5.0,...`` narrows it for a quick local run)."""
    try:
        installed = partman_versions(find_pg_bin())
    except PartguardError:
        return []
    wanted = os.environ.get("PARTGUARD_PARTMAN_VERSIONS")
    pick = wanted.split(",") if wanted else SUPPORTED_PARTMAN
    return [v for v in pick if v in installed]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs pg_partman (fixture ``partman`` or ``partman_version``) runs once per
    version, with ids like ``[partman-5.5.0]``."""
    if "partman_version" in metafunc.fixturenames:
        versions: list[str | None] = list(_versions_to_test()) or [None]
        metafunc.parametrize(
            "partman_version",
            versions,
            indirect=True,
            ids=[f"partman-{v}" if v else "no-partman" for v in versions],
        )


def _template(version: str) -> str:
    return f"{TEMPLATE}_{version.replace('.', '_')}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Sandbox]:
    """The session's cluster, with a template database per pg_partman version (and one at the
    default version); ``cluster.partman_broken`` maps a version to why it cannot be created."""
    in_ci = _in_ci()
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
        if in_ci:
            missing = sorted(set(SUPPORTED_PARTMAN) - set(partman_versions(sandbox.pg_bin)))
            if missing:
                pytest.fail(
                    f"pg_partman {', '.join(missing)} not installed for PostgreSQL {sandbox.major}; "
                    "CI tests every supported version: run scripts/install-deps.sh",
                    pytrace=False,
                )
        # CREATE DATABASE ... TEMPLATE copies files: much faster than CREATE EXTENSION per test.
        sandbox.create_database(TEMPLATE, partman=True)
        broken: dict[str, str] = {}
        for version in _versions_to_test():
            try:
                sandbox.create_database(_template(version), partman=True, partman_version=version)
            except psycopg.Error as e:
                broken[version] = str(e).splitlines()[0]
        sandbox.partman_broken = broken  # type: ignore[attr-defined]
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def partman_version(request: pytest.FixtureRequest, cluster: Sandbox) -> str | None:
    """The pg_partman version this test case runs against (see ``pytest_generate_tests``), or
    None when none is installed. A version the server cannot load fails the test in CI, except
    4.x on PostgreSQL 17+, which pg_partman 4 predates (the README's support table says so)."""
    version: str | None = getattr(request, "param", None)
    if version is None:
        return None
    why = cluster.partman_broken.get(version)  # type: ignore[attr-defined]
    if why is not None:
        if _in_ci() and not (version.startswith("4.") and cluster.major >= 17):
            pytest.fail(f"pg_partman {version} cannot be created: {why}", pytrace=False)
        pytest.skip(f"pg_partman {version} does not run on PostgreSQL {cluster.major}: {why}")
    return version


@pytest.fixture
def partman(partman_version: str | None) -> str:
    """For tests that need pg_partman: its version; skips the test locally when missing."""
    if partman_version is None:
        pytest.skip("pg_partman is not installed")
    return partman_version


@pytest.fixture
def dsn(request: pytest.FixtureRequest, cluster: Sandbox) -> Iterator[str]:
    """A fresh database for this test, copied from the template of the test's pg_partman
    version (the default one for tests that do not ask), dropped afterwards."""
    name = f"t_{next(_db_counter):04d}"
    template = TEMPLATE
    if "partman_version" in request.fixturenames:
        version = request.getfixturevalue("partman_version")
        if version is not None:
            template = _template(version)
    yield cluster.create_database(name, partman=False, template=template)
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


# --- hypothesis profiles (tzgrid, issue 7 item 8) --------------------------------------------
# CI must be reproducible: the "ci" profile derandomizes (the same examples on every run, no
# example database) and prints the blob that replays a failure. Locally the "dev" profile
# searches at random, so new cases keep turning up; a failure found either way is pinned as an
# @example next to its test. HYPOTHESIS_PROFILE=ci|dev overrides the choice.


def _load_hypothesis_profile() -> None:
    from hypothesis import settings

    # Both from hypothesis' own defaults: under CI=true hypothesis has already loaded its
    # built-in "ci" profile, which "dev" must not inherit.
    base = settings.get_profile("default")
    settings.register_profile(
        "ci",
        base,
        derandomize=True,
        database=None,
        max_examples=300,
        deadline=None,
        print_blob=True,
    )
    settings.register_profile("dev", base, max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _in_ci() else "dev"))


_load_hypothesis_profile()
