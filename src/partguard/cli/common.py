"""Options every subcommand shares, and the one renderer for text and JSON."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

import click

from ..db import ConnParams

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(f: F) -> F:
    """``-d -h -p -U`` as psql has them; libpq reads PG* variables and .pgpass for the rest."""
    for opt in reversed(
        [
            click.option("-d", "--dbname", help="Database name, conninfo string or URI."),
            click.option("-h", "--host", help="Server host or socket directory."),
            click.option("-p", "--port", type=int, help="Server port."),
            click.option("-U", "--username", "user", help="Role to connect as."),
        ]
    ):
        f = opt(f)
    return f


def format_option(f: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
        help="Human-readable text, or JSON for machines.",
    )(f)


def conn_params(dbname: str | None, host: str | None, port: int | None, user: str | None) -> ConnParams:
    return ConnParams(dbname=dbname, host=host, port=port, user=user)


def jsonable(obj: Any) -> Any:
    """Dataclasses, datetimes and friends -> plain JSON values (the JSON twin of any report)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, Enum):
        return obj.value
    return obj


def emit_json(obj: Any) -> None:
    json.dump(jsonable(obj), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
