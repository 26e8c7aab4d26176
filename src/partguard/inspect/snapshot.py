"""One consistent picture of the server and its partitioned tables, for pure layers to judge.

``diagnose`` and the planners never talk to the database: everything they need is here,
read once. The grid of each table is decided here too, because it depends on partman's
config, the children's bounds, the session time zone and the user's overrides together.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from psycopg import errors as pgerrors
from psycopg import sql

from .. import journal
from ..db import Blocker, Conn, ConnParams, blockers, lowered_lock_timeout, session_timezone
from ..errors import UnknownGrid, UsageError
from .catalog import Child, Key, Table, read_tables
from .connections import CLIENT_BACKEND, Clients, read_clients
from .data import Probe, probe
from .grid import Grid, Interval, IntGrid, int_key, on_grid, parse_interval, time_grid
from .leftovers import Leftovers
from .leftovers import read as read_leftovers
from .locks import LockHolder, stuck_partman_locks
from .partman import Partman, PartmanConfig, config_for, find_partman, read_configs
from .retention import PartmanDrop, early_drops, max_keys, now_key
from .zones import UnknownZone, resolve, same_zone, session_zone, zone_info, zone_label

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
    clients: Clients | None = None  # who holds the slots (inspect/connections.py)
    in_recovery: bool = (
        False  # a hot standby: read-only, maintenance and repairs run on the primary
    )
    target: str = ""  # the connection options given (-d -h -p -U), for the commands messages print

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
class Unreadable:
    """Why a table's rows could not be read for this snapshot (a DDL held a lock)."""

    reason: str
    blockers: tuple[Blocker, ...] = ()


@dataclass(frozen=True)
class TableState:
    table: Table
    config: PartmanConfig | None
    grid: GridInfo
    default_probe: Probe | None
    max_key: Key | None  # largest key in the regular children (for id runway)
    last_maintenance: datetime | None  # partguard's own record of success
    # Children partman's retention would retire too early, each with its largest key.
    partman_drops: tuple[tuple[PartmanDrop, Key | None], ...] = ()
    # What unfinished repairs left: holding tables, instant's trigger + CHECK, a detached
    # DEFAULT, quarantined rows (inspect/leftovers.py).
    leftovers: Leftovers = field(default_factory=Leftovers)
    unreadable: Unreadable | None = None  # set: only the catalog was read, nothing judged


@dataclass(frozen=True)
class Snapshot:
    server: Server
    tables: tuple[TableState, ...]
    orphan_configs: tuple[tuple[PartmanConfig, str], ...] = field(default=())  # (config, why)
    # partman's maintenance locks held by idle sessions (a failed run_maintenance_proc())
    stuck_partman_locks: tuple[tuple[str, LockHolder], ...] = field(default=())


@dataclass(frozen=True)
class Options:
    tables: tuple[str, ...] = ()
    interval: str | None = None
    tz: str | None = None
    exact: bool = False
    tz_hint: str | None = None  # a zone to prefer only when partman and the children are silent
    force_tz: bool = False  # use ``tz`` on a partman table even where it contradicts partman's zone
    # use ``interval`` even where it contradicts partman's partition_interval or the children's
    force_interval: bool = False
    connection: ConnParams | None = None  # as given: repair commands in messages repeat it
    # Longest wait for a lock on one table's partitions: a table a DDL holds longer is
    # reported as unreadable (UNKNOWN) and the others are still read.
    lock_timeout: float = 1.0


