"""One consistent picture of the server and its partitioned tables, for pure layers to judge.

``diagnose`` and the planners never talk to the database: everything they need is here,
read once. The grid of each table is decided here too, because it depends on partman's
config, the children's bounds, the session time zone and the user's overrides together.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import sql

from .. import journal
from ..db import Conn, session_timezone
from ..errors import UnknownGrid, UsageError
from .catalog import Child, Key, Table, read_tables
from .data import Probe, probe
from .grid import Grid, Interval, IntGrid, on_grid, parse_interval, time_grid
from .partman import Partman, PartmanConfig, config_for, find_partman, read_configs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Server:
    version_num: int
    max_connections: int
    superuser_reserved: int
    reserved: int  # PG 16+ reserved_connections (pg_use_reserved_connections), else 0
    used: int  # client backends now
    timezone: str  # the session default: the zone partman computes in
    now: datetime
    current_user: str
    can_use_reserved: bool  # the current role may use reserved_connections (PG 16+)
    partman: Partman | None
    database: str = ""  # current_database(): messages name the command to run against it

    @property
    def available(self) -> int:
        """Slots an ordinary role can use."""
        return self.max_connections - self.superuser_reserved - self.reserved


@dataclass(frozen=True)
class GridInfo:
    grid: Grid | None
    source: str  # 'partman', 'children', 'option', '' when unknown
    error: str | None = None
    aligned_zone: str | None = None  # a zone in which the children would sit on the grid


@dataclass(frozen=True)
class TableState:
    table: Table
    config: PartmanConfig | None
    grid: GridInfo
    default_probe: Probe | None
    max_key: Key | None  # largest key in the regular children (for id runway)
    last_maintenance: datetime | None  # partguard's own record of success


@dataclass(frozen=True)
class Snapshot:
    server: Server
    tables: tuple[TableState, ...]
    orphan_configs: tuple[tuple[PartmanConfig, str], ...] = field(default=())  # (config, why)


@dataclass(frozen=True)
class Options:
    tables: tuple[str, ...] = ()
    interval: str | None = None
    tz: str | None = None
    exact: bool = False
    tz_hint: str | None = None  # a zone to prefer only when partman and the children are silent


def read_server(conn: Conn) -> Server:
    row = conn.execute(
        """
        SELECT current_setting('server_version_num')::int,
               current_setting('max_connections')::int,
               current_setting('superuser_reserved_connections')::int,
               coalesce((SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), 0),
               (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
               now(), current_user,
               CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_use_reserved_connections')
                    THEN pg_has_role(current_user, 'pg_use_reserved_connections', 'MEMBER')
                         OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                    ELSE false END,
               current_database()
        """
    ).fetchone()
    assert row is not None
    return Server(
        version_num=row[0], max_connections=row[1], superuser_reserved=row[2], reserved=row[3],
        used=row[4], timezone=session_timezone(conn), now=row[5], current_user=row[6],
        can_use_reserved=bool(row[7]), partman=find_partman(conn), database=row[8],
    )


def take(conn: Conn, options: Options = Options()) -> Snapshot:
    """Read everything ``check`` judges. Read-only; safe on a busy primary."""
    server = read_server(conn)
    # check judges, it names no new children: the schemas' relation names are not read.
    tables = read_tables(conn, list(options.tables) or None, with_schema_names=False)
    configs = read_configs(conn, server.partman)
    last = journal.last_maintenance(conn)
    states = []
    for table in tables:
        config = config_for(configs, table.schema, table.name)
        states.append(table_state(conn, server, table, config, options, last.get(table.qualname)))
    return Snapshot(server, tuple(states), tuple(_orphans(conn, configs, options)))


def table_state(
    conn: Conn,
    server: Server,
    table: Table,
    config: PartmanConfig | None,
    options: Options,
    last_maintenance: datetime | None = None,
) -> TableState:
    if table.unsupported_reason():
        return TableState(table, config, GridInfo(None, "", table.unsupported_reason()), None, None, last_maintenance)
    grid = infer_grid(table, config, server.timezone, options.interval, options.tz, options.tz_hint)
    max_key, default_has_rows = _first_look(conn, table, server.now)
    default_probe = None
    if table.default is not None:
        has_index = table.default_key_index is not None
        default_probe = probe(
            conn, table.default.ident, table.key, grid.grid, has_index=has_index, exact=options.exact,
        ) if default_has_rows else Probe(0, 0, None, None, 0, (), False, has_index)
    return TableState(table, config, grid, default_probe, max_key, last_maintenance)


def max_child_key(conn: Conn, table: Table, now: datetime | None = None) -> Key | None:
    """The largest key in the regular children, looking from the newest child down (as
    partman does) so an index on each child answers it in one descent."""
    return _first_look(conn, table, now, default=False)[0]


def _first_look(conn: Conn, table: Table, now: datetime | None, *,
                default: bool = True) -> tuple[Key | None, bool]:
    """(the largest key in the regular children, whether the DEFAULT holds any row).

    One round trip for most tables: the first statement asks the premade children (those
    starting after ``now``, normally empty), the current one and whether the DEFAULT is
    empty (it usually is; then it needs no probe). Children never overlap, so the largest of
    their largest keys is the table's; older children are asked one by one after that.
    """
    k = sql.Identifier(table.key)
    newest_first = list(reversed(table.children))
    first = 1
    if now is not None and table.key_kind == "time":
        first += sum(1 for c in newest_first if _after(c.lower, now))
    batches = [newest_first[:first]] + [[c] for c in newest_first[first:]]
    ask_default = default and table.default is not None
    has_rows = False
    for n, batch in enumerate(batches):
        top = [sql.SQL("(SELECT {k} FROM {rel} WHERE {k} IS NOT NULL ORDER BY {k} DESC LIMIT 1)")
               .format(k=k, rel=c.ident) for c in batch]
        cols: list[sql.Composable] = [sql.SQL("(SELECT max({k}) FROM ({u}) AS newest)").format(
            k=k, u=sql.SQL(" UNION ALL ").join(top)) if top else sql.SQL("NULL")]
        if n == 0 and ask_default:
            assert table.default is not None
            cols.append(sql.SQL("EXISTS (SELECT FROM {})").format(table.default.ident))
        elif not top:
            break
        row = conn.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(cols))).fetchone()
        assert row is not None
        if n == 0 and ask_default:
            has_rows = bool(row[1])
        if row[0] is not None:
            return row[0], has_rows
    return None, has_rows


def _after(lower: Key | None, now: datetime) -> bool:
    """A child's lower bound lies after ``now`` (dates and naive stamps on the UTC clock)."""
    if isinstance(lower, datetime):
        return lower > (now if lower.tzinfo is not None else now.replace(tzinfo=None))
    if isinstance(lower, date):
        return lower > now.date()
    return False


def _orphans(conn: Conn, configs: dict[str, PartmanConfig], options: Options) -> list[tuple[PartmanConfig, str]]:
    out = []
    for name, cfg in sorted(configs.items()):
        if options.tables and not any(name in (t, t.lower()) for t in options.tables):
            continue
        row = conn.execute(
            """SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = split_part(%s, '.', 1) AND c.relname = split_part(%s, '.', 2)""",
            (name, name),
        ).fetchone()
        if row is None:
            out.append((cfg, "the table does not exist"))
        elif row[0] != "p":
            out.append((cfg, "the table is not partitioned"))
    return out


# --- the grid ----------------------------------------------------------------


def infer_grid(
    table: Table,
    config: PartmanConfig | None,
    session_tz: str,
    interval: str | None = None,
    tz: str | None = None,
    tz_hint: str | None = None,
) -> GridInfo:
    """Decide the grid: options first, then partman's config, then the children's bounds.

    ``tz`` overrides every other source; ``tz_hint`` (the old repair script's <timezone>
    argument) only decides when neither partman nor the children say, and a disagreement
    is logged rather than obeyed: children on another zone's grid would make partman's next
    run skip or overlap.
    """
    try:
        return _infer_grid(table, config, session_tz, interval, tz, tz_hint)
    except UsageError:
        raise
    except UnknownGrid as exc:
        return GridInfo(None, "", str(exc))


def _infer_grid(
    table: Table, config: PartmanConfig | None, session_tz: str, interval: str | None, tz: str | None,
    tz_hint: str | None = None,
) -> GridInfo:
    for given in (tz, tz_hint):
        if given is not None:
            time_grid(Interval(days=1), given)  # validates the zone: UsageError if unknown
    if table.key_kind == "int":
        if interval:
            step, source = _int_step(interval), "option"
        elif config is not None:
            step, source = _int_step(config.interval), "partman"
        else:
            step, source = _common_int_step(table), "children"
        anchor = 0 if source != "children" else int(table.children[-1].lower or 0)  # type: ignore[arg-type]
        return GridInfo(IntGrid(step, anchor % step), source)

    zone: str | None = tz or session_tz
    if table.key_type != "timestamp with time zone":
        zone = None  # dates and naive timestamps live on the wall clock, not in a zone
    if zone is not None and tz is None and tz_hint and config is None:
        zone = tz_hint  # preferred; the children still overrule it below
    if interval and config is None and not table.children:
        return _time_info(parse_interval(interval), zone, table, "option")
    if config is not None:
        if tz is None and config.timezone and zone is not None:
            zone = config.timezone  # newer partman pins its own zone in part_config
        if tz is None and tz_hint and zone is not None and tz_hint != zone:
            log.warning("%s: the time zone given (%s) disagrees with pg_partman's (%s); following pg_partman",
                        table.qualname, tz_hint, zone)
        pstep = parse_interval(interval) if interval else parse_interval(config.interval)
        return _time_info(pstep, zone, table, "option" if interval else "partman")
    tstep = parse_interval(interval) if interval else _common_time_step(table, zone)
    source = "option" if interval else "children"
    info = _time_info(tstep, zone, table, source)
    if tz is None and zone is not None and info.aligned_zone and info.aligned_zone != zone:
        # A hand-made table has no partman to disagree with: follow its children's zone.
        if tz_hint:
            log.warning("%s: the time zone given (%s) disagrees with the children's (%s); following the children",
                        table.qualname, tz_hint, zone_label(info.aligned_zone))
        return _time_info(tstep, info.aligned_zone, table, source)
    return info


def _time_info(step: Interval, zone: str | None, table: Table, source: str) -> GridInfo:
    grid = time_grid(step, zone)
    return GridInfo(grid, source, aligned_zone=_aligned_zone(table, step, zone))


def _int_step(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UsageError(f"not an integer interval: {text!r}") from None
    if value <= 0:
        raise UsageError(f"interval must be positive: {text!r}")
    return value


def _common_int_step(table: Table) -> int:
    widths = Counter(
        int(c.upper) - int(c.lower)  # type: ignore[arg-type]
        for c in table.children
        if c.lower is not None and c.upper is not None
    )
    if not widths:
        raise UnknownGrid(f"{table.qualname}: no children to infer the interval from; pass --interval")
    return widths.most_common(1)[0][0]


def _common_time_step(table: Table, zone: str | None) -> Interval:
    steps = Counter(
        _step_between(c.lower, c.upper, zone)
        for c in table.children
        if c.lower is not None and c.upper is not None
    )
    if not steps:
        raise UnknownGrid(f"{table.qualname}: no children to infer the interval from; pass --interval")
    return steps.most_common(1)[0][0]


@functools.lru_cache(maxsize=8192)
def _step_between(lo: date, hi: date, zone: str | None) -> Interval:
    """The calendar interval between two bounds, as a human would name it in ``zone``."""
    a, b = _wall(lo, zone), _wall(hi, zone)
    if (a.day, a.time()) == (b.day, b.time()):
        months = (b.year - a.year) * 12 + b.month - a.month
        if months > 0:
            return Interval(months=months)
    if a.time() == b.time():
        return Interval(days=(b.date() - a.date()).days)
    delta = _utc(hi) - _utc(lo)
    return Interval(micros=int(delta / timedelta(microseconds=1)))


def _wall(x: date, zone: str | None) -> datetime:
    if not isinstance(x, datetime):
        return datetime(x.year, x.month, x.day)
    if x.tzinfo is None or zone is None:
        return x.replace(tzinfo=None)
    return x.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def _utc(x: date) -> datetime:
    if not isinstance(x, datetime):
        return datetime(x.year, x.month, x.day)
    return x.replace(tzinfo=None) if x.tzinfo is None else x.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


_CANDIDATE_ZONES = ("UTC",) + tuple(f"Etc/GMT{-h:+d}" for h in range(-12, 15) if h) + (
    "Europe/Berlin", "Europe/London", "America/New_York", "America/Chicago", "America/Los_Angeles",
    "Asia/Kolkata", "Asia/Tokyo", "Australia/Sydney",
)


def _aligned_zone(table: Table, step: Interval, zone: str | None) -> str | None:
    """A zone whose grid every child bound sits on, preferring ``zone`` (None if none fits)."""
    if zone is None or step.months == 0 and step.days == 0:
        return zone
    # Adjacent children share bounds; one walk along each grid checks them all (on_grid).
    bounds = sorted({b for c in table.children for b in (c.lower, c.upper)
                     if isinstance(b, datetime)})
    if not bounds:
        return zone
    for candidate in (zone,) + _CANDIDATE_ZONES:
        grid = time_grid(step, candidate)
        if grid.is_aligned(bounds[0]) and all(on_grid(grid, bounds)):
            return candidate
    return None


def zone_label(zone: str) -> str:
    """'Etc/GMT-1' is UTC+01 (POSIX signs are inverted): say it the way humans do."""
    if zone.startswith("Etc/GMT") and len(zone) > 7:
        hours = -int(zone[7:])
        return f"UTC{hours:+03d}:00"
    return zone


def with_grid(state: TableState, grid: GridInfo) -> TableState:
    return replace(state, grid=grid)


__all__ = [
    "Any",
    "Child",
    "GridInfo",
    "Options",
    "Server",
    "Snapshot",
    "TableState",
    "infer_grid",
    "read_server",
    "table_state",
    "take",
    "with_grid",
    "zone_label",
]
