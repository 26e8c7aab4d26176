"""``targets.toml``: the databases one ``partguard metrics`` exporter probes, by name.

    [defaults]                      # optional: merged under every target's dsn
    dsn = "user=partguard_monitor sslmode=verify-full connect_timeout=3"

    [target.orders]
    dsn = "host=db1.internal dbname=orders"

    [target.billing]
    service = "billing"             # a section of pg_service.conf
    tables = ["public.invoices"]    # only these tables (default: every one)

Scrapers name a target (``/probe?target=orders``), never a connection string: what the
exporter may connect to is this file, nothing a URL can say. No password belongs here;
libpq finds it in ``~/.pgpass`` (or ``passfile``), a service file or ``PGPASSWORD``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import tomlfile
from .errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_KEYS = {"dsn", "service", "tables"}
_NO_PASSWORD = (
    "a password does not belong in this file; libpq reads it from ~/.pgpass "
    "(or passfile=), a service file or PGPASSWORD"
)


@dataclass(frozen=True)
class TargetSpec:
    name: str
    conninfo: str  # libpq conninfo without a password; application_name=partguard
    tables: tuple[str, ...] = ()


def load(path: str | Path) -> tuple[TargetSpec, ...]:
    return parse(tomlfile.read(path), str(path))


def parse(text: str, source: str = "targets.toml") -> tuple[TargetSpec, ...]:
    doc = tomlfile.parse(text, source)
    unknown = set(doc) - {"target", "defaults"}
    if unknown:
        raise UsageError(
            f"{source}: unknown section(s) {', '.join(sorted(unknown))}; "
            "expected [target.NAME] and [defaults]"
        )
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{source}: [defaults] must be a table")
    _check_keys(defaults, {"dsn"}, f"{source} [defaults]")
    base = _dsn(defaults.get("dsn", ""), f"{source} [defaults]")
    targets = doc.get("target", {})
    if not isinstance(targets, dict) or not targets:
        raise UsageError(
            f'{source}: no targets; add e.g. [target.orders] with dsn = "host=... dbname=..."'
        )
    return tuple(_spec(name, entry, base, source) for name, entry in targets.items())


def _spec(name: str, entry: Any, base: dict[str, Any], source: str) -> TargetSpec:
    where = f"{source} [target.{name}]"
    if not _NAME.match(name):
        raise UsageError(f"{where}: a target name is letters, digits, '_', '.' and '-'")
    if not isinstance(entry, dict):
        raise UsageError(f'{where}: must be a table with dsn = "..." or service = "..."')
    _check_keys(entry, _KEYS, where)
    if "dsn" not in entry and "service" not in entry:
        raise UsageError(f'{where}: needs dsn = "host=... dbname=..." or service = "NAME"')
    params = {**base, **_dsn(entry.get("dsn", ""), where)}
    service = entry.get("service")
    if service is not None:
        if not isinstance(service, str) or not service:
            raise UsageError(f"{where}: service must be the name of a pg_service.conf section")
        params["service"] = service
    params.setdefault("application_name", "partguard")
    tables = entry.get("tables", [])
    if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
        raise UsageError(f'{where}: tables must be a list of names, e.g. ["public.events"]')
    return TargetSpec(name, make_conninfo("", **params), tuple(tables))


def _dsn(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, str):
        raise UsageError(f"{where}: dsn must be a string: a conninfo, a URI or a database name")
    if not value.strip():
        return {}
    if "=" not in value and not value.startswith(("postgresql://", "postgres://")):
        return {"dbname": value}  # a database name, as -d takes it
    try:
        params = dict(conninfo_to_dict(value))
    except psycopg.ProgrammingError as exc:
        first = (str(exc).strip().splitlines() or ["unparsable"])[0]
        raise UsageError(f"{where}: dsn is not a valid conninfo: {first}") from None
    if "password" in params:
        raise UsageError(f"{where}: {_NO_PASSWORD}")
    return params


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    if "password" in d:
        raise UsageError(f"{where}: {_NO_PASSWORD}")
    extra = set(d) - allowed
    if extra:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(sorted(extra))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