def read_server(conn: Conn) -> Server:
    row = conn.execute(
        """
        SELECT current_setting('server_version_num')::int,
               current_setting('max_connections')::int,
               current_setting('superuser_reserved_connections')::int,
               coalesce((SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), 0),
               (SELECT count(*) FROM pg_stat_activity WHERE """
        + CLIENT_BACKEND
        + """),
               now(), current_user,
               CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_use_reserved_connections')
                    THEN pg_has_role(current_user, 'pg_use_reserved_connections', 'MEMBER')
                         OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                    ELSE false END,
               current_database(), pg_is_in_recovery()
        """
    ).fetchone()
    assert row is not None
    return Server(
        version_num=row[0],
        max_connections=row[1],
        superuser_reserved=row[2],
        reserved=row[3],
        used=row[4],
        timezone=_session_zone(conn),
        now=row[5],
        current_user=row[6],
        can_use_reserved=bool(row[7]),
        partman=find_partman(conn),
        database=row[8],
        clients=read_clients(conn),
        in_recovery=bool(row[9]),
    )


def _session_zone(conn: Conn) -> str:
    raw = session_timezone(conn)
    try:
        return session_zone(conn, raw)
    except UnknownZone as exc:
        log.warning("the database's default TimeZone: %s", exc)
        return raw


def resolve_zones(conn: Conn, options: Options) -> Options:
    """``tz`` and ``tz_hint`` as PostgreSQL reads them (``zones.resolve``), once per command.

    A bad ``tz`` is the user's mistake (UsageError); a hint that cannot be used is a warning
    and is dropped: the old script's <timezone> never stops a repair.
    """
    tz = resolve(conn, options.tz) if options.tz else None
    hint = options.tz_hint
    if hint:
        try:
            hint = resolve(conn, hint)
        except UsageError as exc:
            log.warning("ignoring the time zone hint: %s", exc)
            hint = None
    return replace(options, tz=tz, tz_hint=hint or None)


def take(conn: Conn, options: Options = Options()) -> Snapshot:
    """Read everything ``check`` judges. Read-only; safe on a busy primary."""
    options = resolve_zones(conn, options)
    server = read_server(conn)
    if options.connection is not None:
        server = replace(server, target=options.connection.command_args(server.database))
    # check judges, it names no new children: the schemas' relation names are not read.
    tables = read_tables(conn, list(options.tables) or None, with_schema_names=False)
    configs = read_configs(conn, server.partman)
    last = journal.last_maintenance(conn)
    left = read_leftovers(conn, tables, exact=options.exact)
    states = []
    with lowered_lock_timeout(conn, options.lock_timeout):
        for table in tables:
            config = config_for(configs, table.schema, table.name)
            done = last.get(table.qualname)
            try:  # one table a DDL holds must not blind the check of the others
                with _savepoint(conn):
                    state = table_state(
                        conn, server, table, config, options, done, left.get(table.oid, Leftovers())
                    )
            except pgerrors.LockNotAvailable as exc:
                state = locked_state(conn, table, config, done, options.lock_timeout, exc)
            states.append(state)
    return Snapshot(
        server,
        tuple(states),
        tuple(_orphans(conn, configs, options)),
        tuple(stuck_partman_locks(conn, server.partman)),
    )


def table_state(
    conn: Conn,
    server: Server,
    table: Table,
    config: PartmanConfig | None,
    options: Options,
    last_maintenance: datetime | None = None,
    leftovers: Leftovers | None = None,
) -> TableState:
    """One table's state; ``leftovers`` as read for many tables at once (read here if None)."""
    if table.unsupported_reason():
        return TableState(
            table,
            config,
            GridInfo(None, "", table.unsupported_reason()),
            None,
            None,
            last_maintenance,
        )
    grid = infer_grid(
        table,
        config,
        server.timezone,
        options.interval,
        options.tz,
        options.tz_hint,
        options.force_tz,
        options.force_interval,
    )
    if leftovers is None:
        leftovers = read_leftovers(conn, [table], exact=options.exact).get(table.oid, Leftovers())
    max_key, default_has_rows = _first_look(conn, table, server.now)
    default_probe = None
    if table.default is not None:
        has_index = table.default_key_index is not None
        default_probe = (
            probe(
                conn,
                table.default.ident,
                table.key,
                grid.grid,
                has_index=has_index,
                exact=options.exact,
            )
            if default_has_rows
            else Probe(0, 0, None, None, 0, (), False, has_index)
        )
    drops = (
        early_drops(table, config, grid.grid, now_key(table, server.now, server.timezone, max_key))
        if config
        else []
    )
    held = max_keys(conn, table, [d.child for d in drops])
    return TableState(
        table,
        config,
        grid,
        default_probe,
        max_key,
        last_maintenance,
        tuple((d, k) for d, (_, k) in zip(drops, held, strict=True)),
        leftovers,
    )


