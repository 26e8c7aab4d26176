"""``partguard systemd``: print (or install) the service + timer that run ``maintain``."""

from __future__ import annotations

import click

from ..commands.systemd import DEFAULT_DIR, SystemdOptions, install, render
from ..db import ConnParams
from .common import connection_options


@click.command("systemd")
@connection_options
@click.option(
    "--every",
    default="hourly",
    show_default=True,
    help="OnCalendar= expression of the timer (e.g. hourly, '*:0/15').",
)
@click.option(
    "--randomized-delay",
    default="5min",
    show_default=True,
    help="RandomizedDelaySec= of the timer: spreads hosts sharing a schedule.",
)
@click.option("--name", help="Unit name without suffix (default: partguard-maintain-<database>).")
@click.option(
    "--user",
    "os_user",
    default="postgres",
    show_default=True,
    help="OS user the service runs as (its ~/.pgpass supplies any password).",
)
@click.option("--executable", help="Absolute path of partguard (default: the one on PATH).")
@click.option("--retry-for", default="10m", show_default=True, help="maintain --retry-for.")
@click.option("--config", "config_path", help="maintain --config (partguard.toml, absolute path).")
@click.option(
    "--install",
    "install_dir",
    is_flag=False,
    flag_value=DEFAULT_DIR,
    default=None,
    metavar="[DIR]",
    help=f"Write the units into DIR (default {DEFAULT_DIR}) instead of printing.",
)
def command(
    params: ConnParams,
    every: str,
    randomized_delay: str,
    name: str | None,
    os_user: str,
    executable: str | None,
    retry_for: str,
    config_path: str | None,
    install_dir: str | None,
) -> int:
    """Print a systemd service + timer running `partguard maintain` for one database.

    Enable with: systemctl daemon-reload && systemctl enable --now <name>.timer
    """
    units = render(
        SystemdOptions(
            params=params,
            every=every,
            randomized_delay=randomized_delay,
            name=name,
            user=os_user,
            executable=executable,
            retry_for=retry_for,
            config=config_path,
        )
    )
    if install_dir is None:
        for fname, text in units.files.items():
            click.echo(f"# {fname}\n{text}")
        return 0
    for path in install(units, install_dir):
        click.echo(f"wrote {path}", err=True)
    click.echo(
        f"enable with: systemctl daemon-reload && systemctl enable --now {units.name}.timer",
        err=True,
    )
    return 0
