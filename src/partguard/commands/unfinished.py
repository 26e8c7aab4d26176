"""When a fix does not finish: undo what instant left before its swap, or say exactly
what is left and the command that finishes it; and the journal's runs for ``fix --status``.

instant's first steps put a trigger and a CHECK on the DEFAULT that divert every insert
outside the repair's span to quarantine (the writer sees ``INSERT 0 0``). That is fine for
the seconds a run takes, and wrong for a table left so by a failed swap: the undo drops
both and puts the rows the run set aside back into the parent, in one transaction, and
marks the run ``rolled_back``. After the swap there is nothing to undo: the table works,
and rerunning the same command finishes the rest from the journal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from .. import journal
from ..db import Conn, ConnParams, connect, run_locked, scalar
from ..diagnose import describe_unfinished, display_name, repair_command
from ..errors import PartguardError
from ..inspect import catalog, leftovers
from ..inspect.snapshot import read_server
from ..plan import steps as S
from ..plan.fix import FixParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Undone:
    rows_put_back: int
    dropped: tuple[str, ...]  # 'trigger partguard_divert', 'CHECK partguard_span'


def undo_instant(
    conn: Conn,
    table: catalog.Table,
    source: str,
    quarantine: str,
    run: journal.FixRun | None,
    *,
    lock_timeout: float,
    retries: int,
    reason: str,
) -> Undone:
    """Drop instant's trigger and CHECK from ``source`` (the DEFAULT) and put the rows the
    run set aside in ``partguard.<quarantine>`` (since it started) back into the parent, in
    one transaction with the journal's ``rolled_back``. Only valid before the swap, while
    the DEFAULT is attached. Without a run no row is moved: nothing tells whose they are."""
    src = sql.Identifier(table.schema, source)
    q = sql.Identifier(S.SCHEMA, quarantine)
    since = run.started_at if run is not None else None
    relations = [table.oid] + ([table.default.oid] if table.default else [])

    def work(c: Conn) -> Undone:
        dropped = []
        if _exists(
            c,
            "SELECT 1 FROM pg_trigger WHERE tgrelid = {}::regclass AND tgname = {}",
            src,
            S.TRIGGER_NAME,
        ):
            c.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(S.TRIGGER_NAME), src))
            dropped.append(f"trigger {S.TRIGGER_NAME}")
        if _exists(
            c,
            "SELECT 1 FROM pg_constraint WHERE conrelid = {}::regclass AND conname = {}",
            src,
            S.CHECK_NAME,
        ):
            c.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    src, sql.Identifier(S.CHECK_NAME)
                )
            )
            dropped.append(f"CHECK {S.CHECK_NAME}")
        moved = 0
        if since is not None and scalar(c, "SELECT to_regclass(%s)", (q.as_string(c),)):
            back = sql.SQL(
                "(DELETE FROM {} WHERE partguard_quarantined_at >= {} RETURNING *)"
            ).format(q, sql.Literal(since))
            moved = c.execute(
                sql.SQL("WITH moved AS {} {}").format(
                    back, S.insert_into_parent(table, sql.SQL("moved"))
                )
            ).rowcount
            if not scalar(c, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(q)):
                c.execute(sql.SQL("DROP TABLE {}").format(q))  # as it was before the run
        if run is not None:
            journal.set_state(
                c,
                run.run_id,
                "rolled_back",
                finished=True,
                detail={"rolled_back": {"reason": reason, "rows_put_back": moved}},
            )
        return Undone(moved, tuple(dropped))

    done: Undone = run_locked(
        conn, work, lock_timeout=lock_timeout, retries=retries, relations=relations, what="undo"
    )
    log.warning("fix %s: undone: %s", table.qualname, describe_undone(done, table, source))
    return done


def describe_undone(u: Undone, table: catalog.Table, source: str) -> str:
    src = display_name(replace(table, name=source))
    dropped = (
        f"dropped {' and '.join(u.dropped)} from {src}"
        if u.dropped
        else f"nothing was left on {src}"
    )
    return f"{dropped}, put {u.rows_put_back} quarantined rows back into {display_name(table)}"


def _exists(conn: Conn, template: str, rel: sql.Identifier, name: str) -> bool:
    return (
        conn.execute(
            sql.SQL(template).format(sql.Literal(rel.as_string(conn)), sql.Literal(name))
        ).fetchone()
        is not None
    )


def after_failure(
    conn: Conn,
    params: ConnParams | str,
    table: catalog.Table,
    p: FixParams,
    run_id: int,
    exc: BaseException,
    *,
    lock_timeout: float,
    retries: int,
    lock_key: int,
) -> str | None:
    """A step failed after the run committed something: undo it (instant before the swap)
    or describe what is left. Returns the sentence to add to the error (None: the run
    never committed a step, nothing changed)."""
    own = not (conn.closed or conn.broken)
    c = conn if own else _reconnect(params, lock_key)
    if c is None:
        return (
            f"the connection is gone, so partguard cannot tell or undo what is left; see "
            f"`partguard fix --status` and `partguard check -t {display_name(table)}`"
        )
    try:
        run = journal.get_run(c, run_id)
        if run is None or run.state == "started":
            return None
        if p.strategy == "instant" and run.state in journal.INSTANT_BEFORE_SWAP:
            try:
                done = undo_instant(
                    c,
                    table,
                    p.source,
                    p.quarantine,
                    run,
                    lock_timeout=lock_timeout,
                    retries=retries,
                    reason=_first_line(exc),
                )
            except (PartguardError, psycopg.Error) as undo_exc:
                return f"the undo failed too ({_first_line(undo_exc)}): {left(c, table, run_id)}"
            undone = describe_undone(done, table, p.source)
            return f"undone: {undone}; the table is as it was (run {run_id} rolled back)"
        return f"stopped after step {run.state}: {left(c, table, run_id)}"
    finally:
        if not own:
            c.close()


def left(conn: Conn, table: catalog.Table, run_id: int) -> str:
    """check's ``unfinished_fix`` message for this run: what is left and the command."""
    fresh = catalog.read_tables(conn, [sql.Identifier(table.schema, table.name).as_string(conn)])[0]
    found = leftovers.read(conn, [fresh]).get(fresh.oid)
    u = next((u for u in (found.unfinished if found else ()) if u.run_id == run_id), None)
    server = read_server(conn)
    if u is None:
        return f"nothing left behind; rerun to finish: {repair_command(server, fresh, '--yes')}"
    return describe_unfinished(fresh, replace(u, running=None), server)


