"""``partguard check`` as a library function: snapshot, diagnose, summarise.

Read-only. The report is plain frozen data, so the CLI renders it as text or JSON and
``metrics`` turns the very same report into Prometheus samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from psycopg import errors as pgerrors

from ..coverage import default_rows_estimate, last_maintenance, runway
from ..db import Conn
from ..diagnose import STATUS_NAMES, Finding, diagnose, reserved_advice, status, worst
from ..errors import LockNotAvailable, PermissionDenied, UnsupportedTable, UsageError
from ..humanize import iso
from ..inspect import snapshot
from ..inspect.connections import Clients
from ..inspect.grid import IntGrid, TimeGrid
from ..inspect.snapshot import Options, Server, Snapshot, TableState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSummary:
    schema: str
    table: str
    status: str  # ok / warning / critical / unknown: the worst of its findings
    strategy: str
    key: str | None
    key_type: str
    interval: str | None  # '1 day', '100000'; None when the grid is unknown
    zone: str | None  # the grid's time zone; None for dates, naive timestamps and ids
    grid_source: str  # partman / children / option / '' (unknown)
    children: int
    has_default: bool
    default_rows: int | None  # estimate (at least what the probe saw); None without DEFAULT
    runway_seconds: float | None  # time keys: children ahead of now (negative: ran out)
    runway_ids: int | None  # integer keys: ids left above the largest one
    last_upper: str | int | None  # upper bound of the newest child
    gaps: int
    misaligned_children: int
    last_maintenance: datetime | None  # last successful maintenance (partman 5.1+ or partguard)
    partman_version: str | None  # when partman manages this table


@dataclass(frozen=True)
class ServerSummary:
    version: str
    version_num: int
    database: str
    current_user: str
    timezone: str
    now: datetime
    max_connections: int
    superuser_reserved: int
    reserved: int
    used: int
    available: int
    can_use_reserved: bool
    reserved_note: str
    partman_version: str | None
    in_recovery: bool = (
        False  # a hot standby: findings describe the primary's tables as replayed here
    )


@dataclass(frozen=True)
class CheckReport:
    status: int  # Nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    server: ServerSummary
    tables: tuple[TableSummary, ...]
    findings: tuple[Finding, ...]
    clients: Clients | None = None  # who holds the connection slots (for metrics)

    @property
    def status_name(self) -> str:
        return STATUS_NAMES[self.status]


def check(conn: Conn, options: Options | None = None) -> CheckReport:
    """Snapshot the server (or the named tables) and judge it.

    Tables named in ``options.tables`` must exist and be range-partitioned with a key
    partguard understands (TableNotFound / UnsupportedTable otherwise); tables found by
    scanning are judged or reported as ``unsupported``.
    """
    options = options or Options()
    try:
        snap = snapshot.take(conn, options)
    except pgerrors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"{_first_line(exc)}: check reads pg_partman's part_config, partguard's own "
            "journal (schema partguard), each DEFAULT partition and the newest children "
            "(GRANT pg_read_all_data, or SELECT on those)"
        ) from None
    except pgerrors.LockNotAvailable as exc:
        raise LockNotAvailable(
            f"check: {_first_line(exc)} (a DDL holds the table; try again later)"
        ) from None
    if options.tables:
        for state in snap.tables:
            reason = state.table.unsupported_reason()
            if reason:
                raise UnsupportedTable(reason)
    return report(snap)


def report(snap: Snapshot) -> CheckReport:
    """Diagnose a snapshot and summarise it (pure)."""
    findings = diagnose(snap)
    log.info("check: %d tables, %d findings", len(snap.tables), len(findings))
    tables = tuple(
        summarise(s, snap.server, [f for f in findings if f.table == s.table.qualname])
        for s in snap.tables
    )
    return CheckReport(
        status(findings), server_summary(snap.server), tables, tuple(findings), snap.server.clients
    )


def summarise(state: TableState, server: Server, findings: list[Finding]) -> TableSummary:
    table, grid = state.table, state.grid.grid
    judged = table.unsupported_reason() is None and grid is not None
    try:
        rw = runway(state, server) if judged else None
    except UsageError:  # diagnose reported it as grid_unknown
        rw = None
    # Counted from the findings: the grid walk behind them is the costly part of a check.
    off_grid = sum(int(f.detail.get("count", 0)) for f in findings if f.code == "misaligned")
    w = worst(findings)
    interval = zone = None
    if isinstance(grid, TimeGrid):
        interval, zone = str(grid.step), grid.tz
    elif isinstance(grid, IntGrid):
        interval = str(grid.step)
    return TableSummary(
        schema=table.schema,
        table=table.name,
        status=STATUS_NAMES[w.nagios] if w else "ok",
        strategy=table.strategy,
        key=table.key if len(table.key_columns) == 1 else None,
        key_type=table.key_type,
        interval=interval,
        zone=zone,
        grid_source=state.grid.source,
        children=len(table.children),
        has_default=table.default is not None,
        default_rows=default_rows_estimate(state),
        runway_seconds=rw.seconds if rw else None,
        runway_ids=rw.ids if rw else None,
        last_upper=iso(table.children[-1].upper) if table.children else None,
        gaps=sum(f.code == "gap" for f in findings),
        misaligned_children=off_grid,
        last_maintenance=last_maintenance(state)[0],
        partman_version=server.partman.version if server.partman and state.config else None,
    )


def server_summary(server: Server) -> ServerSummary:
    num = server.version_num
    return ServerSummary(
        version=f"{num // 10000}.{num % 10000}",
        version_num=num,
        database=server.database,
        current_user=server.current_user,
        timezone=server.timezone,
        now=server.now,
        max_connections=server.max_connections,
        superuser_reserved=server.superuser_reserved,
        reserved=server.reserved,
        used=server.used,
        available=server.available,
        can_use_reserved=server.can_use_reserved,
        reserved_note=reserved_advice(server),
        partman_version=server.partman.version if server.partman else None,
        in_recovery=server.in_recovery,
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
