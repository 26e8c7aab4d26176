"""The command line: parse, call the library, render, map outcomes to exit codes.

Each subcommand lives in its own module here and calls a library function of the same
name in ``partguard.commands``; this module only assembles them and owns the one place
where errors become a one-line message and an exit code.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

import click
import psycopg

from .. import __version__
from ..db import error_line
from ..errors import PartguardError
from .common import DECLINED

SUBCOMMANDS = ("check", "fix", "split", "maintain", "metrics", "systemd", "k8s", "demo")

# Server errors that reach the CLI unwrapped still get the code their meaning has.
_SQLSTATE_EXIT = {"42501": 77, "55P03": 75}
INTERNAL = 70  # EX_SOFTWARE: a bug, or a server answer partguard did not expect
INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _Debug:
    """Whether to print the Python stack with an error: ``--traceback`` or PARTGUARD_DEBUG=1.
    Reset by every ``main`` call (tests run many in one process)."""

    stack = False


@click.group(context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="partguard")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.option(
    "--traceback",
    "show_stack",
    is_flag=True,
    help="On an error, print the Python stack as well [env: PARTGUARD_DEBUG=1].",
)
def cli(verbose: int, show_stack: bool) -> None:
    """Keep PostgreSQL range-partitioned tables healthy: check, fix, maintain, monitor."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="partguard: %(message)s")
    _Debug.stack = _Debug.stack or show_stack


for _name in SUBCOMMANDS:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a subcommand still being written
        if _exc.name != f"{__name__}.{_name}":
            raise
        continue
    cli.add_command(_mod.command)


def main(argv: Sequence[str] | None = None, prog_name: str = "partguard") -> int:
    """Entry point; returns the exit code so tests can drive it in-process.

    The one place where an error becomes a process exit: one line on stderr, whatever
    went wrong, with the exit code the README documents; ``--traceback`` adds the stack.
    """
    _Debug.stack = os.environ.get("PARTGUARD_DEBUG", "").lower() not in ("", "0", "false", "no")
    try:
        rc = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name=prog_name,
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except click.Abort as exc:
        # click turns Ctrl-C anywhere into Abort (from KeyboardInterrupt); its prompts raise
        # Abort on Ctrl-C or end of input, which is declining.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _fail(prog_name, "interrupted", INTERRUPTED)
        return _fail(prog_name, "aborted at the prompt: nothing changed", DECLINED)
    except click.UsageError as exc:
        return _fail(prog_name, exc.format_message(), 64)
    except KeyboardInterrupt:
        return _fail(prog_name, "interrupted", INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the catch-all the error contract promises
        code, message = _describe(exc)
        if _Debug.stack:
            traceback.print_exception(exc, file=sys.stderr)
        elif code == INTERNAL and not isinstance(exc, (PartguardError, psycopg.Error)):
            message += " (run with --traceback for the stack)"
        return _fail(prog_name, message, code)
    return int(rc or 0)


def _describe(exc: Exception) -> tuple[int, str]:
    """(exit code, one-line message) of any error."""
    if isinstance(exc, PartguardError):
        return exc.exit_code, error_line(exc)
    if isinstance(exc, psycopg.Error):  # an unexpected server answer
        code = _SQLSTATE_EXIT.get(exc.sqlstate or "", INTERNAL)
        return code, f"server error ({exc.sqlstate or 'no SQLSTATE'}): {error_line(exc)}"
    text = " ".join(str(exc).split())
    return INTERNAL, f"internal error: {type(exc).__name__}" + (f": {text}" if text else "")


def _fail(prog_name: str, message: str, code: int) -> int:
    click.echo(f"{prog_name}: {' '.join(message.split())}", err=True)
    return code


def run() -> None:
    sys.exit(main())


def fix_partitioned_table_main(argv: Sequence[str] | None = None) -> int:
    """The incident's ``fix-partitioned-table.sh <database> <table> <key> <timezone>``, made safe."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args) or len(args) != 4:
        click.echo(
            "usage: fix-partitioned-table <database> <table_name> <partition_key> <timezone> \n"
            "Repairs a DEFAULT partition with `partguard fix` (instant swap, then exact children;"
            " see partguard fix --help).",
            err=len(args) != 4,
        )
        return 0 if args and args[0] in ("-h", "--help") else 64
    database, table, key, tz = args
    return main(
        ["fix", "-d", database, table, "--key", key, "--default-tz", tz, "--yes"],
        prog_name="fix-partitioned-table",
    )


def fix_partitioned_table_run() -> None:
    sys.exit(fix_partitioned_table_main())
