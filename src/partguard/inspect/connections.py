"""Who holds the connection slots: client backends by application, role, address and state.

The incident's root cause was not a partition: several service instances, each with a pool
of ~50, took every slot of ``max_connections``, and the maintenance job was refused. A total
says the server is full; this says by whom, so the message can name the pool to shrink.
Role (``rolconnlimit``) and database (``datconnlimit``) limits are read too, since a bound
limit refuses connections long before the server is full. Superusers are exempt from both.

Without ``pg_read_all_stats`` the server hides other roles' state, address, application
and even ``backend_type``; such backends are still counted (``CLIENT_BACKEND``), in state
``unknown``, rather than left out: the incident's maintenance role saw a near-empty server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..db import Conn

# Series of partguard_connections: this many (application, role) pairs, the rest "other".
TOP_HOLDERS = 10
OTHER = "other"
STATES = ("active", "idle", "idle_in_transaction", "unknown", "other")

# A client backend, also when the server hides its backend_type from us: then only a row
# with a database and a role is one (launchers have neither; autovacuum workers no role). A
# hidden parallel or logical replication worker is counted too: rare, and brief.
CLIENT_BACKEND = (
    "(backend_type = 'client backend' OR backend_type IS NULL "
    "AND datid IS NOT NULL AND usesysid IS NOT NULL)"
)

_GROUPS_SQL = (
    """
SELECT coalesce(application_name, ''), coalesce(usename, ''),
       CASE WHEN client_addr IS NOT NULL THEN host(client_addr)
            WHEN client_port = -1 THEN 'local' ELSE '' END,
       count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE state = 'idle'),
       count(*) FILTER (WHERE state LIKE 'idle in transaction%'),
       count(*) FILTER (WHERE state IS NULL),
       count(*) FILTER (WHERE state NOT IN ('active', 'idle') AND state NOT LIKE 'idle in transaction%'),
       extract(epoch FROM max(now() - state_change) FILTER (WHERE state LIKE 'idle in transaction%'))::float8,
       (array_agg(pid ORDER BY state_change) FILTER (WHERE state LIKE 'idle in transaction%'))[1]
FROM pg_stat_activity
WHERE """
    + CLIENT_BACKEND
    + """
GROUP BY 1, 2, 3
ORDER BY count(*) DESC, 1, 2, 3
"""
)

# Backends per role and per database, where a CONNECTION LIMIT is set (and for ourselves).
_LIMITS_SQL = (
    """
SELECT 'role', r.rolname, r.rolconnlimit,
       (SELECT count(*) FROM pg_stat_activity a
         WHERE a.usesysid = r.oid AND """
    + CLIENT_BACKEND
    + """)
FROM pg_roles r WHERE r.rolconnlimit >= 0 AND r.rolcanlogin AND NOT r.rolsuper
UNION ALL
SELECT 'database', d.datname, d.datconnlimit,
       (SELECT count(*) FROM pg_stat_activity a
         WHERE a.datid = d.oid AND """
    + CLIENT_BACKEND
    + """)
