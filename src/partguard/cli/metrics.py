"""``partguard metrics``: serve Prometheus metrics, write them for node_exporter, or print them."""

from __future__ import annotations

import signal
import sys
import threading

import click

from .. import targets as target_file
from ..commands.metrics import CACHE_FOR, Target, exposition, serve, serve_targets, write_textfile
from ..db import ConnParams, parse_duration
from ..errors import UsageError
from ..inspect.snapshot import Options
from .common import connection_options, force_interval_option


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (all interfaces) or ``[::1]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen wants HOST:PORT, e.g. 127.0.0.1:9187; got {text!r}")
    host = host.strip("[]") if host.startswith("[") else host
    return host or "0.0.0.0", int(port)  # ":PORT" asks for every interface


@click.command("metrics")
@connection_options
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve /metrics over HTTP (e.g. 127.0.0.1:9187); scrapers share one snapshot.",
)
@click.option(
    "--config",
    "targets_path",
    type=click.Path(dir_okay=False),
    metavar="TARGETS.toml",
    help="Serve many databases: /probe?target=NAME for each [target.NAME] of this "
    "file, /metrics for the exporter itself (needs --listen).",
)
@click.option(
    "--cache-for",
    metavar="DURATION",
    help=f"Scrapes within this long share one snapshot (default {CACHE_FOR:g}s; "
    "0 refreshes for every scrape, still one at a time).",
)
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the metrics to this file atomically (node_exporter textfile "
    "collector; name it *.prom) and exit.",
)
@click.option(
    "-t",
    "--table",
    "tables",
    multiple=True,
    metavar="TABLE",
    help="Only this table (repeatable). Default: every range-partitioned table.",
)
@click.option("--interval", help="Partition interval, overriding partman and the children.")
@click.option("--tz", help="Time zone of the grid, overriding the session's.")
@click.option(
    "--force-tz", is_flag=True, help="Use --tz on partman tables even where partman's differs."
)
@force_interval_option
def command(
    params: ConnParams,
    listen: str | None,
    targets_path: str | None,
    cache_for: str | None,
    textfile: str | None,
    tables: tuple[str, ...],
    interval: str | None,
    tz: str | None,
    force_tz: bool,
    force_interval: bool,
) -> int:
    """Export check results as Prometheus metrics.

    Without --listen or --textfile, print the exposition to stdout once. Exit status 3
    when the database could not be checked (the output still says partguard_up 0).
    """
    if listen and textfile:
        raise UsageError("use either --listen or --textfile, not both")
    if cache_for is not None and not listen:
        raise UsageError("--cache-for applies to --listen only")
    seconds = parse_duration(cache_for) if cache_for is not None else CACHE_FOR
    if targets_path:
        given = [
            o
            for o, v in (
                ("-d", params.dbname),
                ("-h", params.host),
                ("-p", params.port),
                ("-U", params.user),
                ("-t", tables),
                ("--interval", interval),
                ("--tz", tz),
            )
            if v
        ]
        if given:
            raise UsageError(f"--config takes every target from the file; drop {', '.join(given)}")
        if not listen:
            raise UsageError("--config needs --listen HOST:PORT")
        specs = target_file.load(targets_path)
    options = Options(
        tables=tables, interval=interval, tz=tz, force_tz=force_tz, force_interval=force_interval
    )
    if listen:
        addr, port_no = parse_listen(listen)
        if targets_path:
            server, _ = serve_targets(
                [Target(t.name, t.conninfo, Options(tables=t.tables)) for t in specs],
                addr,
                port_no,
                cache_for=seconds,
            )
        else:
            server, _ = serve(params, options, addr, port_no, cache_for=seconds)
        where = f"[{addr}]" if ":" in addr else addr
        fleet = f" and /probe?target=NAME for {len(specs)} targets" if targets_path else ""
        click.echo(
            f"partguard: serving metrics on http://{where}:{server.server_port}/metrics{fleet}",
            err=True,
        )
        _wait_for_termination()
        server.shutdown()
        server.server_close()
        return 0
    data, up = exposition(params, options)
    if textfile:
        write_textfile(textfile, data)
    else:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
    return 0 if up else 3


def _wait_for_termination() -> None:
    """Block until SIGTERM (systemd stop) or Ctrl-C."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
