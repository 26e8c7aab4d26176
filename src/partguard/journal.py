"""partguard's own state, kept in the database it looks after (schema ``partguard``).

Keeping the journal next to the data means a crashed ``fix`` can be resumed from any
machine, and ``check``/``metrics`` know the last successful maintenance even on
pg_partman 4.7, which does not record it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from .db import Conn
from .errors import PermissionDenied
from .inspect.privileges import untrusted

SCHEMA = "partguard"

_LOCK_SPACE = 0x70617274  # 'part': our half of the advisory-lock key of a fix

# Steps after which an instant run has changed the DEFAULT but not yet swapped it: its
# trigger diverts inserts and its CHECK narrows the DEFAULT. Undone, never left behind.
INSTANT_BEFORE_SWAP = ("prepare", "quarantine", "validate")

_DDL = """
CREATE SCHEMA IF NOT EXISTS partguard;
CREATE TABLE IF NOT EXISTS partguard.fix_run (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_oid   oid NOT NULL,
    parent_name  text NOT NULL,
    strategy     text NOT NULL,
    state        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    holding      text,
    quarantine   text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS partguard.fix_chunk (
    run_id       bigint NOT NULL REFERENCES partguard.fix_run ON DELETE CASCADE,
    first_block  bigint NOT NULL,
    end_block    bigint NOT NULL,
    rows_copied  bigint NOT NULL,
    rows_quarantined bigint NOT NULL DEFAULT 0,
    per_child    jsonb NOT NULL DEFAULT '{}',
    done_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, first_block)
);
CREATE TABLE IF NOT EXISTS partguard.maintenance_run (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running',
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS partguard.maintenance_table (
    run_id       bigint NOT NULL REFERENCES partguard.maintenance_run ON DELETE CASCADE,
    table_name   text NOT NULL,
    status       text NOT NULL,
    message      text NOT NULL DEFAULT '',
    finished_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, table_name)
);
"""


def ensure_trusted(conn: Conn) -> None:
    """Refuse (nothing changed) when schema partguard, a helper function or a journal table
    belongs to a role this one is not (and not a superuser): its owner could change what
    partguard runs, and this role would run it with its own rights."""
    bad = untrusted(conn)
    if bad:
        raise PermissionDenied(
            "partguard runs no code another role can change, and these belong to a role this "
            f"one is not: {'; '.join(bad)} (nothing changed; check them, then ALTER … OWNER TO "
            "a trusted role, or drop them)"
        )


def ensure_schema(conn: Conn) -> None:
    """Create partguard's schema and tables if missing (idempotent, cheap), once they are
    known to be partguard's own (:func:`ensure_trusted`)."""
    ensure_trusted(conn)
    exists = conn.execute(
        "SELECT to_regclass('partguard.maintenance_table') IS NOT NULL"
    ).fetchone()
    if exists and exists[0]:
        return
    with conn.transaction():
        # Two first runs at once must not both create: serialise on a fixed advisory key.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('partguard schema'))")
        conn.execute(_DDL)


def schema_exists(conn: Conn) -> bool:
    row = conn.execute("SELECT to_regclass('partguard.maintenance_table') IS NOT NULL").fetchone()
    return bool(row and row[0])


def readable(conn: Conn) -> bool:
    """The fix journal exists and this role may read it (a monitoring role may not)."""
    # CASE, not AND: has_table_privilege raises on a table that does not exist.
    row = conn.execute(
        "SELECT CASE WHEN to_regclass('partguard.fix_run') IS NULL OR to_regclass('partguard.fix_chunk') IS NULL "
        "THEN false ELSE has_table_privilege('partguard.fix_run', 'SELECT') "
        "AND has_table_privilege('partguard.fix_chunk', 'SELECT') END"
    ).fetchone()
    return bool(row and row[0])


def advisory_key(oid: int) -> int:
    """The session advisory lock a running fix holds on its table (pg_locks: classid
    ``_LOCK_SPACE``, objid the table's oid)."""
    return (_LOCK_SPACE << 32) | (oid & 0xFFFFFFFF)


@dataclass(frozen=True)
class FixRun:
    run_id: int
    parent_oid: int
    parent_name: str
    strategy: str
    state: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    holding: str | None
    quarantine: str | None
    detail: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        """The plan as written before the first change (``FixParams.as_json``)."""
        return dict(self.detail.get("params") or {})


