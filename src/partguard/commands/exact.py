"""``fix`` (strategy ``auto``) ends with exact children: the instant swap, then the re-cut.

``instant`` gives live writes real children within seconds (the DEFAULT becomes one wide child,
no row moves); but a wide child is not a finished repair for pg_partman, whose arithmetic
assumes one interval per child (5.x premakes too few next to it; its retention drops it while
later days of it are still inside the window). So, unless ``--strategy instant`` was asked
for, the wide child is then re-cut onto the grid by the engine (``partguard split``): every
row stays visible and every write succeeds throughout, and the table ends with exact
children named by its convention.

A failure of the re-cut never undoes the repair: every row is already in a child; the error
says so and ``partguard split`` finishes (or ``--abort`` undoes) the re-cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..db import Conn, ConnParams
from ..errors import PartguardError
from ..execute import Progress
from ..humanize import quote_name
from .fix import FixOutcome, FixRequest, fix
from .split import SplitRequest, split

log = logging.getLogger(__name__)


def fix_exact(
    conn: Conn,
    params: ConnParams | str,
    req: FixRequest,
    *,
    confirm: Callable[[FixOutcome], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> FixOutcome:
    """``fix``, then (strategy auto, after an instant swap) the re-cut of the wide child."""
    started = time.monotonic()
    outcome = fix(conn, params, req, confirm=confirm, on_progress=on_progress)
    wide = (outcome.params or {}).get("span_child")
    if req.options.strategy != "auto" or outcome.strategy != "instant" or not wide:
        return outcome
    if req.dry_run:
        note = (
            f"then the wide child {quote_name(wide)} is re-cut onto the grid online "
            "(partguard split; its plan depends on the child the swap makes: "
            "see partguard split --dry-run afterwards)"
        )
        return replace(outcome, notes=[*outcome.notes, note])
    if outcome.status != "done":
        return outcome
    live = time.monotonic() - started
    log.info(
        "fix %s: live writes have real children after %.2fs; re-cutting %s",
        outcome.table,
        live,
        wide,
    )
    sreq = SplitRequest(
        table=req.table,
        children=(wide,),
        jobs=req.options.jobs,
        lock_timeout=req.lock_timeout,
        retries=req.retries,
        interval=req.interval,
        tz=req.tz,
    )
    try:
        recut = split(conn, params, sreq, on_progress=on_progress)
    except PartguardError as exc:
        raise type(exc)(
            f"every row is in a child (the instant swap committed after {live:.2f}s), but the "
            f"re-cut of {quote_name(wide)} failed: {exc}; finish it with partguard split "
            "(or undo it with partguard split --abort)"
        ) from exc
    summary: dict[str, Any] = {
        "status": recut.status,
        "live_children_after_s": round(live, 3),
        "duration_s": recut.duration_s,
        "recuts": [
            {
                "sources": r.sources,
                "targets": r.targets,
                "rows_copied": r.rows_copied,
                "changes_replayed": r.changes_replayed,
                "swap_lock_s": r.swap_lock_s,
            }
            for r in recut.recuts
        ],
    }
    longest = max([outcome.longest_lock_s, *(r.swap_lock_s for r in recut.recuts)])
    return replace(
        outcome,
        strategy="instant+recut",
        recut=summary,
        findings_after=recut.findings_after if recut.status == "done" else outcome.findings_after,
        duration_s=round(time.monotonic() - started, 3),
        longest_lock_s=round(longest, 4),
        notes=[*outcome.notes, *recut.notes],
    )
