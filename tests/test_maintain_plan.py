"""Pure tests of maintain's decision (plan/maintain.py): targets, verdicts and the run's
status from hand-built snapshots and outcomes, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from partguard.config import Config, TableSpec
from partguard.errors import CRITICAL, OK, UNKNOWN, WARNING, TableNotFound, UsageError
from partguard.inspect.catalog import Child, Table
from partguard.inspect.data import Probe
from partguard.inspect.grid import Interval, time_grid
from partguard.inspect.locks import LockHolder
from partguard.inspect.partman import PartmanConfig
from partguard.inspect.retention import PartmanDrop
from partguard.inspect.snapshot import GridInfo, Server, TableState
from partguard.plan import maintain as M
from partguard.plan.premake import Refusal

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TODAY = datetime(2026, 3, 10, tzinfo=UTC)
CTX = M.Context("-d app", "UTC")


def pcfg(parent: str, *, auto: bool = True, raw: dict[str, Any] | None = None) -> PartmanConfig:
    return PartmanConfig(
        parent,
        "ts",
        "1 day",
        "range",
        4,
        None,
        auto,
        None,
        None,
        None,
        None,
        "none",
        None,
        raw or {},
    )


def table(days: range, name: str = "events", default: bool = False) -> Table:
    kids = tuple(
        Child(
            10 + i,
            "app",
            f"{name}_p{TODAY + d * DAY:%Y%m%d}",
            TODAY + d * DAY,
            TODAY + (d + 1) * DAY,
            False,
            False,
            0,
            "",
        )
        for i, d in enumerate(days)
    )
    dflt = (
        Child(9, "app", f"{name}_default", None, None, True, False, 0, "DEFAULT")
        if default
        else None
    )
    return Table(
        1,
        "app",
        name,
        "range",
        ("ts",),
        False,
        "timestamp with time zone",
        True,
        "o",
        kids,
        dflt,
        (),
    )


def state(
    t: Table, probe: Probe | None = None, drops: tuple[tuple[PartmanDrop, Any], ...] = ()
) -> TableState:
    grid = GridInfo(time_grid(Interval(days=1), "UTC"), "children", aligned_zone="UTC")
    return TableState(t, None, grid, probe, None, None, drops)


def probe(max_key: datetime | None, rows: int = 5) -> Probe:
    return Probe(rows, rows, max_key, max_key, 0, (), False, True)


def server() -> Server:
    return Server(150000, 100, 3, 0, 1, "UTC", NOW, "maint", False, None, "app")


def native(name: str = "app.events", premake: int = 3) -> M.Target:
    return M.Target(
        name, 1, None, TableSpec(name, interval="1 day", premake=premake), ("app", "events")
    )


def partman_target(raw: dict[str, Any] | None = None) -> M.Target:
    return M.Target("app.events", 1, pcfg("app.events", raw=raw), None, ("app", "events"))


def holder(state_: str = "active") -> LockHolder:
    return LockHolder(
        4242, "cron", "app", state_, None, None, "CALL partman.run_maintenance_proc()"
    )


# --- targets ---------------------------------------------------------------------------------


def test_targets_are_partmans_automatic_tables_and_the_configs_sorted_then_the_reported() -> None:
    configs = {
        "app.b": pcfg("app.b"),
        "app.manual": pcfg("app.manual", auto=False),
        "app.gone": pcfg("app.gone"),
    }
    config = Config(
        (
            TableSpec("app.a", interval="1 day"),
            TableSpec("app.missing", interval="1 day"),
            TableSpec("app.plain"),
        )
    )
    lookup: dict[str, M.Resolved | Any] = {
        "app.a": (1, "app", "a"),
        "app.b": (2, "app", "b"),
        "app.manual": (3, "app", "manual"),
        "app.plain": (4, "app", "plain"),
        "app.missing": TableNotFound("table app.missing does not exist"),
        "app.gone": TableNotFound("table app.gone does not exist"),
    }
    names = M.target_names(configs, config, ())
    assert "app.manual" not in names and set(names) <= set(lookup)
    got = M.plan_targets({n: lookup[n] for n in names}, configs, config)
    assert [(t.qualname, t.kind, t.skip != "") for t in got] == [
        ("app.a", "native", False),
        ("app.b", "partman", False),
        ("app.gone", "partman", True),
        ("app.missing", "native", True),
        ("app.plain", "native", True),
    ]
    skips = {t.qualname: t.skip for t in got}
    assert skips["app.gone"] == "part_config names app.gone, which does not exist"
    assert skips["app.missing"] == "partguard.toml names app.missing, which does not exist"
    assert "gives it no interval" in skips["app.plain"]


def test_named_tables_must_be_maintainable() -> None:
    missing = TableNotFound("table app.nope does not exist (or is not visible in search_path)")
    with pytest.raises(TableNotFound) as exc:
        M.plan_targets({"app.nope": missing}, {}, Config(), ("app.nope",))
    assert exc.value is missing
    with pytest.raises(UsageError, match="neither managed by pg_partman nor configured"):
        M.plan_targets({"app.x": (7, "app", "x")}, {}, Config(), ("app.x",))
    assert M.target_names({"app.b": pcfg("app.b")}, Config(), ("app.x",)) == ["app.x"]


def test_a_partman_table_may_only_pin_its_tz_in_the_config() -> None:
    configs = {"app.b": pcfg("app.b")}
    with pytest.raises(UsageError, match="managed by pg_partman"):
        M.plan_targets(
            {"app.b": (2, "app", "b")}, configs, Config((TableSpec("app.b", interval="1 day"),))
        )
    (t,) = M.plan_targets(
        {"app.b": (2, "app", "b")}, configs, Config((TableSpec("app.b", tz="Europe/Paris"),))
    )
    assert (
        t.kind == "partman"
        and t.zone("UTC") == "Europe/Paris"
        and native().zone("Asia/Tokyo") == "Asia/Tokyo"
    )


# --- partman --------------------------------------------------------------------------------


def test_partman_is_refused_when_the_default_holds_rows_at_or_beyond_the_newest_child() -> None:
    t = table(range(-1, 3), default=True)
    newest = TODAY + 3 * DAY
    out = M.refuse_partman(partman_target(), state(t, probe(newest)), CTX.command)
    assert out is not None and (out.status, out.severity) == ("refused", CRITICAL)
    assert (
        "beyond the newest child" in out.message
        and "partguard fix" in out.message
        and "-d app" in out.message
    )
    assert (
        M.refuse_partman(partman_target(), state(t, probe(newest - timedelta(seconds=1))), "-d app")
        is None
    )
    assert M.refuse_partman(partman_target(), state(t, None), "-d app") is None


def test_partmans_call_counts_only_if_partman_confirms_it() -> None:
    t = partman_target()
    text = (
        "pg_partman maintenance skipped partition set for parent table app.events: "
        'canceling statement due to statement timeout\nCONTEXT: SQL statement "x"'
    )
    skipped = ("WARNING", text)
    v = M.partman_verdict(t, [("NOTICE", "hello"), skipped])
    assert (v.status, v.severity) == ("failed", CRITICAL) and "\n" not in v.message
    assert (
        v.message.startswith("pg_partman maintenance skipped partition set")
        and v.detail == skipped[1]
    )
    v = M.partman_verdict(t, [(M.UNCONFIRMED, "maintenance_last_run did not move")])
    assert (v.status, v.message) == (
        "failed",
        "pg_partman did not confirm the run (maintenance_last_run did not move)",
    )
    v = M.partman_verdict(t, [("WARNING", "something odd"), ("NOTICE", "fine")])
    assert (v.status, v.severity, v.detail) == ("ok", OK, "something odd")
    assert M.confirms(pcfg("x", raw={"maintenance_last_run": None})) and not M.confirms(pcfg("x"))


def test_retention_is_held_back_only_for_a_child_with_rows_inside_the_window() -> None:
    t = table(range(-5, 3))
    old, wide = t.children[0], t.children[1]
    cutoff = TODAY - 4 * DAY
    drops = (
        (PartmanDrop(old, old.upper, cutoff), None),  # empty: may go
        (PartmanDrop(wide, wide.upper, cutoff), cutoff + timedelta(hours=1)),
    )  # rows inside
    early = M.early_drops(state(t, drops=drops))
    assert early == (wide.name,)
    ok = partman_target().outcome("ok", OK)
    held = M.held_back(ok, early, t, CTX.command)
    assert (
        held.severity == WARNING
        and "retention held back" in held.message
        and wide.name in held.message
    )
    assert M.held_back(ok, (), t, CTX.command) is ok
    failed = partman_target().outcome("failed", CRITICAL, "boom")
    assert M.held_back(failed, early, t, CTX.command) is failed


def test_blocked_names_the_holder_and_how_to_end_an_idle_one() -> None:
    idle = M.blocked(partman_target(), holder("idle"))
    assert (idle.status, idle.severity) == (
        "blocked",
        CRITICAL,
    ) and "pg_terminate_backend(4242)" in idle.message
    assert "pg_terminate_backend" not in M.blocked(partman_target(), holder("active")).message
    gone = M.blocked(partman_target(), None)
    assert gone.blocker == "a session that has since let go"


def test_leaked_partman_locks_are_reported_run_wide_once() -> None:
    h = holder("idle")
    ok, blocked = partman_target().outcome("ok", OK), partman_target().outcome("blocked", CRITICAL)
    both = [("pg_partman run_maintenance", h), ("pg_partman run_maintenance_proc", h)]
    assert [s for s, _ in M.stuck_lock_problems(both, [ok])] == [CRITICAL, CRITICAL]
    only = M.stuck_lock_problems(both, [blocked])  # 4.x's key is already the table's "blocked"
    assert len(only) == 1 and "run_maintenance_proc" in only[0][1]


# --- native ---------------------------------------------------------------------------------


def test_native_refusal_names_the_range_and_the_repair() -> None:
    st = state(table(range(-1, 1), default=True))
    lo, hi = TODAY + DAY, TODAY + 2 * DAY
    v = M.native_verdict(
        native(), st, ("events_p20260310",), M.default_refusal(lo, hi), CTX.command
    )
    assert (v.status, v.severity, v.created) == ("refused", CRITICAL, ("events_p20260310",))
    assert (
        v.message.startswith("not creating a child for 2026-03-11") and "partguard fix" in v.message
    )
    other = M.native_verdict(
        native(), st, (), Refusal(lo, hi, "a table of that name exists"), CTX.command
    )
    assert "partguard fix" not in other.message
    assert M.native_verdict(native(), st, ("a",), None, CTX.command) == native().outcome(
        "ok", OK, created=("a",)
    )
    folded = M.with_retention(
        native().outcome("ok", OK), WARNING, "retention stops at x", ("app.old",)
    )
    assert (folded.severity, folded.message, folded.retired) == (
        WARNING,
        "retention stops at x",
        ("app.old",),
    )


def test_premake_plan_follows_the_configs_premake() -> None:
    plan = M.premake_plan(native(premake=3), state(table(range(-1, 1))), server(), "UTC")
    assert [s.lower for s in plan.steps] == [
        TODAY + d * DAY for d in (1, 2, 3)
    ] and plan.refused is None


# --- verification and the run ---------------------------------------------------------------


def test_judge_uses_the_configs_premake_and_tells_what_was_created() -> None:
    first = state(table(range(-1, 1)))
    now = state(table(range(-1, 4)))
    v = M.judge(native(premake=3), native().outcome("ok", OK), now, first, server(), CTX)
    assert (v.severity, v.runway) == (OK, "3 days")
    assert v.created == ("events_p20260311", "events_p20260312", "events_p20260313")
    assert v.covered_until is not None and v.covered_until.startswith("2026-03-14")
    short = M.judge(native(premake=6), native().outcome("ok", OK), now, first, server(), CTX)
    assert short.severity != OK and any(f["code"] == "runway" for f in short.findings)


def test_judge_reports_default_rows_but_a_refusal_does_not_repeat_them() -> None:
    st = state(table(range(-1, 4), default=True), probe(TODAY + timedelta(hours=1)))
    ok = M.judge(native(), native().outcome("ok", OK), st, st, server(), CTX)
    assert ok.severity == CRITICAL and M.wants_repair(ok) and "DEFAULT" in ok.message
    refused = M.judge(
        native(), native().outcome("refused", CRITICAL, "not creating"), st, st, server(), CTX
    )
    assert refused.message == "not creating" and M.wants_repair(refused)


def test_after_repair_keeps_what_either_run_created() -> None:
    t = native()
    before = t.outcome("refused", CRITICAL, "x", created=("events_p20260310",))
    note = M.repair_note("done", 12)
    failed = M.after_repair(
        t, before, t.outcome("failed", CRITICAL, "lock"), note, None, None, server(), CTX
    )
    assert (
        failed.message == "DEFAULT repaired by partguard fix (done, 12 rows moved); lock"
        and failed.fixed
    )
    first, now = state(table(range(-1, 0))), state(table(range(-1, 4)))
    ok = M.after_repair(t, before, t.outcome("ok", OK), note, now, first, server(), CTX)
    assert (
        ok.fixed
        and ok.message == note
        and "events_p20260310" in ok.created
        and len(ok.created) == 4
    )


@pytest.mark.parametrize(
    ("severities", "problems", "messages", "expected"),
    [
        ((), (), (), OK),
        ((OK, OK), (), ("cannot record the run",), WARNING),
        ((OK, UNKNOWN, WARNING), (), (), UNKNOWN),
        ((UNKNOWN, CRITICAL), (), (), CRITICAL),
        ((OK,), ((CRITICAL, "leaked lock"),), (), CRITICAL),
    ],
)
def test_run_status(
    severities: tuple[int, ...],
    problems: tuple[tuple[int, str], ...],
    messages: tuple[str, ...],
    expected: int,
) -> None:
    outcomes = [native().outcome("ok", s) for s in severities]
    assert M.run_status(outcomes, problems, messages) == expected


def test_outcome_line() -> None:
    o = native().outcome("ok", OK, created=("a", "b"), runway="4 days")
    assert o.line() == "app.events: ok, created 2 children, runway 4 days"
    assert (
        native().outcome("ok", CRITICAL, "DEFAULT holds rows").line()
        == "app.events: critical, DEFAULT holds rows"
    )
    assert (
        native().outcome("blocked", CRITICAL, "held").line()
        == "app.events: critical (blocked), held"
    )
