"""What the current role may do, asked before ``fix`` changes anything.

A privilege that fails half-way (no CREATE on the table's schema at the swap) used to leave
instant's trigger diverting live inserts; everything a run will need is asked here first,
in one query, and reported together.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..db import Conn
from ..humanize import quote_name
from .partman import Partman

_SQL = """
SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       pg_has_role(current_user, %(owner)s, 'USAGE'),
       coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = %(schema)s AND c.relname = %(source)s), true),
       has_schema_privilege(%(schema)s, 'CREATE'),
       has_database_privilege(current_database(), 'CREATE'),
       CASE WHEN to_regnamespace('partguard') IS NULL THEN true
            ELSE has_schema_privilege('partguard', 'CREATE') AND has_schema_privilege('partguard', 'USAGE') END,
       CASE WHEN to_regclass('partguard.fix_run') IS NULL THEN true
            ELSE has_table_privilege('partguard.fix_run', 'SELECT')
                 AND has_table_privilege('partguard.fix_run', 'INSERT')
                 AND has_table_privilege('partguard.fix_run', 'UPDATE') END,
       CASE WHEN to_regclass('partguard.fix_chunk') IS NULL THEN true
            ELSE has_table_privilege('partguard.fix_chunk', 'SELECT')
                 AND has_table_privilege('partguard.fix_chunk', 'INSERT') END,
       CASE WHEN %(partman)s::text IS NULL THEN true
            ELSE has_schema_privilege(%(partman)s::text, 'USAGE')
                 AND has_table_privilege(quote_ident(%(partman)s::text) || '.part_config', 'SELECT') END
"""
# CASE, not OR/AND: has_*_privilege raises on an object that does not exist.


@dataclass(frozen=True)
class Needs:
    """What a run will do, as far as privileges go."""

    schema: str  # the table's schema: new children and the fresh DEFAULT go there
    owner: str  # the parent's owner (ALTER TABLE … DETACH/ATTACH need its ownership)
    source: str  # the DEFAULT (or the detached table adopted): renamed, altered, dropped
    partman: (
        Partman | None
    )  # installed: its config says whether it manages the table (and makes children)


def missing(conn: Conn, needs: Needs) -> list[str]:
    """Each privilege the current role lacks for a fix, in words a DBA can GRANT from."""
    row = conn.execute(
        _SQL,
        {
            "owner": needs.owner,
            "schema": needs.schema,
            "source": needs.source,
            "partman": needs.partman.schema if needs.partman else None,
        },
    ).fetchone()
    assert row is not None
    if row[0]:
        return []
    (_, owner, source_owner, schema_create, db_create, journal_schema, runs, chunks, partman) = row
    pm = needs.partman.schema if needs.partman else ""
    checks = [
        (
            owner,
            f"ownership of the table (its owner is {needs.owner}: run as that role or a member of it)",
        ),
        (source_owner, f"ownership of {needs.source} (the DEFAULT the repair renames)"),
        (
            schema_create,
            f"CREATE on schema {needs.schema} (for the new children and the fresh DEFAULT)",
        ),
        (db_create, "CREATE on the database (the plan creates schema partguard if missing)"),
        (journal_schema, "USAGE and CREATE on schema partguard (journal and quarantine)"),
        (
            runs and chunks,
            "SELECT, INSERT, UPDATE on partguard.fix_run and SELECT, INSERT on partguard.fix_chunk",
        ),
        (
            partman,
            f"USAGE on schema {pm} and SELECT on its part_config (whether pg_partman manages the table)",
        ),
    ]
    return [what for ok, what in checks if not ok]


# --- whose code partguard runs ---------------------------------------------------------
# partguard calls functions in its schema and writes its journal there. A role that owns
# the schema, a helper or a journal table could change them (a function's body, a trigger on
# a journal table), and a superuser's next run would execute that code with its rights. They
# must belong to a superuser, or (for a role that is not one) to a role whose privileges it
# has. pg_has_role() is true of every role for a superuser: a superuser trusts superusers only.

HELPERS = ("divert", "let_divert", "rename_indexes", "add_children_with_rows")
JOURNAL = ("fix_run", "fix_chunk", "split_run", "maintenance_run", "maintenance_table")

_UNTRUSTED_SQL = """
SELECT o.kind, o.name, r.rolname FROM (
    SELECT 'schema' AS kind, n.nspname::text AS name, n.nspowner AS owner
      FROM pg_namespace n WHERE n.nspname = 'partguard'
    UNION ALL
    SELECT 'function', 'partguard.' || p.proname, p.proowner FROM pg_proc p
     WHERE p.pronamespace = to_regnamespace('partguard') AND p.proname = ANY(%(helpers)s)
    UNION ALL
    SELECT 'table', 'partguard.' || c.relname, c.relowner FROM pg_class c
     WHERE c.relnamespace = to_regnamespace('partguard') AND c.relname = ANY(%(journal)s)
) o JOIN pg_roles r ON r.oid = o.owner
WHERE NOT r.rolsuper
  AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR NOT pg_has_role(o.owner, 'USAGE'))
ORDER BY 1, 2
"""


def untrusted(conn: Conn) -> list[str]:
    """partguard's own objects that a role other than this one (and not a superuser) owns,
    as ``schema partguard (owner mallory)``."""
    rows = conn.execute(
        _UNTRUSTED_SQL, {"helpers": list(HELPERS), "journal": list(JOURNAL)}
    ).fetchall()
    return [
        f"{kind} {'.'.join(quote_name(p) for p in str(name).split('.', 1))} (owner {quote_name(owner)})"
        for kind, name, owner in rows
    ]


def may_divert(conn: Conn) -> bool:
    """Whether this role may attach ``partguard.divert()`` (instant's trigger): EXECUTE is
    revoked from PUBLIC, so a role other than its owner needs it granted."""
    row = conn.execute(
        "SELECT CASE WHEN to_regprocedure('partguard.divert()') IS NULL THEN true "
        "ELSE has_function_privilege('partguard.divert()', 'EXECUTE') END"
    ).fetchone()
    return bool(row and row[0])
