"""The table as a fix will leave it, predicted from its plan (pure).

``fix`` (strategy ``auto``) re-cuts what its swap leaves off the grid: instant's wide child,
a child the old script cut off the grid. Its ``--dry-run`` prints that re-cut too, planned on
this prediction: the swap renames children (and their indexes, as ``partguard.rename_indexes``
does), turns the DEFAULT into the wide child (the same relation under a new name) and creates
the children of the plan. Children partman premakes afterwards lie on the grid, past the span:
they are never re-cut and do not change the prediction.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from ..inspect.catalog import Child, Table
from ..inspect.split_source import SourceFacts
from .fix import NAMEDATALEN, FixParams

PLANNED_OID = 0  # a child the swap creates: no relation yet (never a re-cut's source)


def after_fix(table: Table, p: FixParams) -> Table:
    """``table`` once the fix's swap has committed."""
    renamed = dict(p.renames)
    kids = [replace(c, name=renamed.get(c.name, c.name)) for c in table.children]
    if p.strategy == "instant" and table.default is not None and p.span_child:
        kids.append(
            replace(
                table.default,
                name=p.span_child,
                lower=p.span_lo,
                upper=p.span_hi,
                is_default=False,
                bound="",
            )
        )
    kids += [
        Child(PLANNED_OID, table.schema, c.name, c.lower, c.upper, False, False, 0, "")
        for c in p.children
    ]
    kids.sort(key=lambda c: _order(c.lower))
    made = {c.name for c in kids}
    return replace(table, children=tuple(kids), schema_names=table.schema_names | made)


def renames_of(table: Table, p: FixParams) -> dict[int, str]:
    """oid → the name the child had before the swap, for every child it renames."""
    old = {new: o for o, new in p.renames}
    if p.strategy == "instant" and table.default is not None and p.span_child:
        old[p.span_child] = p.source
    return {c.oid: old[c.name] for c in after_fix(table, p).children if c.name in old}


def facts_after(facts: SourceFacts, old: str | None) -> SourceFacts:
    """A source's facts read before the swap, with its indexes as the swap renames them."""
    if old is None:
        return facts
    new = facts.child.name
    return replace(
        facts,
        indexes=tuple(
            replace(i, name=renamed_index(i.name, old, new)) if i.name.startswith(old) else i
            for i in facts.indexes
        ),
    )


def renamed_index(index: str, old: str, new: str) -> str:
    """What ``partguard.rename_indexes`` names index ``old<tail>`` of a table renamed to
    ``new``: ``new<tail>``, cut to 63 bytes with a hash when too long."""
    tail = index[len(old) :]
    target = new + tail
    if len(target.encode()) <= NAMEDATALEN:
        return target
    digest = "_" + hashlib.sha256(target.encode()).hexdigest()[:6]
    base = new
    while len((base + digest + tail).encode()) > NAMEDATALEN and base:
        base = base[:-1]
    # still too long (a tail of nearly 63 bytes): the server cuts the name, as every name
    return (base + digest + tail).encode()[:NAMEDATALEN].decode(errors="ignore")


def _order(x: object) -> tuple[int, object]:
    return (0, x) if x is not None else (-1, 0)
