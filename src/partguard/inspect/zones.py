"""Time zones as PostgreSQL reads them, and the tzinfo partguard computes with.

A zone reaches partguard from a user (``--tz``, fix-partitioned-table's ``<timezone>``) or from
the server (the role/database default TimeZone partman computes in). Its meaning is PostgreSQL's,
and that is not Python's: ``SET TimeZone = '+01'`` is a number of hours, one hour *east* of
Greenwich (ISO sign), while ``'UTC+01'`` and ``'+01:00'`` are POSIX zone specs, one hour *west*;
zoneinfo knows none of the three. So a given name is resolved by the server (``resolve``) into
one both sides read alike: a tz database name as PostgreSQL spells it, ``Etc/GMT-1`` for a fixed
whole-hour offset (POSIX signs: that is UTC+01), or PostgreSQL's own spelling of any other fixed
offset, ``<+05:45>-05:45``. ``zone_info`` turns such a name into a tzinfo, with no database.

    >>> zone_info("<+05:45>-05:45").utcoffset(None)
    datetime.timedelta(seconds=20700)
    >>> fixed_zone_name(timedelta(hours=1)), zone_label("Etc/GMT-1")
    ('Etc/GMT-1', 'UTC+01:00')
"""

from __future__ import annotations

import functools
import logging
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from ..errors import UsageError

if TYPE_CHECKING:
    from ..db import Conn

log = logging.getLogger(__name__)

_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)
# The span zones are compared and checked over: every partition bound partguard will meet.
_FROM = datetime(1970, 1, 4, 12, tzinfo=UTC)
_TO = datetime(2060, 1, 1, tzinfo=UTC)
_OFFSET = r"([+-])(\d{2})(?::(\d{2}))?(?::(\d{2}))?"
_FIXED = re.compile(rf"<{_OFFSET}>{_OFFSET}")


class UnknownZone(UsageError):
    """PostgreSQL does not accept the zone, or partguard cannot compute in it."""


def _hms(sign: str, h: str, m: str | None, s: str | None) -> timedelta:
    td = timedelta(hours=int(h), minutes=int(m or 0), seconds=int(s or 0))
    return -td if sign == "-" else td


