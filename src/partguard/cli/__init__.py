"""The command line: parse, call the library, render, map outcomes to exit codes.

Each subcommand lives in its own module here and calls a library function of the same
name in ``partguard.commands``; this module only assembles them and owns the one place
where errors become a one-line message and an exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click
import psycopg

from .. import __version__
from ..errors import PartguardError

SUBCOMMANDS = ("check", "fix", "split", "maintain", "metrics", "systemd", "demo")


@click.group(context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="partguard")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Keep PostgreSQL range-partitioned tables healthy: check, fix, maintain, monitor."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="partguard: %(message)s")


for _name in SUBCOMMANDS:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a subcommand still being written
        if _exc.name != f"{__name__}.{_name}":
            raise
        continue
    cli.add_command(_mod.command)


def main(argv: Sequence[str] | None = None, prog_name: str = "partguard") -> int:
    """Entry point; returns the exit code so tests can drive it in-process."""
    try:
        rc = cli.main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                      standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.Abort:
        click.echo(f"{prog_name}: aborted", err=True)
        return 64
    except click.UsageError as exc:
        click.echo(f"{prog_name}: {exc.format_message()}", err=True)
        return 64
    except PartguardError as exc:
        click.echo(f"{prog_name}: {exc}", err=True)
        return exc.exit_code
    except psycopg.Error as exc:  # an unexpected server answer: still one line, never a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        click.echo(f"{prog_name}: server error ({exc.sqlstate or 'no SQLSTATE'}): {first}", err=True)
        return 70
    except KeyboardInterrupt:
        click.echo(f"{prog_name}: interrupted", err=True)
        return 130
    return int(rc or 0)


def run() -> None:
    sys.exit(main())


def fix_partitioned_table_main(argv: Sequence[str] | None = None) -> int:
    """The incident's ``fix-partitioned-table.sh <database> <table> <key> <timezone>``, made safe."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args) or len(args) != 4:
        click.echo(
            "usage: fix-partitioned-table <database> <table_name> <partition_key> <timezone> \n"
            "Repairs a DEFAULT partition with `partguard fix --strategy instant` (see partguard fix --help).",
            err=len(args) != 4,
        )
        return 0 if args and args[0] in ("-h", "--help") else 64
    database, table, key, tz = args
    return main(["fix", "-d", database, table, "--key", key, "--default-tz", tz, "--yes"],
                prog_name="fix-partitioned-table")


def fix_partitioned_table_run() -> None:
    sys.exit(fix_partitioned_table_main())
