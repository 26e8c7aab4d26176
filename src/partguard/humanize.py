"""Keys, spans and names as people read them, and keys as JSON.

Shared by the diagnosis (messages), the CLI (tables) and the JSON renderer, so a bound
reads the same everywhere: in the grid's zone, as a date when it falls on midnight.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .inspect.catalog import Key, Table


def iso(x: Key | None) -> str | int | None:
    """A key for JSON: ISO 8601 (with offset for timestamptz), ints as they are."""
    if x is None or isinstance(x, int):
        return x
    return x.isoformat()


def fmt_key(x: Key | None, zone: str | None = None) -> str:
    """A key for humans, in ``zone``: dates when on midnight, else minutes (or seconds)."""
    if x is None:
        return "unbounded"
    if isinstance(x, int) or not isinstance(x, datetime):
        return str(x)
    if x.tzinfo is not None and zone:
        x = x.astimezone(ZoneInfo(zone))
    if x.time() == time():
        return x.date().isoformat()
    text = x.strftime("%Y-%m-%d %H:%M:%S" if x.second or x.microsecond else "%Y-%m-%d %H:%M")
    if x.tzinfo is not None and not zone:
        text += x.strftime("%z")[:3]
    return text


def fmt_delta(d: timedelta) -> str:
    """Signed '2 days 03:15' style, the way PostgreSQL prints intervals."""
    sign, d = ("-" if d < timedelta(0) else ""), abs(d)
    hours, rest = divmod(int(d.total_seconds()) - d.days * 86400, 3600)
    text = f"{hours:02d}:{rest // 60:02d}" + (f":{rest % 60:02d}" if rest % 60 else "")
    if d.days:
        text = f"{d.days} day{'s' if d.days != 1 else ''} {text}"
    return sign + text


def fmt_offset(off: Any) -> str:
    if isinstance(off, timedelta):
        return ("+" if off >= timedelta(0) else "") + fmt_delta(off) + " off the grid"
    return f"{int(off):+d} off the grid"


def offset_json(off: Any) -> float | int:
    return off.total_seconds() if isinstance(off, timedelta) else int(off)


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")


def display_name(table: Table) -> str:
    """``schema.table`` as a DBA types it: each part quoted only when it has to be."""
    return ".".join(_quote_if_needed(p) for p in (table.schema, table.name))


def _quote_if_needed(part: str) -> str:
    if part and not part[0].isdigit() and part[0] != "$" and set(part) <= _PLAIN:
        return part
    return '"' + part.replace('"', '""') + '"'


def display_ident(part: str) -> str:
    """One identifier (a child's name) as ``display_name`` shows each part."""
    return _quote_if_needed(part)
