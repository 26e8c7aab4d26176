"""Interval arithmetic for partition grids: pure, no database.

partman lays children on ``anchor + k * interval``, evaluated as PostgreSQL evaluates
``timestamptz + interval`` in the session's TimeZone. Reproducing it here lets partguard tell
on-grid children from strays and name children as partman would, with no round trips.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from fractions import Fraction
from typing import Literal, TypeAlias, cast, overload

from ..errors import UsageError
from .zones import zone_info

# The partition key as partguard reads it: the one definition (catalog re-exports it).
Key: TypeAlias = datetime | date | int
_Mode = Literal["abs", "wall", "date"]

_US = 1_000_000
_DAY_US = 86_400 * _US
_MONTH_APPROX_US = 2_629_746 * _US  # 365.2425 days / 12: the mean Gregorian month
_NAMEDATALEN = 63


@dataclass(frozen=True)
class Interval:
    """PostgreSQL's interval: months, days and microseconds are independent fields, because
    a month or a day has no fixed length once time zones and calendars are involved."""

    months: int = 0
    days: int = 0
    micros: int = 0

    def is_zero(self) -> bool:
        return self.months == 0 and self.days == 0 and self.micros == 0

    def __str__(self) -> str:
        """IntervalStyle ``postgres`` output, so messages match what psql users see."""
        parts: list[str] = []
        neg = False
        years, mons = divmod(abs(self.months), 12)
        sign = -1 if self.months < 0 else 1
        for value, unit in ((sign * years, "year"), (sign * mons, "mon"), (self.days, "day")):
            if value:
                plus = "+" if neg and value > 0 else ""
                parts.append(f"{plus}{value} {unit}{'' if value == 1 else 's'}")
                neg = value < 0
        if self.micros or not parts:
            secs, us = divmod(abs(self.micros), _US)
            text = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
            if us:
                text += f".{us:06d}".rstrip("0")
            parts.append(("-" if self.micros < 0 else "+" if neg else "") + text)
        return " ".join(parts)


_PARTMAN_NAMES = {
    "yearly": Interval(months=12), "quarterly": Interval(months=3), "monthly": Interval(months=1),
    "weekly": Interval(days=7), "daily": Interval(days=1), "hourly": Interval(micros=3600 * _US),
    "half-hour": Interval(micros=1800 * _US), "quarter-hour": Interval(micros=900 * _US),
}  # fmt: skip
# unit -> (field, multiplier); field 0 = months, 1 = days, 2 = micros
_UNIT_TABLE = (
    ("microsecond microseconds us usec usecs", 2, 1),
    ("millisecond milliseconds ms msec msecs", 2, 1000),
    ("second seconds s sec secs", 2, _US), ("minute minutes m min mins", 2, 60 * _US),
    ("hour hours h hr hrs", 2, 3600 * _US), ("day days d", 1, 1), ("week weeks w", 1, 7),
    ("month months mon mons", 0, 1), ("year years y yr yrs", 0, 12), ("decade decades", 0, 120),
    ("century centuries", 0, 1200),
)  # fmt: skip
_UNITS = {name: (f, mult) for names, f, mult in _UNIT_TABLE for name in names.split()}
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUM_UNIT = re.compile(rf"({_NUM})([a-z]*)")
_HINT = " (try e.g. '1 day', '01:00:00', '3 mons', 'monthly')"
_HMS = re.compile(r"([+-]?)(\d+):(\d{1,2})(?::(\d{1,2}(?:\.\d*)?))?")


def parse_interval(text: str) -> Interval:
    """Parse PostgreSQL interval text (output or input style) or a partman interval name.

    Only strictly positive intervals are accepted: a zero or negative partition interval is
    always an operator mistake, and failing here gives a clear message instead of a hang.
    """
    s = text.strip().lower()
    if s in _PARTMAN_NAMES:
        return _PARTMAN_NAMES[s]
    acc = [Fraction(0), Fraction(0), Fraction(0)]  # months, days, micros
    tokens = s.removeprefix("@").split()
    i, seen = 0, False
    while i < len(tokens):
        tok = tokens[i]
        if (hms := _HMS.fullmatch(tok)) is not None:
            sg, h, mi, sec = hms.groups()
            us = (int(h) * 3600 + int(mi) * 60) * _US + Fraction(sec or "0") * _US
            acc[2] += -us if sg == "-" else us
        elif (nu := _NUM_UNIT.fullmatch(tok)) is not None:
            num, unit = Fraction(nu.group(1)), nu.group(2)
            if not unit and i + 1 < len(tokens):
                i += 1
                unit = tokens[i]
            if unit not in _UNITS:
                raise UsageError(f"invalid interval {text!r}: unit {unit or '(none)'!r}{_HINT}")
            f, mult = _UNITS[unit]
            acc[f] += num * mult
        else:
            raise UsageError(f"invalid interval {text!r}: cannot read {tok!r}{_HINT}")
        seen = True
        i += 1
    if not seen:
        raise UsageError(f"invalid interval {text!r}{_HINT}")
    # Cascade fractions down like PostgreSQL: 1.5 mons = 1 mon 15 days, 1.5 days = 1 day 12:00.
    months = int(acc[0])
    days_f = acc[1] + (acc[0] - months) * 30
    days = int(days_f)
    micros = round(acc[2] + (days_f - days) * _DAY_US)
    iv = Interval(months, days, micros)
    _check_step(iv, text)
    return iv


def _check_step(iv: Interval, what: object) -> None:
    if iv.months < 0 or iv.days < 0 or iv.micros < 0 or iv.is_zero():
        raise UsageError(f"partition interval must be positive, got {what!s}")


def _zone(tz: str | None) -> tzinfo:
    """A tz database name or a fixed offset as ``zones`` names it ('<+05:45>-05:45')."""
    return zone_info(tz)


# Zones with one offset forever (tzdata's UTC aliases and the Etc/GMT±N zones).
_STEADY_ZONE = re.compile(r"(?:Etc/)?(?:UTC|UCT|GMT|Universal|Zulu|Greenwich)|Etc/GMT[+-]\d{1,2}")


def _steady(tz: str | None) -> bool:
    """Whether local wall time in ``tz`` never jumps (None: naive keys, no zone at all)."""
    return tz is None or _STEADY_ZONE.fullmatch(tz) is not None


def _localize(wall: datetime, zone: tzinfo) -> datetime:
    """Local wall time -> UTC instant, resolving DST like PostgreSQL: a time that occurs twice
    takes the later (standard-time) reading, a time in a gap the offset before the gap."""
    later = wall.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(fold=0)
    if later.astimezone(zone).replace(tzinfo=None) == wall:
        return later
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _exists(wall: datetime, zone: tzinfo) -> bool:
    """Whether the local wall time occurs at all (it does not inside a forward jump)."""
    return any(
        wall.replace(tzinfo=zone, fold=f).astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        == wall
        for f in (0, 1)
    )


# How far back to look for the offset before a forward jump: the largest jumps skipped a
# whole calendar day (Pacific/Apia 2011, Pacific/Kwajalein 1993).
_JUMP_LOOKBACK = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=25), timedelta(hours=49))


def _wall_reading(instant: datetime, zone: tzinfo) -> datetime:
    """The wall time a boundary at ``instant`` stands for, the inverse of ``_localize``.

    Usually that is its local reading. But an instant just after a forward jump is also what
    PostgreSQL makes of a wall time inside the jump (read with the offset before it): in
    Asia/Kathmandu, +05:30 -> +05:45 at 1986-01-01 00:00, the quarter boundary "00:00" is the
    instant shown as 00:15. A grid anchored there was built on 00:00, and every later bucket
    must start at 00:00 again, not at 00:15: so the nonexistent reading wins.
    """
    local = instant.astimezone(zone)
    after = local.utcoffset()
    assert after is not None
    tried: set[timedelta] = set()
    for back in _JUMP_LOOKBACK:
        before = (instant - back).astimezone(zone).utcoffset()
        if before is None or before >= after or before in tried:
            continue
        tried.add(before)
        wall = (instant + before).replace(tzinfo=None)
        if not _exists(wall, zone) and _localize(wall, zone) == instant:
            return wall
    return local.replace(tzinfo=None)


def _add_months(d: datetime, n: int) -> datetime:
    """Month arithmetic clamping the day like PostgreSQL (Jan 31 + 1 mon = Feb 28/29)."""
    y, m = divmod(d.month - 1 + n, 12)
    year = d.year + y
    return d.replace(year=year, month=m + 1, day=min(d.day, calendar.monthrange(year, m + 1)[1]))


@dataclass(frozen=True)
class TimeGrid:
    """Buckets of `step` in time zone `tz` (None = naive timestamps / dates), anchored at
    `anchor` (one bucket boundary).

    Boundary k is ``anchor + k * step``. Steps with months or days are added to local wall
    time and then localized (so a Berlin day can be 23 h or 25 h); pure sub-day steps are
    added to the absolute instant, as ``timestamptz + '1 hour'`` does. Aware results are in
    ZoneInfo(tz): subtract or compare them after ``.astimezone(UTC)``, since Python
    compares same-tzinfo datetimes by wall time.
    """

    step: Interval
    tz: str | None
    anchor: datetime | date
    _zone: tzinfo = field(init=False, repr=False, compare=False)
    _wall0: datetime = field(init=False, repr=False, compare=False)
    _abs0: datetime = field(init=False, repr=False, compare=False)
    # The step as a timedelta when its length is fixed: no months, and no days unless the
    # zone's offset never changes (a UTC day is always 24 h). Fixed steps are multiplication;
    # the others localize every boundary.
    _fixed: timedelta | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_step(self.step, self.step)
        s = self.step
        fixed = (
            timedelta(days=s.days, microseconds=s.micros)
            if s.months == 0 and (s.days == 0 or _steady(self.tz))
            else None
        )
        object.__setattr__(self, "_fixed", fixed)
        zone = _zone(self.tz)
        a = self.anchor
        if isinstance(a, datetime) and a.tzinfo is not None:
            abs0 = a.astimezone(UTC)
            wall0 = _wall_reading(abs0, zone)
        else:
            wall0 = a if isinstance(a, datetime) else datetime.combine(a, time())
            abs0 = _localize(wall0, zone)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_wall0", wall0)
        object.__setattr__(self, "_abs0", abs0)

    def _wall_b(self, k: int) -> datetime:
        s = self.step
        d = _add_months(self._wall0, k * s.months) if s.months else self._wall0
        return d + timedelta(days=k * s.days, microseconds=k * s.micros)

    def _abs_b(self, k: int) -> datetime:
        if (td := self._fixed) is not None:
            return self._abs0 + k * td
        return _localize(self._wall_b(k), self._zone)

    def _split(self, x: Key) -> tuple[_Mode, datetime]:
        """Map a key to the coordinate it is compared in: UTC instant, wall time, or a date."""
        if isinstance(x, int):
            raise TypeError(f"integer key {x!r} on a time grid")
        if isinstance(x, datetime):
            if x.tzinfo is not None:
                return "abs", x.astimezone(UTC)
            return "wall", x
        if self.step.micros or self._wall0.time() != time():
            raise UsageError(f"a grid of {self.step} anchored at {self.anchor} has no date bounds")
        return "date", datetime.combine(x, time())

    def _out(self, mode: _Mode, v: datetime) -> date:
        return v.astimezone(self._zone) if mode == "abs" else v.date() if mode == "date" else v

    def _locate(self, x: Key) -> tuple[_Mode, datetime, int, Callable[[int], datetime]]:
        """The largest k with boundary(k) <= x, in O(1): estimate k from the mean step
        length, then correct by the few steps DST and uneven months can put it off."""
        mode, v = self._split(x)
        b = self._abs_b if mode == "abs" else self._wall_b
        td = self._fixed
        if td is not None:
            return mode, v, (v - (self._abs0 if mode == "abs" else self._wall0)) // td, b
        wall = v.astimezone(self._zone).replace(tzinfo=None) if mode == "abs" else v
        s = self.step
        approx = s.months * _MONTH_APPROX_US + s.days * _DAY_US + s.micros
        k = (wall - self._wall0) // timedelta(microseconds=approx)
        while b(k) > v:
            k -= 1
        while b(k + 1) <= v:
            k += 1
        return mode, v, k, b

    @overload
    def floor(self, x: datetime) -> datetime: ...
    @overload
    def floor(self, x: Key) -> date: ...
    def floor(self, x: Key) -> date:
        """Start of the bucket containing x."""
        mode, _, k, b = self._locate(x)
        return self._out(mode, b(k))

    @overload
    def next(self, x: datetime) -> datetime: ...
    @overload
    def next(self, x: Key) -> date: ...
    def next(self, x: Key) -> date:
        """The first boundary after x (for a boundary: the end of its bucket)."""
        mode, _, k, b = self._locate(x)
        return self._out(mode, b(k + 1))

    @overload
    def prev(self, x: datetime) -> datetime: ...
    @overload
    def prev(self, x: Key) -> date: ...
    def prev(self, x: Key) -> date:
        """The last boundary before x (for a boundary: the start of the bucket before)."""
        mode, v, k, b = self._locate(x)
        while b(k) >= v:
            k -= 1
        return self._out(mode, b(k))

    def is_aligned(self, x: Key) -> bool:
        _, v, k, b = self._locate(x)
        return b(k) == v

    def _on_fixed_grid(self, keys: Sequence[date]) -> list[bool]:
        """``is_aligned`` for many keys on a fixed-length step: boundary k is base + k * step,
        so a key is one exactly when its distance from the base divides evenly."""
        td, zero, out = self._fixed, timedelta(0), []
        assert td is not None
        for x in keys:
            mode, v = self._split(x)
            out.append((v - (self._abs0 if mode == "abs" else self._wall0)) % td == zero)
        return out

    def offset(self, x: Key) -> timedelta:
        """How far x lies past its bucket's start (absolute time for aware keys)."""
        _, v, k, b = self._locate(x)
        return v - b(k)

    @overload
    def buckets(self, lo: datetime, hi: datetime) -> Iterator[tuple[datetime, datetime]]: ...
    @overload
    def buckets(self, lo: Key, hi: Key) -> Iterator[tuple[date, date]]: ...
    def buckets(self, lo: Key, hi: Key) -> Iterator[tuple[date, date]]:
        """Every bucket intersecting [lo, hi), in order, as (start, end) pairs."""
        mode, v, k, b = self._locate(lo)
        hmode, hv = self._split(hi)
        if hmode != mode:
            raise UsageError(f"bucket range mixes key kinds: {lo!r} .. {hi!r}")
        start = b(k) if v < hv else hv
        while start < hv:
            k += 1
            end = b(k)
            if end > start:  # a zone that skipped a whole day can make a bucket empty
                yield self._out(mode, start), self._out(mode, end)
            start = end


