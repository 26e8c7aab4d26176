"""Options every subcommand shares, and the one renderer for text and JSON."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar, cast

import click

from ..db import DEFAULT_CONNECT_TIMEOUT, ConnParams, parse_duration
from ..errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

DECLINED = 1  # the user said no (or Ctrl-C / end of input) at a prompt: nothing changed


def connection_options(f: F) -> F:
    """``-d -h -p -U`` as psql has them, plus ``--connect-timeout``; libpq reads PG*
    variables and .pgpass for the rest. The command receives them as one ``params``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        dbname: str | None,
        host: str | None,
        port: int | None,
        user: str | None,
        connect_timeout: str | None,
        **kwargs: Any,
    ) -> Any:
        params = ConnParams(
            dbname=dbname,
            host=host,
            port=port,
            user=user,
            connect_timeout=_seconds(connect_timeout),
        )
        return f(*args, params=params, **kwargs)

    for opt in reversed(
        [
            click.option("-d", "--dbname", help="Database name, conninfo string or URI."),
            click.option("-h", "--host", help="Server host or socket directory."),
            click.option("-p", "--port", type=int, help="Server port."),
            click.option("-U", "--username", "user", help="Role to connect as."),
            click.option(
                "--connect-timeout",
                metavar="DURATION",
                help=f"Give up a connection attempt after this long (whole seconds; "
                f"default: connect_timeout in -d, else PGCONNECT_TIMEOUT, else "
                f"{DEFAULT_CONNECT_TIMEOUT}s).",
            ),
        ]
    ):
        wrapper = opt(wrapper)
    return cast(F, wrapper)


def _seconds(text: str | None) -> int | None:
    if text is None:
        return None
    value = parse_duration(text)
    if value <= 0:
        raise UsageError(f"--connect-timeout must be positive: {text!r}")
    return max(1, math.ceil(value))


def attempt_duration(text: str) -> float:
    """``--lock-attempt``: one lock wait, what the application can feel."""
    value = parse_duration(text)
    if not 0.001 <= value <= 60:
        raise UsageError(f"--lock-attempt must be between 1ms and 60s: {text!r}")
    return value


def force_interval_option(f: F) -> F:
    return click.option(
        "--force-interval",
        is_flag=True,
        help="Use --interval even where it contradicts pg_partman's partition_interval or the "
        "interval the children follow.",
    )(f)


def format_option(f: F) -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Human-readable text, or JSON for machines.",
    )(f)


def jsonable(obj: Any) -> Any:
    """Dataclasses, datetimes and friends -> plain JSON values (the JSON twin of any report)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: jsonable(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.name.startswith("_")
        }
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


def echo_check_after(findings: list[dict[str, Any]]) -> None:
    """check's verdict on a table a command just changed, as fix and split print it."""
    worst = [f for f in findings if f["severity"] in ("warning", "critical", "unknown")]
    click.echo(f"  check afterwards: {'OK' if not worst else ', '.join(f['code'] for f in worst)}")
    for f in findings:
        click.echo(f"    {f['severity'].upper()} {f['code']}: {f['message']}")


def confirm_plan(summary: list[str]) -> bool:
    """Show what a command is about to do (stderr) and ask before it changes anything."""
    for line in summary:
        click.echo(line, err=True)
    return click.confirm("Proceed?", default=False, err=True)