_RUN_COLS = sql.SQL(
    "run_id, parent_oid, parent_name, strategy, state, started_at, updated_at, finished_at, "
    "holding, quarantine, detail"
)


def open_run(conn: Conn, parent_oid: int) -> FixRun | None:
    """The unfinished run for this table, if an earlier fix was interrupted."""
    row = conn.execute(
        sql.SQL(
            "SELECT {} FROM partguard.fix_run WHERE parent_oid = %s AND finished_at IS NULL "
            "ORDER BY run_id DESC LIMIT 1"
        ).format(_RUN_COLS),
        (parent_oid,),
    ).fetchone()
    return FixRun(*row) if row else None


def get_run(conn: Conn, run_id: int) -> FixRun | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM partguard.fix_run WHERE run_id = %s").format(_RUN_COLS), (run_id,)
    ).fetchone()
    return FixRun(*row) if row else None


def list_runs(conn: Conn, limit: int = 50) -> list[FixRun]:
    if not schema_exists(conn):
        return []
    rows = conn.execute(
        sql.SQL("SELECT {} FROM partguard.fix_run ORDER BY run_id DESC LIMIT %s").format(_RUN_COLS),
        (limit,),
    ).fetchall()
    return [FixRun(*r) for r in rows]


def unfinished_runs(conn: Conn) -> list[FixRun]:
    """Runs that committed at least one step and did not finish: each left something
    behind (a holding table, a trigger and CHECK, quarantined rows). A run still
    'started' changed nothing yet."""
    if not readable(conn):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT {} FROM partguard.fix_run WHERE finished_at IS NULL AND state <> 'started' "
            "ORDER BY run_id"
        ).format(_RUN_COLS)
    ).fetchall()
    return [FixRun(*r) for r in rows]


def recut_candidates(conn: Conn) -> list[FixRun]:
    """Finished ``fix`` runs of strategy auto whose instant swap made a wide child and whose
    re-cut has not been settled by that fix (``detail.recut``, written once the re-cut ran or
    was refused). Whether the re-cut is still owed is the catalog's to say: while the wide
    child exists with the swap's bounds (``leftovers``); a manual ``partguard split`` settles it."""
    if not readable(conn):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT {} FROM partguard.fix_run WHERE finished_at IS NOT NULL AND state = 'done' "
            "AND strategy = 'instant' AND detail->>'auto' = 'true' "
            "AND detail->'params'->>'span_child' IS NOT NULL AND detail->'recut' IS NULL "
            "ORDER BY run_id"
        ).format(_RUN_COLS)
    ).fetchall()
    return [FixRun(*r) for r in rows]


def note_run(conn: Conn, run_id: int, detail: dict[str, Any]) -> None:
    """Merge ``detail`` into a run's journal detail, its state unchanged."""
    conn.execute(
        "UPDATE partguard.fix_run SET detail = detail || %s, updated_at = clock_timestamp() "
        "WHERE run_id = %s",
        (Jsonb(detail), run_id),
    )


def quarantine_names(conn: Conn) -> dict[int, set[str]]:
    """Quarantine tables (in schema partguard) any fix run of each table has used."""
    if not readable(conn):
        return {}
    out: dict[int, set[str]] = {}
    for oid, name in conn.execute(
        "SELECT DISTINCT parent_oid, detail->'params'->>'quarantine' FROM partguard.fix_run "
        "WHERE detail->'params'->>'quarantine' IS NOT NULL"
    ):
        out.setdefault(int(oid), set()).add(str(name))
    return out


def chunk_ranges(conn: Conn, run_id: int) -> list[tuple[int, int]]:
    """(first_block, end_block) of every range a copy run has committed, in block order."""
    return [
        (int(a), int(b))
        for a, b in conn.execute(
            "SELECT first_block, end_block FROM partguard.fix_chunk WHERE run_id = %s ORDER BY first_block",
            (run_id,),
        )
    ]


def start_run(
    conn: Conn, parent_oid: int, parent_name: str, strategy: str, detail: dict[str, Any]
) -> FixRun:
    params = detail.get("params") or {}
    row = conn.execute(
        sql.SQL(
            "INSERT INTO partguard.fix_run (parent_oid, parent_name, strategy, state, holding, quarantine, "
            "detail) VALUES (%s, %s, %s, 'started', %s, %s, %s) RETURNING {}"
        ).format(_RUN_COLS),
        (
            parent_oid,
            parent_name,
            strategy,
            params.get("holding"),
            params.get("quarantine"),
            Jsonb(detail),
        ),
    ).fetchone()
    assert row is not None
    return FixRun(*row)