@dataclass(frozen=True)
class IntGrid:
    """Integer buckets ``[anchor + k*step, anchor + (k+1)*step)``, as partman's id partitioning."""

    step: int
    anchor: int = 0

    def __post_init__(self) -> None:
        if self.step <= 0:
            raise UsageError(f"partition interval must be positive, got {self.step}")

    # Methods take any Key, as TimeGrid's do, so code holding a ``Grid`` and a ``Key`` calls
    # either grid alike; a time key here is a bug and raises TypeError.
    def floor(self, x: Key) -> int:
        return self.anchor + (int_key(x) - self.anchor) // self.step * self.step

    def next(self, x: Key) -> int:
        return self.floor(x) + self.step

    def prev(self, x: Key) -> int:
        f = self.floor(x)
        return f - self.step if f == x else f

    def is_aligned(self, x: Key) -> bool:
        return (int_key(x) - self.anchor) % self.step == 0

    def offset(self, x: Key) -> int:
        return (int_key(x) - self.anchor) % self.step

    def buckets(self, lo: Key, hi: Key) -> Iterator[tuple[int, int]]:
        start, end = self.floor(lo), int_key(hi)
        while start < end:
            yield start, start + self.step
            start += self.step


Grid: TypeAlias = TimeGrid | IntGrid