def _savepoint(conn: Conn) -> contextlib.AbstractContextManager[Any]:
    """Outside autocommit a failed read would abort the caller's transaction."""
    return contextlib.nullcontext() if conn.autocommit else conn.transaction()


def locked_state(
    conn: Conn,
    table: Table,
    config: PartmanConfig | None,
    last_maintenance: datetime | None,
    waited: float,
    exc: Exception,
) -> TableState:
    """A table whose partitions could not be read: only its catalog, and who holds it."""
    rels = [
        table.oid,
        *(c.oid for c in table.children),
        *([table.default.oid] if table.default else []),
    ]
    held = tuple(blockers(conn, rels))
    log.info("%s: not read: %s", table.qualname, " ".join(str(exc).split()))
    why = f"a lock on its partitions was not granted within {waited:g}s"
    return TableState(
        table,
        config,
        GridInfo(None, "", why),
        None,
        None,
        last_maintenance,
        unreadable=Unreadable(why, held),
    )


def max_child_key(conn: Conn, table: Table, now: datetime | None = None) -> Key | None:
    """The largest key in the regular children, looking from the newest child down (as
    partman does) so an index on each child answers it in one descent."""
    return _first_look(conn, table, now, default=False)[0]


def _first_look(
    conn: Conn, table: Table, now: datetime | None, *, default: bool = True
) -> tuple[Key | None, bool]:
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
        top = [
            sql.SQL(
                "(SELECT {k} FROM {rel} WHERE {k} IS NOT NULL ORDER BY {k} DESC LIMIT 1)"
            ).format(k=k, rel=c.ident)
            for c in batch
        ]
        cols: list[sql.Composable] = [
            sql.SQL("(SELECT max({k}) FROM ({u}) AS newest)").format(
                k=k, u=sql.SQL(" UNION ALL ").join(top)
            )
            if top
            else sql.SQL("NULL")
        ]
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


def _orphans(
    conn: Conn, configs: dict[str, PartmanConfig], options: Options
) -> list[tuple[PartmanConfig, str]]:
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
    force_tz: bool = False,
    force_interval: bool = False,
) -> GridInfo:
    """Decide the grid: options first, then partman's config, then the children's bounds.

    Zones are names as ``zones.resolve`` gives them. ``tz`` overrides every other source,
    except on a partman table where it contradicts the zone partman computes in: refused
    (UsageError) unless ``force_tz``. ``tz_hint`` (the old repair script's <timezone> argument)
    only decides when neither partman nor the children say, and a disagreement is logged
    rather than obeyed: children on another zone's grid would make partman's next run skip
    or overlap. ``interval`` likewise: refused where it contradicts partman's
    partition_interval or the one step the children evidently follow, unless
    ``force_interval``; it decides alone where neither says (a DEFAULT only).
    """
    try:
        return _infer_grid(
            table, config, session_tz, interval, tz, tz_hint, force_tz, force_interval
        )
    except UsageError:
        raise
    except UnknownGrid as exc:
        return GridInfo(None, "", str(exc))