def _reconnect(params: ConnParams | str, lock_key: int) -> Conn | None:
    """A fresh session for the undo, holding the table's fix lock as the lost one did."""
    try:
        c = connect(params)
    except PartguardError as exc:
        log.warning("cannot reconnect to undo: %s", exc)
        return None
    if c.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,)).fetchone() == (True,):
        return c  # closing the session lets the lock go
    log.warning("cannot undo: the lost session still holds the table's fix lock")
    c.close()
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].removeprefix("partguard: ")


# --- fix --status -------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """A journal run as ``fix --status`` shows it; for an unfinished one, what it left."""

    run: journal.FixRun
    holding: str | None  # copy: the holding table's display name
    rows_not_visible: int | None  # unfinished copy: rows there not visible through the parent yet
    rows_exact: bool
    left: str | None  # unfinished: check's message, with the command that finishes it
    recut_owed: bool = False  # finished (auto, its swap), but the re-cut it promised is owed


def runs_status(conn: Conn, limit: int = 50) -> list[RunStatus]:
    runs = journal.list_runs(conn, limit)
    owing = {r.run_id for r in journal.recut_candidates(conn)}
    tables: dict[int, catalog.Table] = {}
    for r in runs:
        if (r.finished_at is None or r.run_id in owing) and r.parent_oid not in tables:
            try:
                schema, name = catalog.relation_name(conn, r.parent_oid)
                tables[r.parent_oid] = catalog.read_tables(
                    conn, [sql.Identifier(schema, name).as_string(conn)]
                )[0]
            except PartguardError:
                continue  # the table is gone
    found = leftovers.read(conn, list(tables.values()))
    server = read_server(conn) if found else None
    out = []
    for r in runs:
        hold = r.params.get("holding")
        table = tables.get(r.parent_oid)
        shown = display_name(replace(table, name=hold)) if hold and table else (hold or None)
        u = next(
            (
                u
                for u in (found[r.parent_oid].unfinished if r.parent_oid in found else ())
                if u.run_id == r.run_id
            ),
            None,
        )
        if u is None or table is None or server is None:
            out.append(RunStatus(r, shown, None, True, None))
            continue
        rows = u.hidden_rows if r.strategy == "copy" else None
        out.append(
            RunStatus(
                r,
                shown,
                rows,
                u.hidden_exact,
                describe_unfinished(table, u, server),
                recut_owed=u.kind == "recut",
            )
        )
    return out
