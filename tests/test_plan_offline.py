"""The pure planner, offline: no server, milliseconds. The step builders of plan/steps.py
rendered with ``as_string(None)`` (golden text where the text is the point), and the
choices of plan/fix.py that the printed plan depends on (the holding table's name, the
swap's late-children candidates)."""

from __future__ import annotations

from dataclasses import replace

from psycopg import sql

from partguard.inspect.catalog import Child, Column, Table
from partguard.inspect.grid import IntGrid
from partguard.plan import steps as S
from partguard.plan.after_fix import after_fix, renamed_index, renames_of
from partguard.plan.children import Naming
from partguard.plan.fix import ChildSpec, FixParams, _holding_name, _late_candidates

COLUMNS = (
    Column("id", "bigint", True, False, "a"),
    Column("k", "bigint", True, False, ""),
    Column("doubled", "bigint", False, True, ""),
)


def child(name: str, lo: int, hi: int, *, oid: int = 1) -> Child:
    return Child(oid, "public", name, lo, hi, False, False, 0, f"FOR VALUES FROM ({lo}) TO ({hi})")


def table(name: str = "ev", *, schema_names: frozenset[str] = frozenset()) -> Table:
    kids = (child(f"{name}_p0", 0, 100), child(f"{name}_p100", 100, 200))
    default = Child(9, "public", f"{name}_default", None, None, True, False, 0, "DEFAULT")
    return Table(
        10,
        "public",
        name,
        "range",
        ("k",),
        False,
        "bigint",
        True,
        "owner",
        kids,
        default,
        COLUMNS,
        schema_names=schema_names | {k.name for k in kids} | {default.name},
    )