def _infer_grid(
    table: Table,
    config: PartmanConfig | None,
    session_tz: str,
    interval: str | None,
    tz: str | None,
    tz_hint: str | None = None,
    force_tz: bool = False,
    force_interval: bool = False,
) -> GridInfo:
    if tz is not None:
        zone_info(tz)  # validates the zone: UsageError if unknown
    tz_hint = _usable_hint(table, tz_hint)
    if table.key_kind == "int":
        if interval:
            step, source = _int_step(interval), "option"
            said = _int_step(config.interval) if config is not None else _evident_int_step(table)
            _agree(table, interval, step, said, config is not None, force_interval)
        elif config is not None:
            step, source = _int_step(config.interval), "partman"
        else:
            step, source = _common_int_step(table), "children"
        anchor = 0 if source != "children" else int_key(table.children[-1].lower or 0)
        return GridInfo(IntGrid(step, anchor % step), source)

    zone: str | None = tz or session_tz
    if table.key_type != "timestamp with time zone":
        zone = None  # dates and naive timestamps live on the wall clock, not in a zone
    if zone is not None and tz is None and tz_hint and config is None:
        zone = tz_hint  # preferred; the children still overrule it below
    if interval and config is None and not table.children:
        return _time_info(parse_interval(interval), zone, table, "option")
    if config is not None:
        if zone is not None:
            zone = _partman_zone(table, config, session_tz, tz, force_tz)
        if tz is None and tz_hint and zone is not None and not same_zone(tz_hint, zone):
            log.warning(
                "%s: the time zone given (%s) disagrees with pg_partman's (%s); following pg_partman",
                table.qualname,
                zone_label(tz_hint),
                zone_label(zone),
            )
        pstep = parse_interval(interval) if interval else parse_interval(config.interval)
        if interval:
            _agree(table, interval, pstep, parse_interval(config.interval), True, force_interval)
        return _time_info(pstep, zone, table, "option" if interval else "partman")
    tstep = parse_interval(interval) if interval else _common_time_step(table, zone)
    source = "option" if interval else "children"
    if interval:
        _agree(table, interval, tstep, _evident_time_step(table, zone), False, force_interval)
    info = _time_info(tstep, zone, table, source)
    if tz is None and zone is not None and info.aligned_zone and info.aligned_zone != zone:
        # A hand-made table has no partman to disagree with: follow its children's zone.
        if tz_hint and not same_zone(tz_hint, info.aligned_zone):
            log.warning(
                "%s: the time zone given (%s) disagrees with the children's (%s); following the children",
                table.qualname,
                zone_label(tz_hint),
                zone_label(info.aligned_zone),
            )
        return _time_info(tstep, info.aligned_zone, table, source)
    return info


def _usable_hint(table: Table, hint: str | None) -> str | None:
    """The hint, or None (with a warning) when partguard cannot compute in it."""
    if not hint:
        return None
    try:
        zone_info(hint)
    except UsageError as exc:
        log.warning("%s: ignoring the time zone hint: %s", table.qualname, exc)
        return None
    return hint


def _partman_zone(
    table: Table, config: PartmanConfig, session_tz: str, tz: str | None, force_tz: bool
) -> str:
    """The zone of a partman table's grid: partman's own, or ``tz`` where it agrees (or is forced).

    partman computes in part_config.partition_timezone where its version has one, else in the
    session's TimeZone, which for its maintenance is the role/database default.
    """
    ours, where = (
        (config.timezone, "part_config.partition_timezone")
        if config.timezone
        else (session_tz, "the role/database default TimeZone")
    )
    if tz is None or same_zone(tz, ours):
        return ours if tz is None else tz
    why = (
        f"{table.qualname}: --tz {zone_label(tz)} contradicts the zone pg_partman computes in "
        f"({zone_label(ours)}, {where}); children on another zone's grid make partman fail with "
        '"would overlap" or leave gaps'
    )
    if not force_tz:
        raise UsageError(f"{why}; pass --force-tz to use it anyway")
    log.warning("%s; using it as --force-tz asks", why)
    return tz


def _agree(
    table: Table,
    text: str,
    given: Interval | int,
    said: Interval | int | None,
    partman: bool,
    force: bool,
) -> None:
    """Refuse an ``--interval`` that contradicts the table (UsageError) unless ``force``.

    Equal means the same value field by field: '1 day' and '24 hours' are different grids
    wherever a day can last 23 or 25 hours, so only spellings of one value agree ('daily',
    '1 day', '@ 1 day').
    """
    if said is None or given == said:
        return
    whose = "pg_partman's partition_interval" if partman else "the interval its children follow"
    why = (
        f"{table.qualname}: --interval {text!r} ({given}) contradicts {whose} ({said}); "
        "children on another interval's grid overlap or leave gaps"
    )
    if not force:
        raise UsageError(f"{why}; pass --force-interval to use it anyway")
    log.warning("%s; using it as --force-interval asks", why)