def set_state(
    conn: Conn, run_id: int, state: str, *, finished: bool = False, **fields: Any
) -> None:
    """Record a phase; callers inside a transaction make it atomic with their DDL."""
    sets: list[sql.Composable] = [sql.SQL("state = %s"), sql.SQL("updated_at = clock_timestamp()")]
    params: list[Any] = [state]
    for name, value in fields.items():
        if name == "detail":
            sets.append(sql.SQL("detail = detail || %s"))
            params.append(Jsonb(value))
        else:
            sets.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
            params.append(value)
    if finished:
        sets.append(sql.SQL("finished_at = clock_timestamp()"))
    conn.execute(
        sql.SQL("UPDATE partguard.fix_run SET {} WHERE run_id = %s").format(
            sql.SQL(", ").join(sets)
        ),
        (*params, run_id),
    )


def run_state(conn: Conn, run_id: int) -> str | None:
    row = conn.execute(
        "SELECT state FROM partguard.fix_run WHERE run_id = %s", (run_id,)
    ).fetchone()
    return str(row[0]) if row else None


def record_chunk(
    conn: Conn, run_id: int, first: int, end: int, per_child: dict[str, int], quarantined: int
) -> None:
    """One copied block range, in the transaction that copied it."""
    conn.execute(
        "INSERT INTO partguard.fix_chunk (run_id, first_block, end_block, rows_copied, rows_quarantined, per_child) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (run_id, first, end, sum(per_child.values()), quarantined, Jsonb(per_child)),
    )


def done_chunks(conn: Conn, run_id: int) -> set[int]:
    """First blocks of the ranges a run has copied and committed."""
    return {
        int(r[0])
        for r in conn.execute(
            "SELECT first_block FROM partguard.fix_chunk WHERE run_id = %s", (run_id,)
        )
    }


