"""Keys, spans and names as people read them, and keys as JSON.

Shared by the diagnosis (messages), the CLI (tables) and the JSON renderer, so a bound
reads the same everywhere: in the grid's zone, as a date when it falls on midnight.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, time, timedelta
from typing import Any

from .inspect.catalog import Child, Key, Table
from .inspect.zones import zone_info


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
        x = x.astimezone(zone_info(zone))
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


def display_name(rel: Table | Child) -> str:
    """``schema.table`` as a DBA types it: each part quoted only when it has to be."""
    return ".".join(_quote_if_needed(p) for p in (rel.schema, rel.name))


def quote_name(part: str) -> str:
    """One identifier as PostgreSQL reads it back, safe on any line of output.

    The one quoting function for names in output (messages, SQL comments, JSON text): quoted
    only when it has to be; a name with a control character (a newline could end a ``--``
    comment in a printed plan and start a statement) or ``*/`` is written in PostgreSQL's
    ``U&"…"`` form, so the text stays on one line and still names the same relation.
    """
    if part and not part[0].isdigit() and part[0] != "$" and set(part) <= _PLAIN:
        return part
    if not any(_unsafe(ch) for ch in part) and "*/" not in part and "/*" not in part:
        return '"' + part.replace('"', '""') + '"'
    out = []
    for ch in part:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('""')
        elif _unsafe(ch) or ch in "*/":
            out.append(f"\\{ord(ch):04X}" if ord(ch) <= 0xFFFF else f"\\+{ord(ch):06X}")
        else:
            out.append(ch)
    return 'U&"' + "".join(out) + '"'


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "CZ" and ch != " "


_quote_if_needed = quote_name


def display_ident(part: str) -> str:
    """One identifier (a child's name) as ``display_name`` shows each part."""
    return quote_name(part)