FROM pg_database d WHERE d.datconnlimit >= 0 AND d.datallowconn
ORDER BY 1, 2
"""
)


@dataclass(frozen=True)
class ClientGroup:
    """Client backends sharing an application_name, a role and a client address."""

    application_name: str
    usename: str
    client_addr: str  # a host address, 'local' for a Unix socket, '' when hidden
    active: int = 0
    idle: int = 0
    idle_in_transaction: int = 0  # including "(aborted)": both hold locks and a snapshot
    unknown: int = 0  # state hidden from this role (no pg_read_all_stats)
    other: int = 0  # fastpath function call, disabled
    oldest_idle_in_transaction_seconds: float | None = None
    oldest_idle_in_transaction_pid: int | None = None

    @property
    def total(self) -> int:
        return self.active + self.idle + self.idle_in_transaction + self.unknown + self.other

    def count(self, state: str) -> int:
        return int(getattr(self, state))


@dataclass(frozen=True)
class Pool:
    """One application of one role, across the client addresses it connects from: a service
    whose instances each keep a pool (``clients`` instances × ``total / clients``)."""

    application_name: str
    usename: str
    clients: int
    groups: tuple[ClientGroup, ...]

    @property
    def total(self) -> int:
        return sum(g.total for g in self.groups)

    def count(self, state: str) -> int:
        return sum(g.count(state) for g in self.groups)

    @property
    def oldest_idle_in_transaction(self) -> tuple[float, int | None] | None:
        ages = [
            (g.oldest_idle_in_transaction_seconds, g.oldest_idle_in_transaction_pid)
            for g in self.groups
            if g.oldest_idle_in_transaction_seconds is not None
        ]
        return max(ages, key=lambda a: a[0]) if ages else None


@dataclass(frozen=True)
class Limit:
    """A role's ``CONNECTION LIMIT`` or a database's, and the client backends it counts."""

    kind: str  # 'role' or 'database'
    name: str
    limit: int
    used: int


@dataclass(frozen=True)
class Clients:
    groups: tuple[ClientGroup, ...]  # largest first
    limits: tuple[Limit, ...] = ()
    current_user: str = ""
    current_database: str = ""
    superuser: bool = False  # the current role: exempt from role and database limits

    @property
    def total(self) -> int:
        return sum(g.total for g in self.groups)

    def count(self, state: str) -> int:
        return sum(g.count(state) for g in self.groups)

    def pools(self) -> list[Pool]:
        """Groups folded by (application_name, role), largest first."""
        by: dict[tuple[str, str], list[ClientGroup]] = {}
        for g in self.groups:
            by.setdefault((g.application_name, g.usename), []).append(g)
        pools = [Pool(app, user, len(gs), tuple(gs)) for (app, user), gs in by.items()]
        return sorted(pools, key=lambda p: (-p.total, p.application_name, p.usename))

    def series(self, top: int = TOP_HOLDERS) -> dict[tuple[str, str, str], int]:
        """``{(application_name, usename, state): backends}`` for the ``top`` largest pools,
        everything else summed into ``("other", "other", state)``: bounded cardinality,
        whatever the applications call themselves."""
        out: dict[tuple[str, str, str], int] = {}
        for i, pool in enumerate(self.pools()):
            app, user = (pool.application_name, pool.usename) if i < top else (OTHER, OTHER)
            for state in STATES:
                n = pool.count(state)
                if n or i < top:
                    out[(app, user, state)] = out.get((app, user, state), 0) + n
        return out

    def oldest_idle_in_transaction(self, top: int = TOP_HOLDERS) -> dict[tuple[str, str], float]:
        """The longest idle-in-transaction age per pool (same labels as ``series``)."""
        out: dict[tuple[str, str], float] = {}
        for i, pool in enumerate(self.pools()):
            oldest = pool.oldest_idle_in_transaction
            if oldest is None:
                continue
            key = (pool.application_name, pool.usename) if i < top else (OTHER, OTHER)
            out[key] = max(out.get(key, 0.0), oldest[0])
        return out


def read_clients(conn: Conn) -> Clients:
    """One read of pg_stat_activity, pg_roles and pg_database (no locks taken)."""
    groups = tuple(_group(r) for r in conn.execute(_GROUPS_SQL).fetchall())
    limits = tuple(Limit(*r) for r in conn.execute(_LIMITS_SQL).fetchall())
    row = conn.execute(
        "SELECT current_user, current_database(), "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None
    return Clients(groups, limits, row[0], row[1], bool(row[2]))


def _group(r: tuple[Any, ...]) -> ClientGroup:
    app, user, addr, active, idle, iit, unknown, other, age, pid = r
    return ClientGroup(
        app, user, addr, active, idle, iit, unknown, other, None if age is None else float(age), pid
    )