def chunk_totals(conn: Conn, run_id: int) -> tuple[int, int, dict[str, int]]:
    """(rows copied, rows quarantined, rows per child) over a run's committed ranges."""
    row = conn.execute(
        "SELECT coalesce(sum(rows_copied), 0), coalesce(sum(rows_quarantined), 0) "
        "FROM partguard.fix_chunk WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    per: dict[str, int] = {}
    for (d,) in conn.execute(
        "SELECT per_child FROM partguard.fix_chunk WHERE run_id = %s", (run_id,)
    ):
        for k, v in d.items():
            per[k] = per.get(k, 0) + int(v)
    return (int(row[0]), int(row[1]), per) if row else (0, 0, per)


def last_maintenance(conn: Conn) -> dict[str, datetime]:
    """Last successful partguard maintenance per table ('schema.table')."""
    if not schema_exists(conn):
        return {}
    rows = conn.execute(
        "SELECT table_name, max(finished_at) FROM partguard.maintenance_table "
        "WHERE status = 'ok' GROUP BY table_name"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


# --- maintenance runs (written by ``maintain``) --------------------------------


def start_maintenance(conn: Conn, detail: dict[str, Any]) -> int:
    """Open a run row first, so a run that dies half-way still leaves a trace ('running')."""
    row = conn.execute(
        "INSERT INTO partguard.maintenance_run (detail) VALUES (%s) RETURNING run_id",
        (Jsonb(detail),),
    ).fetchone()
    assert row is not None
    return int(row[0])


def record_maintenance_table(
    conn: Conn, run_id: int, table_name: str, status: str, message: str
) -> None:
    """One table's outcome ('ok' is what ``last_maintenance`` counts as a success)."""
    conn.execute(
        "INSERT INTO partguard.maintenance_table (run_id, table_name, status, message) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (run_id, table_name) DO UPDATE "
        "SET status = EXCLUDED.status, message = EXCLUDED.message, finished_at = clock_timestamp()",
        (run_id, table_name, status, message),
    )


def finish_maintenance(conn: Conn, run_id: int, status: str, detail: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE partguard.maintenance_run SET status = %s, finished_at = clock_timestamp(), "
        "detail = detail || %s WHERE run_id = %s",
        (status, Jsonb(detail), run_id),
    )


# --- split runs (written by ``split``, the re-cut engine) --------------------------------
#
# Unlike fix's, these statements are part of the plan: the dry-run script creates and
# updates the same journal rows the executor does, so a run started from the script can
# be finished or aborted by ``partguard split``.

_SPLIT_DDL = """
CREATE TABLE IF NOT EXISTS partguard.split_run (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tag          text NOT NULL UNIQUE,
    parent_oid   oid NOT NULL,
    parent_name  text NOT NULL,
    sources      text[] NOT NULL,
    state        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    detail       jsonb NOT NULL DEFAULT '{}'
)"""


def split_ddl() -> tuple[sql.Composed, ...]:
    """partguard's schema and the split journal, idempotent; two first runs at once
    serialise on the same advisory key ``ensure_schema`` uses."""
    return (
        sql.Composed([sql.SQL("SELECT pg_advisory_xact_lock(hashtext('partguard schema'))")]),
        sql.Composed([sql.SQL("CREATE SCHEMA IF NOT EXISTS partguard")]),
        sql.Composed([sql.SQL(_SPLIT_DDL)]),
    )


def split_start(
    tag: str, parent: sql.Identifier, parent_name: str, sources: list[str], detail: dict[str, Any]
) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO partguard.split_run (tag, parent_oid, parent_name, sources, state, detail) "
        "VALUES ({tag}, {parent}::regclass::oid, {name}, {sources}::text[], 'captured', "
        "{detail}::jsonb)"
    ).format(
        tag=sql.Literal(tag),
        parent=sql.Literal(parent.as_string(None)),
        name=sql.Literal(parent_name),
        sources=sql.Literal(sources),
        detail=sql.Literal(json.dumps(detail)),
    )


def split_state(tag: str, state: str, *, finished: bool = False) -> sql.Composed:
    return sql.SQL(
        "UPDATE partguard.split_run SET state = {state}, updated_at = clock_timestamp(){fin} "
        "WHERE tag = {tag}"
    ).format(
        state=sql.Literal(state),
        tag=sql.Literal(tag),
        fin=sql.SQL(", finished_at = clock_timestamp()") if finished else sql.SQL(""),
    )


@dataclass(frozen=True)
class SplitRun:
    run_id: int
    tag: str
    parent_oid: int
    parent_name: str
    sources: list[str]
    state: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    detail: dict[str, Any]


_SPLIT_COLS = sql.SQL(
    "run_id, tag, parent_oid, parent_name, sources, state, started_at, updated_at, finished_at, "
    "detail"
)


def _split_exists(conn: Conn) -> bool:
    row = conn.execute("SELECT to_regclass('partguard.split_run') IS NOT NULL").fetchone()
    return bool(row and row[0])


def open_split(conn: Conn, parent_oid: int) -> SplitRun | None:
    """The unfinished split of this table, if an earlier one was interrupted."""
    if not _split_exists(conn):
        return None
    row = conn.execute(
        sql.SQL(
            "SELECT {} FROM partguard.split_run WHERE parent_oid = %s AND finished_at IS NULL "
            "ORDER BY run_id DESC LIMIT 1"
        ).format(_SPLIT_COLS),
        (parent_oid,),
    ).fetchone()
    return SplitRun(*row) if row else None


def unfinished_splits(conn: Conn) -> list[SplitRun]:
    """Every split run not finished (interrupted, or running now), oldest first."""
    if not _split_exists(conn):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT {} FROM partguard.split_run WHERE finished_at IS NULL ORDER BY run_id"
        ).format(_SPLIT_COLS)
    ).fetchall()
    return [SplitRun(*r) for r in rows]


def split_runs(conn: Conn, limit: int = 50) -> list[SplitRun]:
    if not _split_exists(conn):
        return []
    rows = conn.execute(
        sql.SQL("SELECT {} FROM partguard.split_run ORDER BY run_id DESC LIMIT %s").format(
            _SPLIT_COLS
        ),
        (limit,),
    ).fetchall()
    return [SplitRun(*r) for r in rows]


def split_detail(conn: Conn, tag: str, detail: dict[str, Any]) -> None:
    """Figures a run reports (rows copied, lock times): informative, never decisive."""
    conn.execute(
        "UPDATE partguard.split_run SET detail = detail || %s WHERE tag = %s", (Jsonb(detail), tag)
    )
