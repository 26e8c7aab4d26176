"""``partguard.toml``: what ``maintain`` keeps premade for tables pg_partman does not manage.

A table without partman has nobody creating its future children; the file says, per table,
how wide a child is, how many to keep ahead, in which time zone days start and how children
are named. For a partman-managed table an entry may only pin the time zone partman computes
in (its interval and premake live in ``part_config``, one source of truth).

    [[table]]
    name = "public.events"
    interval = "1 day"
    premake = 4
    tz = "Europe/Berlin"
    naming = "{parent}_p{YYYYMMDD}"
    retention = "30 days"       # optional: retire children whose upper bound left the window
    retention_mode = "detach"   # or "drop"

See docs/partguard.toml.example for every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tomlfile
from .errors import UsageError
from .inspect.catalog import Table
from .inspect.grid import Grid, IntGrid, TimeGrid, parse_interval, time_grid
from .inspect.retention import Window, parse_window
from .plan.children import Naming

DEFAULT_PREMAKE = 4
_KEYS = {"name", "interval", "premake", "tz", "naming", "retention", "retention_mode"}
# An interval or retention default would also hit partman tables.
_DEFAULT_KEYS = {"premake", "tz", "retention_mode"}
RETENTION_MODES = ("detach", "drop")
# "{parent}_p{YYYYMMDD}": an optional literal stem or {parent}, a literal prefix, then the
# to_char-style format of the child's lower bound in braces ({start} for integer keys).
_NAMING = re.compile(r"^(?P<stem>\{parent\}|[^{}]*?)(?P<prefix>[^{}]*)\{(?P<fmt>[^{}]+)\}$")


@dataclass(frozen=True)
class TableSpec:
    """One ``[[table]]`` entry, validated."""

    name: str
    interval: str | None = None  # None: a partman table (only tz applies)
    premake: int = DEFAULT_PREMAKE
    tz: str | None = None
    naming: str | None = None  # None: follow the existing children's pattern
    retention: str | None = None  # "30 days", or ids for integer keys; None: keep every child
    retention_mode: str = "detach"  # detach: the old child stays as a plain table; drop: gone

    @property
    def window(self) -> Window | None:
        """The retention as a value (validated on load)."""
        return (
            None
            if self.retention is None
            else parse_window(self.retention, f"{self.name}: retention")
        )

    def naming_for(self, table: Table, grid: Grid) -> Naming | None:
        """The Naming this entry asks for, or None to follow the children's pattern."""
        if self.naming is None:
            return None
        m = _NAMING.match(self.naming)
        assert m is not None  # validated on load
        fmt: str | None = m["fmt"]
        if isinstance(grid, IntGrid):
            if fmt != "start":
                raise UsageError(
                    f"{self.name}: integer keys are named with {{start}}, not {{{fmt}}}"
                )
            fmt = None
        elif fmt == "start":
            raise UsageError(f"{self.name}: time keys need a format such as {{YYYYMMDD}}")
        tz = grid.tz if isinstance(grid, TimeGrid) else None
        if m["stem"] == "{parent}":
            return Naming(table.name, m["prefix"], fmt, tz)
        return Naming(m["stem"] + m["prefix"], "", fmt, tz)


@dataclass(frozen=True)
class Config:
    tables: tuple[TableSpec, ...] = ()
    path: str | None = None


def load(path: str | Path | None) -> Config:
    """Read and validate a config file; ``None`` is the empty config."""
    if path is None:
        return Config()
    return parse(tomlfile.read(path), str(path))


def parse(text: str, source: str = "partguard.toml") -> Config:
    doc = tomlfile.parse(text, source)
    unknown = set(doc) - {"table", "defaults"}
    if unknown:
        raise UsageError(
            f"{source}: unknown section(s) {', '.join(sorted(unknown))}; expected [[table]], [defaults]"
        )
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{source}: [defaults] must be a table")
    _no_unknown(defaults, _DEFAULT_KEYS, f"{source} [defaults]")
    entries = doc.get("table", [])
    if not isinstance(entries, list):
        raise UsageError(f"{source}: use [[table]] (an array of tables), not [table]")
    specs: list[TableSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, 1):
        where = f"{source} [[table]] #{i}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: must be a table")
        _no_unknown(entry, _KEYS, where)
        spec = _spec({**defaults, **entry}, where)
        if spec.name in seen:
            raise UsageError(f"{where}: {spec.name} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    return Config(tuple(specs), source)


def _no_unknown(d: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}"
        )


def _spec(d: dict[str, Any], where: str) -> TableSpec:
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{where}: 'name' (schema.table) is required")
    where = f"{where} ({name})"
    interval = d.get("interval")
    if interval is not None:
        if isinstance(interval, int) and not isinstance(interval, bool):
            if interval <= 0:
                raise UsageError(f"{where}: interval must be positive")
            interval = str(interval)
        elif isinstance(interval, str):
            if not interval.strip().isdigit():
                try:
                    parse_interval(interval)
                except UsageError as exc:
                    raise UsageError(f"{where}: {exc}") from None
        else:
            raise UsageError(f'{where}: interval must be a string such as "1 day" or an integer')
    premake = d.get("premake", DEFAULT_PREMAKE)
    if not isinstance(premake, int) or isinstance(premake, bool) or premake < 1:
        raise UsageError(f"{where}: premake must be a positive integer")
    tz = d.get("tz")
    if tz is not None:
        if not isinstance(tz, str):
            raise UsageError(f'{where}: tz must be a time zone name such as "UTC"')
        try:
            time_grid(parse_interval("1 day"), tz)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    naming = d.get("naming")
    if naming is not None and (not isinstance(naming, str) or not _NAMING.match(naming)):
        raise UsageError(
            f'{where}: naming must look like "{{parent}}_p{{YYYYMMDD}}" (a format in braces at the end)'
        )
    if interval is None and naming is not None:
        raise UsageError(f"{where}: naming needs an interval (partman tables follow part_config)")
    retention, mode = d.get("retention"), d.get("retention_mode", "detach")
    if retention is not None:
        if interval is None:
            raise UsageError(
                f"{where}: retention needs an interval (for a partman table set "
                "part_config.retention)"
            )
        window = parse_window(retention, f"{where}: retention")
        if isinstance(window, int) != (
            isinstance(interval, int) or str(interval).strip().isdigit()
        ):
            raise UsageError(
                f"{where}: retention {retention!r} and interval {interval!r} are not of one "
                "kind (both a time span, or both a number of ids)"
            )
        retention = str(retention)
    if mode not in RETENTION_MODES:
        raise UsageError(f'{where}: retention_mode must be "detach" or "drop", got {mode!r}')
    return TableSpec(name.strip(), interval, premake, tz, naming, retention, mode)
