"""The re-cut as data: typed steps of ``sql.Composed`` statements, and the psql script.

The executor (``execute_split``) runs these steps; ``--dry-run`` prints them with
``script``. Both dispatch on ``Step.kind``, so the script a DBA reviews is the list of
statements that runs. What only the run can know (the block ranges of a parallel copy) is
a ``Hole``: the executor fills it with a literal, the script with SQL that computes it.

Kinds, and how each is run:

- ``catalog_tx``: the statements in one transaction under ``lock_timeout`` (retried).
- ``copy_ranges``: ``statements`` first (each its own transaction); then one REPEATABLE READ
  snapshot in which each of ``groups`` (one INSERT per source, holes ``lo``/``hi``) copies
  every block range, split over ``--jobs`` connections that import the snapshot; ``finish``
  commits in the snapshot's own transaction (the script: one transaction, whole ranges).
- ``build_index``: each of ``groups`` runs on one of ``--jobs`` connections, one statement
  per transaction; then ``finish``.
- ``replay``: ``statements[0]`` (returns how many changes it applied) repeats until it
  applies fewer than ``REPLAY_SMALL``; then ``finish``.
- ``swap``: as ``catalog_tx``; its lock time is the figure the run reports.
- ``cleanup``: each statement on its own, outside a transaction block (``DROP INDEX
  CONCURRENTLY`` needs that); then ``finish``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql

from .. import journal
from .children import key_literal
from .fix import short_name
from .split import SCHEMA, SplitPlan, Target

Kind = Literal["catalog_tx", "copy_ranges", "build_index", "replay", "swap", "cleanup"]

REPLAY_BATCH = 5000  # changes applied per replay transaction
REPLAY_SMALL = 200  # the swap starts once a batch finds fewer than this
BOUND = "partguard_split_bound"  # each target's CHECK: lets ATTACH skip its scan
LIKE = sql.SQL(
    "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING "
    "COMPRESSION"
)


class Hole(sql.Composable):
    """A value decided while the step runs. ``script`` is the SQL that computes it in a
    psql script; the executor substitutes a literal. Rendering an unfilled hole fails."""

    def __init__(self, name: str, script: sql.Composable):
        super().__init__(name)
        self.name = name
        self.script = script

    def as_bytes(self, context: Any = None) -> bytes:
        raise TypeError(f"hole {self.name!r} was not filled")


def fill(stmt: sql.Composed, values: Mapping[str, sql.Composable] | None = None) -> sql.Composed:
    """``stmt`` with every hole replaced: by ``values[name]``, or (no values) by its script."""
    return sql.Composed([_fill(x, values) for x in stmt])


def _fill(c: sql.Composable, values: Mapping[str, sql.Composable] | None) -> sql.Composable:
    if isinstance(c, Hole):
        return c.script if values is None else values[c.name]
    if isinstance(c, sql.Composed):
        return fill(c, values)
    return c


@dataclass(frozen=True)
class Step:
    kind: Kind
    name: str  # the journal state once done ('' for a step that records none)
    statements: tuple[sql.Composed, ...] = ()
    groups: tuple[tuple[sql.Composed, ...], ...] = ()
    finish: tuple[sql.Composed, ...] = ()
    locks: str = ""  # for humans: which locks, for how long (never names: they go into comments)
    note: str = ""
    # From which statement on the step holds locks that block the application (None: never):
    # where the executor starts the clock of the lock times it reports.
    lock_from: int | None = None


# --- names -------------------------------------------------------------------------


def pg(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def parent(p: SplitPlan) -> sql.Identifier:
    return sql.Identifier(p.parent_schema, p.parent)


def router(p: SplitPlan) -> sql.Identifier:
    return pg(f"{p.prefix}_router")


def log_table(p: SplitPlan) -> sql.Identifier:
    return pg(f"{p.prefix}_log")


def apply_fn(p: SplitPlan) -> sql.Identifier:
    return pg(f"{p.prefix}_apply")


def _capture_fn(p: SplitPlan) -> sql.Identifier:
    return pg(f"{p.prefix}_capture")


def _truncate_fn(p: SplitPlan) -> sql.Identifier:
    return pg(f"{p.prefix}_no_truncate")


def _trigger(p: SplitPlan, suffix: str = "") -> sql.Identifier:
    return sql.Identifier(f"partguard_{p.prefix}{suffix}")


def _guard(p: SplitPlan) -> sql.Identifier:
    return sql.Identifier(f"partguard_{p.prefix}")


def target(p: SplitPlan, t: Target) -> sql.Identifier:
    """A target as it is named while built."""
    return sql.Identifier(p.schema, t.temp)


def _replay_index(p: SplitPlan, n: int) -> str:
    return short_name(p.prefix, f"_t{n}_r")


def _sources(p: SplitPlan) -> list[sql.Identifier]:
    return [sql.Identifier(s.schema, s.name) for s in p.sources]


def _cols(names: Iterable[str], prefix: str = "") -> sql.Composable:
    if prefix:
        return sql.SQL(", ").join(
            sql.SQL("{}.{}").format(sql.SQL(prefix), sql.Identifier(c)) for c in names
        )
    return sql.SQL(", ").join(sql.Identifier(c) for c in names)


def _s(text: str, **kw: sql.Composable) -> sql.Composed:
    return sql.SQL(text).format(**kw)


def _body(stmt: sql.Composed) -> sql.Composable:
    """plpgsql source as a string literal: names inside it are quoted identifiers, and the
    literal's quoting keeps any quote in them from ending it (no dollar-quote to break)."""
    return sql.Literal(stmt.as_string(None))