def params(t: Table, strategy: str = "copy", **kw: object) -> FixParams:
    base = FixParams(
        strategy,
        t.qualname,
        "k",
        f"{t.name}_default",
        f"{t.name}_default",
        f"{t.name}_default_hold" if strategy == "copy" else None,
        False,
        f"{t.name}_quarantine",
        0,
        600,
        200 if strategy == "instant" else None,
        400 if strategy == "instant" else None,
        f"{t.name}_p200" if strategy == "instant" else None,
        (
            ChildSpec(f"{t.name}_p200", 200, 300, False),
            ChildSpec(f"{t.name}_p300", 300, 400, False),
        ),
        None,
        False,
        False,
        10,
        (200, 300),
        0,
        late=(ChildSpec(f"{t.name}_p500", 500, 600, False),) if strategy == "copy" else (),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def text(stmts: tuple[sql.Composed, ...] | list[sql.Composed]) -> list[str]:
    return [s.as_string(None) for s in stmts]


def test_copy_steps_are_typed_and_in_order() -> None:
    t = table()
    steps = S.copy_steps(params(t), t, None)
    assert [(s.name, s.kind) for s in steps] == [
        ("swap", "catalog_tx"),
        ("copy", "copy_ranges"),
        ("verify", "check"),
        ("drop", "private"),
        ("release", "catalog_tx"),
    ]
    assert S.copy_steps(params(t), t, None, keep_source=True)[3].statements == ()


def test_copy_swap_golden() -> None:
    t = table()
    swap = text(S.copy_steps(params(t), t, None)[0].statements)
    assert swap[0] == 'CREATE SCHEMA IF NOT EXISTS "partguard"'
    assert swap[1].startswith("DO $do$") and "FUNCTION partguard.divert()" in swap[1]
    assert swap[2:] == [
        (
            'CREATE TABLE IF NOT EXISTS "partguard"."ev_quarantine" (LIKE "public"."ev_default", '
            "partguard_quarantined_at timestamptz DEFAULT now())"
        ),
        'ALTER TABLE "public"."ev" DETACH PARTITION "public"."ev_default"',
        'ALTER TABLE "public"."ev_default" RENAME TO "ev_default_hold"',
        (
            "SELECT partguard.rename_indexes('\"public\".\"ev_default_hold\"'::regclass, 'ev_default', "
            "'ev_default_hold')"
        ),
        'CREATE TABLE "public"."ev_p200" PARTITION OF "public"."ev" FOR VALUES FROM (200) TO (300)',
        'CREATE TABLE "public"."ev_p300" PARTITION OF "public"."ev" FOR VALUES FROM (300) TO (400)',
        (
            'SELECT partguard.add_children_with_rows(\'"public"."ev"\'::regclass, '
            "'\"public\".\"ev_default_hold\"'::regclass, 'k',\n    ARRAY['ev_p500']::text[],\n"
            "    ARRAY['500']::text[],\n    ARRAY['600']::text[])"
        ),
        'CREATE TABLE "public"."ev_default" PARTITION OF "public"."ev" DEFAULT',
    ]


def test_copy_ranges_run_with_placeholders_and_print_as_one_whole_heap_range() -> None:
    t = table()
    p = params(t)
    copy = S.copy_steps(p, t, None)[1]
    executed, printed = text(copy.statements), text(S.whole_heap(copy, p, t))
    assert all("%(first_block)s" in s and "%(end_block)s" in s for s in executed)
    assert not any("%(" in s for s in printed)
    assert all(
        "('(' || 0::bigint || ',0)')::tid" in s and f"{S.WHOLE_HEAP_END}::bigint" in s
        for s in printed
    )
    assert [
        s.replace("%(first_block)s", "0").replace("%(end_block)s", str(S.WHOLE_HEAP_END))
        for s in executed
    ] == printed
    # identity ALWAYS keeps its values; the generated column is left to PostgreSQL
    assert (
        'INSERT INTO "public"."ev" ("id", "k") OVERRIDING SYSTEM VALUE SELECT "id", "k"'
        in printed[1]
    )


def test_instant_steps_golden() -> None:
    t = table()
    steps = S.instant_steps(params(t, "instant"), t, None)
    assert [(s.name, s.kind) for s in steps] == [
        ("prepare", "catalog_tx"),
        ("quarantine", "scan"),
        ("validate", "scan"),
        ("swap", "catalog_tx"),
        ("release", "catalog_tx"),
    ]
    prepare = text(steps[0].statements)
    helpers = next(i for i, s in enumerate(prepare) if "FUNCTION partguard.divert()" in s)
    trigger = next(i for i, s in enumerate(prepare) if s.startswith("CREATE TRIGGER"))
    assert helpers < trigger, "the function exists before the trigger that calls it"
    assert prepare[trigger] == (
        'CREATE TRIGGER "partguard_divert" BEFORE INSERT ON "public"."ev_default" FOR EACH ROW WHEN '
        '(NEW."k" IS NULL OR NEW."k" < 200 OR NEW."k" >= 400) '
        'EXECUTE FUNCTION partguard.divert(\'"partguard"."ev_quarantine"\')'
    )
    swap = text(steps[3].statements)
    assert swap == [
        'ALTER TABLE "public"."ev" DETACH PARTITION "public"."ev_default"',
        'ALTER TABLE "public"."ev_default" RENAME TO "ev_p200"',
        "SELECT partguard.rename_indexes('\"public\".\"ev_p200\"'::regclass, 'ev_default', 'ev_p200')",
        'CREATE TABLE "public"."ev_p200" PARTITION OF "public"."ev" FOR VALUES FROM (200) TO (300)',
        'CREATE TABLE "public"."ev_p300" PARTITION OF "public"."ev" FOR VALUES FROM (300) TO (400)',
        'ALTER TABLE "public"."ev" ATTACH PARTITION "public"."ev_p200" FOR VALUES FROM (200) TO (400)',
        'DROP TRIGGER "partguard_divert" ON "public"."ev_p200"',
        'ALTER TABLE "public"."ev_p200" DROP CONSTRAINT "partguard_span"',
        'CREATE TABLE "public"."ev_default" PARTITION OF "public"."ev" DEFAULT',
    ]


def test_renamed_children_take_their_indexes_along() -> None:
    t = table()
    swap = text(S.copy_steps(params(t, renames=(("ev_old", "ev_p100"),)), t, None)[0].statements)
    i = swap.index('ALTER TABLE "public"."ev_old" RENAME TO "ev_p100"')
    assert (
        swap[i + 1]
        == "SELECT partguard.rename_indexes('\"public\".\"ev_p100\"'::regclass, 'ev_old', 'ev_p100')"
    )


def test_names_in_notes_and_locks_are_one_line() -> None:
    nasty = "ev\nDROP TABLE victim; --"
    t = table(nasty)
    for strategy in ("instant", "copy"):
        for s in S.fix_steps(params(t, strategy), t, None):
            assert "\n" not in s.locks + s.note and "\r" not in s.locks, s
    assert 'U&"ev\\000ADROP TABLE victim; --_default"' in S.copy_steps(params(t), t, None)[0].locks


def test_holding_name_is_deterministic_and_never_taken() -> None:
    assert _holding_name(table()) == "ev_default_hold"
    assert _holding_name(table(schema_names=frozenset({"ev_default_hold"}))) == "ev_default_hold_2"
    long = "e" * 60
    assert len(_holding_name(table(long)).encode()) <= 63


def test_late_candidates_are_the_free_buckets_of_the_plausible_range() -> None:
    t = table()
    planned = (ChildSpec("ev_p200", 200, 300, False), ChildSpec("ev_p300", 300, 400, False))
    nm = Naming("ev", "_p", None, None)
    late = _late_candidates(t, IntGrid(100), nm, planned, 0, 600, 4, set())
    assert [(c.name, c.lower, c.upper) for c in late] == [
        ("ev_p400", 400, 500),
        ("ev_p500", 500, 600),
    ]
    # a hole between children is a candidate too; an id key without a ceiling stops premake + 2 past
    holed = replace(t, children=(child("ev_p0", 0, 100), child("ev_p200", 200, 300)))
    late = _late_candidates(holed, IntGrid(100), nm, (), 0, None, 1, set())
    assert [(c.lower, c.upper) for c in late] == [(100, 200), (300, 400), (400, 500), (500, 600)]


def test_after_fix_is_the_table_as_instants_swap_leaves_it() -> None:
    """fix --dry-run (auto) plans its re-cut on this: the DEFAULT becomes the wide child (the
    same relation, so the re-cut reads its facts), the plan's children are added."""
    t = table()
    p = params(t, "instant", children=(ChildSpec("ev_p400", 400, 500, False),))
    after = after_fix(t, p)
    assert [(c.name, c.lower, c.upper) for c in after.children] == [
        ("ev_p0", 0, 100),
        ("ev_p100", 100, 200),
        ("ev_p200", 200, 400),
        ("ev_p400", 400, 500),
    ]
    wide = after.children[2]
    assert t.default is not None and wide.oid == t.default.oid and not wide.is_default
    assert after.default == t.default and {"ev_p200", "ev_p400"} <= after.schema_names
    assert renames_of(t, p) == {t.default.oid: "ev_default"}
    assert after_fix(t, params(t, "copy")).children[2:] == tuple(
        Child(0, "public", n, lo, hi, False, False, 0, "")
        for n, lo, hi in (("ev_p200", 200, 300), ("ev_p300", 300, 400))
    )


def test_renamed_index_follows_the_table() -> None:
    assert renamed_index("ev_default_k_idx", "ev_default", "ev_p200") == "ev_p200_k_idx"
    tail = "_x" * 24 + "_idx"
    long = renamed_index("ev_default" + tail, "ev_default", "ev_p2026_12_01")
    assert len(long.encode()) == 63 and long.endswith(tail) and long.startswith("ev_p_")
    # a tail that leaves no room for the table's name: cut like any name (never a loop)
    assert len(renamed_index("d" + "_y" * 31, "d", "ev_p2026_12_01").encode()) == 63