@functools.lru_cache(maxsize=256)
def zone_info(name: str | None) -> tzinfo:
    """The tzinfo for a zone name partguard uses (see the module docstring); None is UTC."""
    if name is None:
        return UTC
    m = _FIXED.fullmatch(name)
    if m is not None:
        east, west = _hms(*m.group(1, 2, 3, 4)), _hms(*m.group(5, 6, 7, 8))
        if east == -west and abs(east) < _DAY:
            return timezone(east, name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZone(f"unknown time zone {name!r}") from None


def fixed_zone_name(offset: timedelta) -> str:
    """A name PostgreSQL and zoneinfo both read as this fixed offset east of Greenwich."""
    secs = int(offset.total_seconds())
    if secs == 0:
        return "UTC"
    if secs % 3600 == 0 and -12 <= secs // 3600 <= 14:
        return f"Etc/GMT{-secs // 3600:+d}"  # POSIX signs: Etc/GMT-1 is one hour east
    return f"<{_offset_text(secs)}>{_offset_text(-secs)}"


def _offset_text(secs: int) -> str:
    sign, secs = ("-" if secs < 0 else "+"), abs(secs)
    text = f"{sign}{secs // 3600:02d}:{secs // 60 % 60:02d}"
    return text + f":{secs % 60:02d}" if secs % 60 else text


def zone_label(zone: str) -> str:
    """'Etc/GMT-1' is UTC+01 (POSIX signs are inverted): say it the way humans do."""
    if zone.startswith("Etc/GMT") and len(zone) > 7:
        hours = -int(zone[7:])
        return f"UTC{hours:+03d}:00"
    m = _FIXED.fullmatch(zone)
    if m is not None:
        return "UTC" + zone[1 : zone.index(">")]
    return zone


@functools.lru_cache(maxsize=256)
def same_zone(a: str | None, b: str | None) -> bool:
    """Whether two names are the same zone over 1970-2060 (aliases: UTC, Etc/UTC, +00)."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    za, zb = zone_info(a), zone_info(b)
    t, last = _FROM, None
    while t < _TO:
        off = t.astimezone(za).utcoffset()
        if off != t.astimezone(zb).utcoffset():
            return False
        if (
            last is not None
            and off != last
            and _change(za, t - _WEEK, t) != _change(zb, t - _WEEK, t)
        ):
            return False  # both changed offset during the week, at different moments
        last = off
        t += _WEEK
    return True


def _change(zone: tzinfo, lo: datetime, hi: datetime) -> datetime:
    """The first second in (lo, hi] with hi's offset (zones change offset at most once a week)."""
    target = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return hi


def resolve(conn: Conn, given: str) -> str:
    """The zone PostgreSQL means by ``given``, as a name partguard computes with.

    Asked in a transaction that is rolled back, so the session keeps its own TimeZone. The
    server's offsets over 1970-2060 are checked against Python's reading of the name; UnknownZone
    (exit 64) when the server refuses it, or when its meaning is beyond a tzinfo partguard
    has (a POSIX rule with daylight saving, an offset of a day or more).
    """
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('TimeZone', %s, true)", (given,))
            row = conn.execute(
                """SELECT current_setting('TimeZone'),
                          array_agg(extract(timezone FROM to_timestamp(%s + g * %s::bigint))::int ORDER BY g)
                   FROM generate_series(0, %s) g""",
                (int(_FROM.timestamp()), int(_WEEK.total_seconds()), (_TO - _FROM) // _WEEK),
            ).fetchone()
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.InvalidTextRepresentation):
        raise UnknownZone(f"unknown time zone {given!r} (PostgreSQL does not accept it)") from None
    assert row is not None
    server_name, offsets = str(row[0]), [timedelta(seconds=s) for s in row[1]]
    samples = [_FROM + i * _WEEK for i in range(len(offsets))]
    try:  # a tz database name stays as the server spells it ('<+01>-01' is not one)
        py: tzinfo | None = ZoneInfo(server_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        py = None
    if py is not None:
        wrong = next(
            (
                t
                for t, off in zip(samples, offsets, strict=True)
                if t.astimezone(py).utcoffset() != off
            ),
            None,
        )
        if wrong is None:
            return _logged(given, server_name, offsets)
        if len(set(offsets)) > 1:
            raise UnknownZone(
                f"time zone {given!r}: partguard's zone data (Python zoneinfo) disagrees "
                f"with the server's on {wrong:%Y-%m-%d}; update tzdata on one of them"
            )
    if len(set(offsets)) == 1:
        if abs(offsets[0]) >= _DAY:
            hours = offsets[0] / timedelta(hours=1)
            raise UnknownZone(
                f"time zone {given!r} is {hours:+g} hours to PostgreSQL (it reads a "
                "number as hours); write +01 for one hour east of Greenwich"
            )
        return _logged(given, fixed_zone_name(offsets[0]), offsets)
    raise UnknownZone(
        f"time zone {given!r} is a POSIX rule with daylight saving to PostgreSQL "
        f"({server_name}); give a tz database name instead, such as Europe/Berlin"
    )


def _logged(given: str, name: str, offsets: list[timedelta]) -> str:
    """Say what the server made of ``given``; loudly when its sign reads the POSIX way round."""
    if given == name:
        return name
    off = offsets[0] if len(set(offsets)) == 1 else None
    sign = re.search(r"[+-]", given)
    if off and sign and (sign.group() == "+") != (off > timedelta(0)):
        log.warning(
            "PostgreSQL reads time zone %r as a POSIX zone, %s (POSIX offsets count west of "
            "Greenwich); for %s write %r",
            given,
            zone_label(name),
            zone_label(fixed_zone_name(-off)),
            fixed_zone_name(-off),
        )
    else:
        log.info("time zone %r is %s to PostgreSQL", given, zone_label(name))
    return name


def session_zone(conn: Conn, name: str) -> str:
    """A zone name the server gave (the role/database default TimeZone) as one partguard
    computes with: as it is when zoneinfo reads it, else resolved like user input."""
    try:
        zone_info(name)
        return name
    except UnknownZone:
        return resolve(conn, name)
