"""pg_partman's configuration, read by the columns present so 4.7.x and 5.x both work.

``part_config`` changes shape between releases (``default_table`` only in 5.0-5.1,
``maintenance_last_run`` from 5.1, ``partition_type`` 'native' in 4.x vs 'range' in 5.x),
so we select ``to_jsonb(pc)`` and pick the fields we know.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from ..db import Conn

# What partman says when a call did not do its work (read off its SQL, 4.7.2 to 5.5.0).
ALREADY_RUNNING = "maintenance already running"
LOCK_TIMEOUT_TEXT = "canceling statement due to lock timeout"
# 5.5 catches each partition set's error and only WARNs: "... skipped partition set for
# parent table <t>: <error>" (the transaction goes on; its children were not made).
SKIPPED_SET = "pg_partman maintenance skipped partition set"


@dataclass(frozen=True)
class Partman:
    """The installed extension: where it lives and which major version it is."""

    schema: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def lock_keys(self) -> tuple[str, ...]:
        """The ``hashtext()`` texts of partman's own advisory locks (read in its SQL).

        ``run_maintenance()`` takes a transaction lock on the first; ``run_maintenance_proc()``
        (which partman 5.x's background worker calls) a *session* lock on its own key, which
        a session whose procedure failed keeps until it disconnects: 4.7 shares the first key,
        5.0-5.4 use ``… procedure``, 5.5 ``… run_maintenance_proc``.
        """
        if self.major < 5:
            return ("pg_partman run_maintenance",)
        return (
            "pg_partman run_maintenance",
            "pg_partman run_maintenance procedure",
            "pg_partman run_maintenance_proc",
        )

    def last_run_sql(self, parent_table: str) -> sql.Composed:
        """5.1+'s ``maintenance_last_run`` of one set (partman's own confirmation)."""
        return sql.SQL(
            "SELECT (to_jsonb(pc) ->> 'maintenance_last_run') FROM {} pc WHERE parent_table = {}"
        ).format(sql.Identifier(self.schema, "part_config"), sql.Literal(parent_table))

    def func(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def run_maintenance_sql(self, parent_table: str) -> sql.Composed:
        """The per-table call; both named parameters exist in 4.7.x and 5.x. No jobmon: its
        logging commits separately and is not what we report from."""
        return sql.SQL("SELECT {f}(p_parent_table := {t}, p_jobmon := false)").format(
            f=self.func("run_maintenance"), t=sql.Literal(parent_table)
        )


@dataclass(frozen=True)
class PartmanConfig:
    parent_table: str  # 'schema.table' as partman stores it
    control: str
    interval: str  # partition_interval as text ('1 day', '1 mon', '100000')
    partition_type: str
    premake: int
    datetime_string: str | None
    automatic_maintenance: bool
    template_table: str | None
    default_table: bool | None  # 5.0-5.1 only: whether partman manages a DEFAULT
    ignore_default_data: bool | None
    maintenance_last_run: datetime | None  # 5.1+
    epoch: str
    timezone: str | None  # 5.x partition_timezone: partman's zone regardless of the session
    raw: dict[str, Any]


def find_partman(conn: Conn) -> Partman | None:
    row = conn.execute(
        """SELECT n.nspname, e.extversion FROM pg_extension e
           JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman'"""
    ).fetchone()
    return Partman(row[0], row[1]) if row else None


def read_configs(conn: Conn, partman: Partman | None) -> dict[str, PartmanConfig]:
    """part_config rows keyed by ``parent_table`` (lower-cased as partman stores it)."""
    if partman is None:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT to_jsonb(pc) FROM {} pc").format(
            sql.Identifier(partman.schema, "part_config")
        )
    ).fetchall()
    configs = {}
    for (raw,) in rows:
        cfg = _from_row(raw)
        configs[cfg.parent_table] = cfg
    return configs


def _from_row(raw: dict[str, Any]) -> PartmanConfig:
    last = raw.get("maintenance_last_run")
    return PartmanConfig(
        parent_table=raw["parent_table"],
        control=raw.get("control") or "",
        interval=str(raw.get("partition_interval") or ""),
        partition_type=str(raw.get("partition_type") or ""),
        premake=int(raw.get("premake") or 4),
        datetime_string=raw.get("datetime_string"),
        automatic_maintenance=str(raw.get("automatic_maintenance", "on")) == "on",
        template_table=raw.get("template_table"),
        default_table=raw.get("default_table"),
        ignore_default_data=raw.get("ignore_default_data"),
        maintenance_last_run=datetime.fromisoformat(last) if last else None,
        epoch=str(raw.get("epoch") or "none"),
        timezone=raw.get("partition_timezone"),
        raw=raw,
    )


def config_for(configs: dict[str, PartmanConfig], schema: str, table: str) -> PartmanConfig | None:
    """partman stores ``schema.table`` unquoted (and lower-cases what it is given)."""
    return configs.get(f"{schema}.{table}") or configs.get(f"{schema}.{table}".lower())