def count_buckets(grid: Grid, lo: Key, hi: Key) -> int:
    """How many buckets intersect ``[lo, hi)``, in O(1): what ``len(list(grid.buckets(lo, hi)))``
    would be, without making the list (a zone that skipped a whole day can make it one more).

    Planners ask this before they lay children, so an interval far too fine for the range
    (one second over days) is refused at once instead of filling memory.
    """
    if isinstance(grid, IntGrid):
        first, end = grid.floor(lo), int_key(hi)
        return max(0, -(-(end - first) // grid.step))
    mode, v, k_lo, _ = grid._locate(lo)
    hmode, hv = grid._split(hi)
    if hmode != mode:
        raise UsageError(f"bucket range mixes key kinds: {lo!r} .. {hi!r}")
    if hv <= v:
        return 0
    _, _, k_hi, b = grid._locate(hi)
    return k_hi - k_lo + (0 if b(k_hi) == hv else 1)


def int_key(x: Key) -> int:
    """``x`` as the integer it must be (an integer key's bound); TypeError on a time key."""
    if isinstance(x, int):
        return x
    raise TypeError(f"expected an integer key, got {x!r}")


def time_key(x: Key) -> date:
    """``x`` as the date or datetime it must be (a time key's bound); TypeError on an integer."""
    if isinstance(x, int):
        raise TypeError(f"expected a time key, got the integer {x!r}")
    return x


def key_lt(a: Key, b: Key) -> bool:
    """``a < b`` for two keys of one kind; across kinds a TypeError, as ``<`` raises."""
    if isinstance(a, int) and isinstance(b, int):
        return a < b
    if isinstance(a, date) and isinstance(b, date):
        return a < b
    raise TypeError(f"cannot compare keys {a!r} and {b!r}")


def key_le(a: Key, b: Key) -> bool:
    """``a <= b`` for two keys of one kind; across kinds a TypeError, as ``<=`` raises."""
    if isinstance(a, int) and isinstance(b, int):
        return a <= b
    if isinstance(a, date) and isinstance(b, date):
        return a <= b
    raise TypeError(f"cannot compare keys {a!r} and {b!r}")


def on_grid(grid: Grid, keys: Sequence[Key]) -> list[bool]:
    """``grid.is_aligned`` for many keys at once, e.g. every bound of a table's children.

    A table's bounds are mostly adjacent boundaries, so one walk along the grid from the
    smallest to the largest (one boundary computed per step) is several times cheaper than
    locating each key on its own; a sparse span (a child from 1970 to 2100 on a daily grid)
    falls back to per-key lookups.
    """
    if isinstance(grid, TimeGrid) and grid._fixed is not None:
        return grid._on_fixed_grid(cast(Sequence[date], keys))  # a remainder each: no walk
    if isinstance(grid, IntGrid) or len(keys) < 8:
        return [grid.is_aligned(k) for k in keys]
    ks = cast(list[date], list(keys))
    limit, seen = 4 * len(ks) + 64, set()
    end: date | None = None
    for n, (start, _end) in enumerate(grid.buckets(min(ks), max(ks))):
        if n > limit:
            return [grid.is_aligned(k) for k in ks]
        seen.add(_utc_key(start))
    if end is None:
        return [grid.is_aligned(k) for k in ks]
    seen.add(_utc_key(end))
    return [_utc_key(k) in seen for k in ks]


def _utc_key(x: date) -> date:
    """Aware datetimes compare by instant but hash safely only when normalised to UTC."""
    return x.astimezone(UTC) if isinstance(x, datetime) and x.tzinfo is not None else x


def default_anchor(step: Interval, tz: str | None) -> datetime:
    """A boundary on the lattice pg_partman would use (date_trunc of the step's natural unit).

    Sub-day steps that divide a day anchor at 2000-01-01 00:00 local rather than 1970: they
    are added in absolute time, so the anchor's UTC offset matters, and zones such as
    Asia/Kathmandu or Asia/Singapore had a different one in 1970 than today.
    """
    zone = _zone(tz)
    _check_step(step, step)
    if step.months == 0 and step.days == 0 and _DAY_US % step.micros == 0:
        wall = datetime(2000, 1, 1)  # an hour (and day, month, year) boundary
    elif step.months == 0 and step.micros == 0 and step.days % 7 == 0:
        wall = datetime(1969, 12, 29)  # a Monday, like date_trunc('week')
    else:  # day, month, quarter and year steps, and any other step: the local epoch
        wall = datetime(1970, 1, 1)
    return wall if tz is None else _localize(wall, zone).astimezone(zone)


def time_grid(step: Interval, tz: str | None, anchor: datetime | date | None = None) -> TimeGrid:
    """Build a grid, defaulting the anchor to partman's; UsageError on a bad zone or step."""
    return TimeGrid(step, tz, default_anchor(step, tz) if anchor is None else anchor)


_TOKENS = ("HH24", "IYYY", "YYYY", "IW", "MM", "DD", "MI", "SS", "Q")  # longest first
_FORMAT_TOKEN = re.compile(
    r'"((?:[^"\\]|\\.)*)"?|' + "|".join(_TOKENS) + "|.", re.IGNORECASE | re.DOTALL
)


def _render(tok: str, d: date) -> str:
    t = d.time() if isinstance(d, datetime) else time()
    iso = d.isocalendar()
    values = {
        "YYYY": f"{d.year:04d}", "MM": f"{d.month:02d}", "DD": f"{d.day:02d}",
        "HH24": f"{t.hour:02d}", "MI": f"{t.minute:02d}", "SS": f"{t.second:02d}",
        "IYYY": f"{iso.year:04d}", "IW": f"{iso.week:02d}", "Q": str((d.month - 1) // 3 + 1),
    }  # fmt: skip
    return values[tok]


def child_suffix(start: Key, datetime_string: str | None) -> str:
    """Render `start` with the to_char subset partman uses for child names.

    The time is rendered as given: pass it already converted to the grid's zone, as partman
    formats in the session's TimeZone.
    """
    if isinstance(start, int):
        return str(start)
    if datetime_string is None:
        raise UsageError(f"a datetime_string is needed to name a child starting at {start}")
    out: list[str] = []
    for m in _FORMAT_TOKEN.finditer(datetime_string):
        tok = m.group()
        if tok.startswith('"'):  # quoted literal; a backslash escapes the next character
            out.append(re.sub(r"\\(.)", r"\1", m.group(1), flags=re.DOTALL))
        else:
            out.append(_render(tok.upper(), start) if tok.upper() in _TOKENS else tok)
    return "".join(out)


def child_name(parent: str, start: Key, datetime_string: str | None, prefix: str = "_p") -> str:
    """parent + prefix + suffix, cutting `parent` so the whole fits PostgreSQL's 63-byte
    identifiers (as partman's check_name_length does): the suffix carries the bound, so it
    must survive intact, and a cut never splits a UTF-8 character."""
    suffix = prefix + child_suffix(start, datetime_string)
    room = _NAMEDATALEN - len(suffix.encode())
    if room < 0:
        raise UsageError(f"child suffix {suffix!r} alone exceeds {_NAMEDATALEN} bytes")
    return parent.encode()[:room].decode(errors="ignore") + suffix


def partman_datetime_string(step: Interval, major: int) -> str:
    """The datetime_string partman's create_parent picks for `step` (major version 4 or 5).

    Intervals compare as PostgreSQL does (1 mon = 30 days). For 4.x, 3 months and 7 days map
    to partman's 'quarterly' and 'weekly' formats; partman only chose those when given the
    names, so prefer part_config.datetime_string when it is available.
    """
    span = (step.months * 30 + step.days) * _DAY_US + step.micros  # PostgreSQL's ordering
    if major >= 5:
        return "YYYYMMDD" if span >= _DAY_US else "YYYYMMDD_HH24MISS"
    if step == Interval(months=3):
        return 'YYYY"q"Q'
    if step == Interval(days=7):
        return 'IYYY"w"IW'
    if span >= 360 * _DAY_US:
        return "YYYY"
    if span >= 30 * _DAY_US:
        return "YYYY_MM"
    if span >= _DAY_US:
        return "YYYY_MM_DD"
    return "YYYY_MM_DD_HH24MI" if span >= 60 * _US else "YYYY_MM_DD_HH24MISS"