def _lock(p: SplitPlan, default: bool = False) -> sql.Composed:
    """The parent first, then the children: the order writers take them, so no deadlock."""
    rels = [parent(p), *_sources(p)]
    if default and p.default:
        rels.append(sql.Identifier(*p.default))
    return _s(
        "LOCK TABLE {rels} IN ACCESS EXCLUSIVE MODE",
        rels=sql.SQL(", ").join(sql.SQL("ONLY {}").format(r) for r in rels),
    )


def _range(p: SplitPlan, lo: Any, hi: Any) -> sql.Composed:
    k = sql.Identifier(p.key)
    return _s(
        "{k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi}",
        k=k,
        lo=key_literal(lo, p.key_type),
        hi=key_literal(hi, p.key_type),
    )


def _bounds(p: SplitPlan, t: Target) -> sql.Composed:
    return _s(
        "FOR VALUES FROM ({lo}) TO ({hi})",
        lo=key_literal(t.lower, p.key_type),
        hi=key_literal(t.upper, p.key_type),
    )


# --- the steps -----------------------------------------------------------------------


def steps(p: SplitPlan) -> list[Step]:
    out = [capture(p)]
    if p.default:
        out.append(guard(p))
    return [*out, prepare(p), copy(p), unroute(p), build(p), replay(p), swap(p), cleanup(p)]


def capture(p: SplitPlan) -> Step:
    """The change log, its trigger on every source, and the journal row, in one transaction
    that holds the locks the swap will need: a long transaction in the way is found before
    any work is done, and nothing has changed when it is."""
    log = log_table(p)
    cols = _cols(p.columns)

    def put(op: str, rec: str) -> sql.Composed:
        return _s(
            "INSERT INTO {log} (partguard_op, {cols}) VALUES ({op}, {vals});",
            log=log,
            cols=cols,
            op=sql.Literal(op),
            vals=_cols(p.columns, rec),
        )

    body = _s(
        "BEGIN\n"
        "  IF TG_OP <> 'INSERT' THEN\n    {old}\n  END IF;\n"
        "  IF TG_OP <> 'DELETE' THEN\n    {new}\n  END IF;\n"
        "  RETURN NULL;\nEND",
        old=put("D", "OLD"),
        new=put("I", "NEW"),
    )
    refuse = sql.Composed(
        [
            sql.SQL(
                "BEGIN RAISE EXCEPTION 'partguard split is re-cutting this partition: "
                "TRUNCATE would bypass its change log (wait for it, or run partguard split "
                "--abort)'; END"
            )
        ]
    )
    stmts: list[sql.Composed] = [
        *journal.split_ddl(),
        _s(
            "CREATE TABLE {log} (partguard_seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "partguard_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
            'partguard_op "char" NOT NULL, LIKE {parent})',
            log=log,
            parent=parent(p),
        ),
        # SECURITY DEFINER: the application's role writes the log without rights on our schema.
        _s(
            "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
            "SET search_path = pg_catalog, pg_temp AS {body}",
            f=_capture_fn(p),
            body=_body(body),
        ),
        _s(
            "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS {body}",
            f=_truncate_fn(p),
            body=_body(refuse),
        ),
        _lock(p),  # taken last: the table is blocked only for the triggers and the journal row
    ]
    locked = len(stmts) - 1
    for src in _sources(p):
        stmts += [
            _s(
                "CREATE TRIGGER {t} AFTER INSERT OR UPDATE OR DELETE ON {src} FOR EACH ROW "
                "EXECUTE FUNCTION {f}()",
                t=_trigger(p),
                src=src,
                f=_capture_fn(p),
            ),
            # ALWAYS: a logical-replication apply worker (session_replication_role =
            # replica) is logged too.
            _s("ALTER TABLE {src} ENABLE ALWAYS TRIGGER {t}", src=src, t=_trigger(p)),
            _s(
                "CREATE TRIGGER {t} BEFORE TRUNCATE ON {src} FOR EACH STATEMENT EXECUTE FUNCTION "
                "{f}()",
                t=_trigger(p, "_truncate"),
                src=src,
                f=_truncate_fn(p),
            ),
        ]
    stmts.append(
        journal.split_start(
            p.tag, parent(p), p.table, [s.name for s in p.sources], {"plan": p.as_json()}
        )
    )
    return Step(
        "catalog_tx",
        "captured",
        tuple(stmts),
        locks="ACCESS EXCLUSIVE on the table and the children being re-cut (milliseconds)",
        note="from here on every change to those children is logged",
        lock_from=locked,
    )


