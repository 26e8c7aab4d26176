"""``partguard demo``: the incident and its repair on a throwaway cluster."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..commands.demo import demo


@click.command("demo")
@click.option(
    "--rows",
    type=click.IntRange(1000, 50_000_000),
    default=200_000,
    show_default=True,
    help="Rows that fall into fixes' DEFAULT (raw_messages gets twice as many).",
)
@click.option("--keep", is_flag=True, help="Leave the cluster running and print how to connect.")
def command(rows: int, keep: bool) -> int:
    """Break partitioned tables the way the incident did, then check, fix, maintain, monitor."""
    from . import main

    def run(argv: Sequence[str]) -> int:
        return main(list(argv))

    return demo(run, click.echo, rows=rows, keep=keep)
