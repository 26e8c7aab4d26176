"""Test support: building incidents on a real server, live traffic, and the oracles that
judge the outcome. Shared by tests/, ``partguard demo`` and benchmarks/ (the demo ships, so
this does too; nothing here imports pytest).

- :mod:`.catalog`: reading test tables back (children with typed bounds, names, counts);
- :mod:`.build`: ``create_parent`` on any pg_partman version, tables, rows, and the incident
  at any grid (:func:`make_incident`) with the shapes the suites share;
- :mod:`.live`: the :class:`Writer` and the :class:`Reader`;
- :mod:`.oracles`: rows exactly once, children sane, partman healthy, catalog fingerprints.
"""

from __future__ import annotations

from .build import (
    DAY,
    create_parent,
    drop_children,
    fixes_incident,
    insert_ids,
    insert_keys,
    insert_outage,
    insert_spread,
    intervals_back,
    live_incident,
    make_incident,
    make_table,
    native_children,
    native_daily,
    native_incident,
    native_outage,
    partman_due,
    partman_incident,
    set_db_timezone,
    version_args,
)
from .catalog import (
    Conn,
    Kid,
    children,
    count,
    default_of,
    ident_of,
    key_type,
    kids,
    midnight,
    names_of,
    now,
    one,
    partman_major,
    session,
    utc_midnight,
    utc_today,
)
from .live import OUTAGE_MOMENT, Insert, Reader, Writer, fixes_writer
from .oracles import (
    PARTMAN_FORMATS,
    Run,
    assert_check_ok,
    assert_children_sane,
    assert_default_empty,
    assert_exactly_once,
    assert_named,
    assert_no_default_index_names,
    assert_partman_healthy,
    exactly_once_fault,
    fingerprint,
    fix_cli,
    has_wide_child,
    like,
    outside_partguard,
    public_catalog,
    quarantine_name,
    quarantined,
    row_set,
    run_partman_maintenance,
    runway_wanted,
    suffix,
)

__all__ = ['DAY', 'OUTAGE_MOMENT', 'PARTMAN_FORMATS', 'Conn', 'Insert', 'Kid', 'Reader', 'Run', 'Writer', 'assert_check_ok', 'assert_children_sane', 'assert_default_empty', 'assert_exactly_once', 'assert_named', 'assert_no_default_index_names', 'assert_partman_healthy', 'children', 'count', 'create_parent', 'default_of', 'drop_children', 'exactly_once_fault', 'fingerprint', 'fix_cli', 'fixes_incident', 'fixes_writer', 'has_wide_child', 'ident_of', 'insert_ids', 'insert_keys', 'insert_outage', 'insert_spread', 'intervals_back', 'key_type', 'kids', 'like', 'live_incident', 'make_incident', 'make_table', 'midnight', 'names_of', 'native_children', 'native_daily', 'native_incident', 'native_outage', 'now', 'one', 'outside_partguard', 'partman_due', 'partman_incident', 'partman_major', 'public_catalog', 'quarantine_name', 'quarantined', 'row_set', 'run_partman_maintenance', 'runway_wanted', 'session', 'set_db_timezone', 'suffix', 'utc_midnight', 'utc_today', 'version_args']