def guard(p: SplitPlan) -> Step:
    """A CHECK on the DEFAULT proving it holds nothing of the re-cut span: ATTACH would
    otherwise scan the DEFAULT under the swap's lock, once per new child."""
    k = sql.Identifier(p.key)
    assert p.default
    cond = _s(
        "{k} IS NULL OR {k} < {lo} OR {k} >= {hi}",
        k=k,
        lo=key_literal(p.lower, p.key_type),
        hi=key_literal(p.upper, p.key_type),
    )
    return Step(
        "catalog_tx",
        "guarded",
        (
            _s(
                "ALTER TABLE {d} ADD CONSTRAINT {c} CHECK ({cond}) NOT VALID",
                d=sql.Identifier(*p.default),
                c=_guard(p),
                cond=cond,
            ),
            journal.split_state(p.tag, "guarded"),
        ),
        locks="ACCESS EXCLUSIVE on the DEFAULT partition (milliseconds: NOT VALID skips the scan)",
        lock_from=0,
    )


def prepare(p: SplitPlan) -> Step:
    """Unindexed tables for the targets, each already its owner's and with its privileges,
    under a private partitioned table that routes the copy and the replay to the right one
    (a key-moving UPDATE lands where it belongs)."""
    key = sql.Identifier(p.key)
    stmts: list[sql.Composed] = [
        _s(
            "CREATE TABLE {r} (LIKE {parent} {like}) PARTITION BY RANGE ({k})",
            r=router(p),
            parent=parent(p),
            like=LIKE,
            k=key,
        ),
    ]
    opts: sql.Composable = sql.SQL("")
    if p.reloptions:
        pairs = [o.split("=", 1) for o in p.reloptions]
        opts = _s(
            " WITH ({o})",
            o=sql.SQL(", ").join(
                _s(
                    "{n} = {v}",
                    n=sql.SQL(".").join(sql.Identifier(x) for x in n.split(".")),
                    v=sql.Literal(v),
                )
                for n, v in pairs
            ),
        )
    space: sql.Composable = (
        _s(" TABLESPACE {sp}", sp=sql.Identifier(p.tablespace)) if p.tablespace else sql.SQL("")
    )
    for t in p.targets:
        tt = target(p, t)
        stmts += [
            _s(
                "CREATE {u}TABLE {t} (LIKE {parent} {like}, CONSTRAINT {b} CHECK "
                "({rng})){opts}{space}",
                u=sql.SQL("UNLOGGED " if p.unlogged else ""),
                t=tt,
                parent=parent(p),
                like=LIKE,
                b=sql.Identifier(BOUND),
                rng=_range(p, t.lower, t.upper),
                opts=opts,
                space=space,
            ),
            _s("ALTER TABLE {r} ATTACH PARTITION {t} {b}", r=router(p), t=tt, b=_bounds(p, t)),
        ]
        stmts += [
            _s("ALTER TABLE {t} ADD CONSTRAINT {n} ", t=tt, n=sql.Identifier(n)) + sql.SQL(d)
            for n, d in p.checks
        ]
        stmts += [
            _s(
                "GRANT {priv} ON {t} TO {who}{opt}",
                priv=sql.SQL(priv),
                t=tt,
                who=sql.SQL("PUBLIC") if who == "PUBLIC" else sql.Identifier(who),
                opt=sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
            for who, priv, grantable in p.grants
            if priv.isalpha()
        ]
        stmts.append(_s("ALTER TABLE {t} OWNER TO {o}", t=tt, o=sql.Identifier(p.owner)))
    stmts += [_apply_function(p), journal.split_state(p.tag, "prepared")]
    return Step("catalog_tx", "prepared", tuple(stmts), locks="none on the table (new tables only)")


def _apply_function(p: SplitPlan) -> sql.Composed:
    """The replay, server-side: logged changes in order, each applied and removed from the
    log in the same transaction, so a crash never applies one twice. Each change goes
    straight to the target its key falls in (the router is gone once the copy is done, so
    the swap has nothing to detach from it).

    A logged delete finds its row by the primary key (or a unique NOT NULL index), else by
    the whole row's values: rows equal in every column are interchangeable, so removing any
    one of them leaves the same multiset. ``extra_float_digits`` makes the text of a float
    exact, so equal text means equal values."""
    log = log_table(p)
    k = sql.Identifier(p.key)
    ins = p.insertable

    def match(t: sql.Identifier) -> sql.Composable:
        if p.identity:
            return sql.SQL(" AND ").join(
                _s("t.{c} = l.{c}", c=sql.Identifier(c)) for c in p.identity
            )
        return _s(
            "t.ctid = (SELECT s.ctid FROM {t} s WHERE s.{k} = l.{k} "
            "AND ROW({scols})::text = ROW({lcols})::text LIMIT 1)",
            t=t,
            k=k,
            scols=_cols(ins, "s"),
            lcols=_cols(ins, "l"),
        )

    def by_key(action: Any) -> sql.Composable:
        """``IF key < upper(T1) THEN action(T1) ELSIF … ELSE action(Tn)``: the key is within
        the sources' span, so the last target takes the rest."""
        parts: list[sql.Composable] = []
        for n, t in enumerate(p.targets):
            head: sql.Composable
            if n == len(p.targets) - 1:
                head = sql.SQL("      ELSE\n" if n else "      IF true THEN\n")
            else:
                head = _s(
                    "      {kw} l.{k} < {hi} THEN\n",
                    kw=sql.SQL("ELSIF" if n else "IF"),
                    k=k,
                    hi=key_literal(t.upper, p.key_type),
                )
            parts += [head, sql.SQL("        "), action(target(p, t)), sql.SQL(";\n")]
        return sql.Composed([*parts, sql.SQL("      END IF;")])

    body = _s(
        "DECLARE\n  l {log};\n  n bigint := 0;\n  hit bigint;\nBEGIN\n"
        "  FOR l IN SELECT * FROM {log} ORDER BY partguard_seq LIMIT p_limit LOOP\n"
        "    IF l.partguard_op = 'D' THEN\n{delete}\n"
        "      IF hit <> 1 THEN\n"
        "        RAISE EXCEPTION 'partguard split: a logged delete (seq %) matched % rows', "
        "l.partguard_seq, hit;\n"
        "      END IF;\n"
        "    ELSE\n{insert}\n"
        "    END IF;\n"
        "    DELETE FROM {log} WHERE partguard_seq = l.partguard_seq;\n"
        "    n := n + 1;\n"
        "  END LOOP;\n"
        "  RETURN n;\nEND",
        log=log,
        delete=by_key(
            lambda t: _s(
                "DELETE FROM {t} t WHERE {m};\n        GET DIAGNOSTICS hit = ROW_COUNT",
                t=t,
                m=match(t),
            )
        ),
        insert=by_key(
            lambda t: _s(
                "INSERT INTO {t} ({cols}) VALUES ({vals})",
                t=t,
                cols=_cols(ins),
                vals=_cols(ins, "l"),
            )
        ),
    )
    return _s(
        "CREATE FUNCTION {f}(p_limit bigint) RETURNS bigint LANGUAGE plpgsql SET "
        "extra_float_digits = 3 "
        "AS {body}",
        f=apply_fn(p),
        body=_body(body),
    )


def unroute(p: SplitPlan) -> Step:
    """The router has done its job (one pass of the copy for every target): the targets
    leave it now, so the swap does not have to."""
    return Step(
        "catalog_tx",
        "unrouted",
        (
            *(
                _s("ALTER TABLE {r} DETACH PARTITION {t}", r=router(p), t=target(p, t))
                for t in p.targets
            ),
            _s("DROP TABLE {r}", r=router(p)),
            journal.split_state(p.tag, "unrouted"),
        ),
        locks="none on the table (private tables only)",
    )


def copy(p: SplitPlan) -> Step:
    """Every source row as one snapshot saw it; the log entries that snapshot already
    contains are dropped in its own transaction, so each change counts exactly once."""
    ins = _cols(p.insertable)
    groups = []
    for src in _sources(p):
        pages = _s(
            "pg_relation_size({rel}::regclass) / current_setting('block_size')::bigint + 1",
            rel=sql.Literal(src.as_string(None)),
        )
        lo = Hole("lo", sql.SQL("'(0,0)'::tid"))
        hi = Hole("hi", _s("('(' || ({pages}) || ',0)')::tid", pages=pages))
        groups.append(
            (
                _s(
                    "INSERT INTO {r} ({ins}) SELECT {ins} FROM ONLY {src} WHERE ctid >= {lo} AND "
                    "ctid < {hi}",
                    r=router(p),
                    ins=ins,
                    src=src,
                    lo=lo,
                    hi=hi,
                ),
            )
        )
    return Step(
        "copy_ranges",
        "copied",
        (_s("TRUNCATE {r}", r=router(p)),),
        tuple(groups),
        (
            _s(
                "DELETE FROM {log} WHERE pg_visible_in_snapshot(partguard_xid, "
                "pg_current_snapshot())",
                log=log_table(p),
            ),
            journal.split_state(p.tag, "copied"),
        ),
        locks="ACCESS SHARE on the children being re-cut: reads and writes go on",
        note="block ranges on --jobs connections sharing one exported snapshot",
    )


def build(p: SplitPlan) -> Step:
    """The indexes ATTACH will adopt instead of building under the swap's lock. No ANALYZE:
    measured 2.6 s for 400k rows of the incident's 26 columns, as long as building all the
    indexes; autovacuum analyzes the new children once attached (their inserts count)."""
    groups: list[tuple[sql.Composed, ...]] = []
    for n, t in enumerate(p.targets, 1):
        tt = target(p, t)
        g: list[sql.Composed] = []
        for ix, built in zip(p.indexes, t.built_indexes, strict=True):
            name = sql.Identifier(built)
            g.append(
                _s(
                    "CREATE {u}INDEX IF NOT EXISTS {n} ON {t} USING ",
                    u=sql.SQL("UNIQUE " if ix.unique else ""),
                    n=name,
                    t=tt,
                )
                + sql.SQL(ix.tail)
            )
            if ix.constraint:
                kind = sql.SQL("PRIMARY KEY" if ix.constraint == "p" else "UNIQUE")
                when = sql.SQL(
                    (" DEFERRABLE" if ix.deferrable else "")
                    + (" INITIALLY DEFERRED" if ix.deferred else "")
                )
                add = _s(
                    "ALTER TABLE {t} ADD CONSTRAINT {n} {kind} USING INDEX {n}{when}",
                    t=tt,
                    n=name,
                    kind=kind,
                    when=when,
                )
                test = _s(
                    "SELECT FROM pg_constraint WHERE conrelid = {t}::regclass AND conname = {c}",
                    t=sql.Literal(tt.as_string(None)),
                    c=sql.Literal(built),
                )
                g.append(
                    _s(
                        "DO {b}",
                        b=_body(
                            _s(
                                "BEGIN IF NOT EXISTS ({test}) THEN {add}; END IF; END",
                                test=test,
                                add=add,
                            )
                        ),
                    )
                )
        if p.replay_index:
            g.append(
                _s(
                    "CREATE INDEX IF NOT EXISTS {n} ON {t} ({k})",
                    n=sql.Identifier(_replay_index(p, n)),
                    t=tt,
                    k=sql.Identifier(p.key),
                )
            )
        groups.append(tuple(g))
    if p.default:
        groups.append(
            (
                _s(
                    "ALTER TABLE {d} VALIDATE CONSTRAINT {c}",
                    d=sql.Identifier(*p.default),
                    c=_guard(p),
                ),
            )
        )
    return Step(
        "build_index",
        "indexed",
        (),
        tuple(groups),
        (journal.split_state(p.tag, "indexed"),),
        locks="none on the table (the DEFAULT's VALIDATE: SHARE UPDATE EXCLUSIVE, reads and "
        "writes go on)",
        note="in parallel on --jobs connections",
    )


def replay(p: SplitPlan) -> Step:
    return Step(
        "replay",
        "",
        (_s("SELECT {f}({n})", f=apply_fn(p), n=sql.Literal(REPLAY_BATCH)),),
        locks="none on the table",
        note="until what is left is small",
    )


def swap(p: SplitPlan) -> Step:
    """Catalog changes only: a replaced child is moved aside, not dropped (a DROP unlinks its
    files and scans shared_buffers at commit, under the lock: measured 177 ms for 111 MB)."""
    stmts: list[sql.Composed] = [_lock(p, default=True), _s("SELECT {f}(NULL)", f=apply_fn(p))]
    for s, src in zip(p.sources, _sources(p), strict=True):
        stmts += [
            _s("ALTER TABLE {parent} DETACH PARTITION {src}", parent=parent(p), src=src),
            _s("ALTER TABLE {src} RENAME TO {h}", src=src, h=sql.Identifier(s.holding)),
            _s(
                "ALTER TABLE {h} SET SCHEMA {pg}",
                h=sql.Identifier(s.schema, s.holding),
                pg=sql.Identifier(SCHEMA),
            ),
        ]
    for t in p.targets:
        final = sql.Identifier(p.schema, t.name)
        if t.temp != t.name:
            stmts.append(
                _s("ALTER TABLE {t} RENAME TO {n}", t=target(p, t), n=sql.Identifier(t.name))
            )
        stmts += [
            _s("ALTER INDEX {i} RENAME TO {n}", i=sql.Identifier(p.schema, b), n=sql.Identifier(n))
            for b, n in zip(t.built_indexes, t.index_names, strict=True)
            if b != n
        ]
        stmts += [
            _s(
                "ALTER TABLE {parent} ATTACH PARTITION {t} {b}",
                parent=parent(p),
                t=final,
                b=_bounds(p, t),
            ),
            _s("ALTER TABLE {t} DROP CONSTRAINT {b}", t=final, b=sql.Identifier(BOUND)),
        ]
    if p.default:
        stmts.append(
            _s("ALTER TABLE {d} DROP CONSTRAINT {c}", d=sql.Identifier(*p.default), c=_guard(p))
        )
    stmts.append(journal.split_state(p.tag, "swapped"))
    return Step(
        "swap",
        "swapped",
        tuple(stmts),
        locks="ACCESS EXCLUSIVE on the table, the children being re-cut and the DEFAULT "
        "(milliseconds)",
        note="the rest of the log, then detach, attach: ATTACH adopts the indexes and skips "
        "its scan",
        lock_from=0,
    )


def cleanup(p: SplitPlan) -> Step:
    """After the swap, what nobody uses any more: the replaced children (unless kept), the
    replay's helper indexes (CONCURRENTLY: the new children are the table's now), the log."""
    stmts: list[sql.Composed] = []
    for s in p.sources:
        held = pg(s.holding)
        if p.keep_source:
            stmts += [
                _s("DROP TRIGGER IF EXISTS {t} ON {h}", t=_trigger(p), h=held),
                _s("DROP TRIGGER IF EXISTS {t} ON {h}", t=_trigger(p, "_truncate"), h=held),
            ]
        else:
            stmts.append(_s("DROP TABLE IF EXISTS {h}", h=held))
    if p.replay_index:
        stmts += [
            _s(
                "DROP INDEX CONCURRENTLY IF EXISTS {i}",
                i=sql.Identifier(p.schema, _replay_index(p, n)),
            )
            for n in range(1, len(p.targets) + 1)
        ]
    stmts += _drop_private(p, if_exists=True, targets=False)
    return Step(
        "cleanup",
        "done",
        tuple(stmts),
        finish=(journal.split_state(p.tag, "done", finished=True),),
        locks="none on the table (the replay's helper indexes: SHARE UPDATE EXCLUSIVE)",
    )


def _drop_private(p: SplitPlan, *, if_exists: bool, targets: bool) -> list[sql.Composed]:
    ie = sql.SQL("IF EXISTS " if if_exists else "")
    tables = [router(p), log_table(p)] + ([target(p, t) for t in p.targets] if targets else [])
    return [
        _s("DROP TABLE {ie}{t}", ie=ie, t=sql.SQL(", ").join(tables)),
        _s(
            "DROP FUNCTION {ie}{f}",
            ie=ie,
            f=sql.SQL(", ").join(
                [
                    _s("{f}(bigint)", f=apply_fn(p)),
                    _s("{f}()", f=_capture_fn(p)),
                    _s("{f}()", f=_truncate_fn(p)),
                ]
            ),
        ),
    ]


def abort(p: SplitPlan) -> Step:
    """Before the swap the table is untouched but for the trigger: dropping what the run
    made leaves it exactly as it was. Idempotent, so it also cleans up after a crash."""
    stmts: list[sql.Composed] = [_lock(p, default=True)]
    for src in _sources(p):
        stmts += [
            _s("DROP TRIGGER IF EXISTS {t} ON {src}", t=_trigger(p), src=src),
            _s("DROP TRIGGER IF EXISTS {t} ON {src}", t=_trigger(p, "_truncate"), src=src),
        ]
    if p.default:
        stmts.append(
            _s(
                "ALTER TABLE {d} DROP CONSTRAINT IF EXISTS {c}",
                d=sql.Identifier(*p.default),
                c=_guard(p),
            )
        )
    stmts += [
        *_drop_private(p, if_exists=True, targets=True),
        journal.split_state(p.tag, "aborted", finished=True),
    ]
    return Step(
        "catalog_tx",
        "aborted",
        tuple(stmts),
        locks="ACCESS EXCLUSIVE on the table and the children being re-cut (milliseconds)",
        lock_from=0,
    )


# --- the script ------------------------------------------------------------------------------


def script(plans: Sequence[SplitPlan], lock_timeout: float) -> str:
    """The whole re-cut as a script for ``psql -v ON_ERROR_STOP=1``. Comments carry no
    names (a name with a newline would end the comment): the statements say it all."""
    ms = max(1, int(lock_timeout * 1000))
    out = [
        "-- partguard split: the re-cut as the executor runs it, on one connection.",
        "-- Review, then run with psql -v ON_ERROR_STOP=1. If it stops half-way,",
        "-- partguard split finishes the run it started (from partguard.split_run),",
        "-- or partguard split --abort undoes it.",
    ]
    for n, p in enumerate(plans, 1):
        out.append(
            f"\n-- re-cut {n} of {len(plans)}: {len(p.sources)} children into {len(p.targets)}"
        )
        for step in steps(p):
            out.append(
                f"\n-- {step.kind} {step.name or '(no state)'}: locks {step.locks}"
                + (f"; {step.note}" if step.note else "")
            )
            out.extend(render(step, ms))
    return "\n".join(out) + "\n"


def render(step: Step, lock_ms: int) -> list[str]:
    def text(c: sql.Composed) -> str:
        return fill(c).as_string(None) + ";"

    def tx(stmts: Iterable[sql.Composed], begin: str = "BEGIN;") -> list[str]:
        return [begin, f"SET LOCAL lock_timeout = '{lock_ms}ms';", *map(text, stmts), "COMMIT;"]

    if step.kind in ("catalog_tx", "swap"):
        return tx(step.statements)
    if step.kind == "copy_ranges":
        copies = [s for g in step.groups for s in g]
        return [
            *map(text, step.statements),
            *tx(
                [sql.Composed([sql.SQL("SET LOCAL statement_timeout = 0")]), *copies, *step.finish],
                "BEGIN ISOLATION LEVEL REPEATABLE READ;",
            ),
        ]
    if step.kind == "build_index":
        return [*(text(s) for g in step.groups for s in g), *tx(step.finish)]
    if step.kind == "cleanup":
        return [
            f"SET lock_timeout = '{lock_ms}ms';",
            *map(text, step.statements),
            "RESET lock_timeout;",
            *tx(step.finish),
        ]
    # replay: a DO block may COMMIT between batches when psql runs it outside a transaction
    loop = _s(
        "BEGIN\n  LOOP\n    EXIT WHEN ({q}) < {small};\n    COMMIT;\n  END LOOP;\nEND",
        q=fill(step.statements[0]),
        small=sql.Literal(REPLAY_SMALL),
    )
    return [text(_s("DO {b}", b=_body(loop))), *(tx(step.finish) if step.finish else [])]