def _evident_int_step(table: Table) -> int | None:
    """The width the children evidently follow (see ``_evident``), else None."""
    return _evident(_int_widths(table))


def _int_widths(table: Table) -> Counter[int]:
    return Counter(
        int_key(c.upper) - int_key(c.lower)
        for c in table.children
        if c.lower is not None and c.upper is not None
    )


def _evident_time_step(table: Table, zone: str | None) -> Interval | None:
    """The step the children evidently follow, read in ``zone`` or else in the zone their
    bounds sit on (a Berlin day is 23 h or 25 h across DST when read in UTC)."""
    steps = _time_steps(table, zone)
    found = _evident(steps)
    if found is None and steps and zone is not None:
        aligned = _aligned_zone(table, steps.most_common(1)[0][0], zone)
        if aligned is not None and aligned != zone:
            found = _evident(_time_steps(table, aligned))
    return found


def _time_steps(table: Table, zone: str | None) -> Counter[Interval]:
    return Counter(
        _step_between(c.lower, c.upper, zone)
        for c in table.children
        if c.lower is not None and c.upper is not None
    )


_T = TypeVar("_T")


def _evident(steps: Counter[_T]) -> _T | None:
    """The step at least two children and nine in ten of them share: a table migrated from
    one interval to another, or cut by hand, says nothing unambiguous (None)."""
    if not steps:
        return None
    step, n = steps.most_common(1)[0]
    return step if n >= 2 and 10 * n >= 9 * sum(steps.values()) else None


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
    widths = _int_widths(table)
    if not widths:
        raise UnknownGrid(
            f"{table.qualname}: no children to infer the interval from; pass --interval"
        )
    return widths.most_common(1)[0][0]


def _common_time_step(table: Table, zone: str | None) -> Interval:
    steps = _time_steps(table, zone)
    if not steps:
        raise UnknownGrid(
            f"{table.qualname}: no children to infer the interval from; pass --interval"
        )
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
    return x.astimezone(zone_info(zone)).replace(tzinfo=None)


def _utc(x: date) -> datetime:
    if not isinstance(x, datetime):
        return datetime(x.year, x.month, x.day)
    return (
        x.replace(tzinfo=None)
        if x.tzinfo is None
        else x.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    )


_CANDIDATE_ZONES = (
    ("UTC",)
    + tuple(f"Etc/GMT{-h:+d}" for h in range(-12, 15) if h)
    + (
        "Europe/Berlin",
        "Europe/London",
        "America/New_York",
        "America/Chicago",
        "America/Los_Angeles",
        "Asia/Kolkata",
        "Asia/Tokyo",
        "Australia/Sydney",
    )
)


def _aligned_zone(table: Table, step: Interval, zone: str | None) -> str | None:
    """A zone whose grid every child bound sits on, preferring ``zone`` (None if none fits)."""
    if zone is None or step.months == 0 and step.days == 0:
        return zone
    # Adjacent children share bounds; one walk along each grid checks them all (on_grid).
    bounds = sorted(
        {b for c in table.children for b in (c.lower, c.upper) if isinstance(b, datetime)}
    )
    if not bounds:
        return zone
    for candidate in (zone,) + _CANDIDATE_ZONES:
        grid = time_grid(step, candidate)
        if grid.is_aligned(bounds[0]) and all(on_grid(grid, bounds)):
            return candidate
    return None


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
    "Unreadable",
    "infer_grid",
    "locked_state",
    "read_server",
    "resolve_zones",
    "table_state",
    "take",
    "with_grid",
    "zone_label",
]
