"""Test support: building incidents on a real server, live traffic, and the oracles that
judge the outcome. Shared by tests/, ``partguard demo`` and benchmarks/ (the demo ships, so
this does too; nothing here imports pytest).

- :mod:`.catalog`: reading test tables back (children with typed bounds, names, counts);
- :mod:`.build`: ``create_parent`` on any pg_partman version, tables, rows, and the incident
  at any grid (:func:`~.build.make_incident`) with the shapes the suites share;
- :mod:`.live`: the :class:`~.live.Writer` and the :class:`~.live.Reader`;
- :mod:`.oracles`: rows exactly once, children sane, partman healthy, catalog fingerprints.
"""
