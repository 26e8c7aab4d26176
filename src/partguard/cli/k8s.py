"""``partguard k8s``: print the CronJob (and ConfigMap) that run ``maintain`` on Kubernetes."""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.k8s import K8sOptions, Resources, SecretRef, render
from ..config import load
from ..db import ConnParams
from ..errors import UsageError
from .common import connection_options


@click.command("k8s")
@connection_options
@click.option(
    "--image",
    default=K8sOptions.image,
    show_default=True,
    help="Container image with partguard installed (and python3, for --pgpass-secret).",
)
@click.option("--name", help="CronJob name (default: partguard-maintain-<database>).")
@click.option("--namespace", help="metadata.namespace of every object (default: kubectl's).")
@click.option(
    "--schedule", help="Cron schedule (default: hourly, at a minute derived from the name)."
)
@click.option(
    "--time-zone", default="Etc/UTC", show_default=True, help="spec.timeZone of the CronJob."
)
@click.option("--retry-for", default="10m", show_default=True, help="maintain --retry-for.")
@click.option(
    "--deadline",
    default="2h",
    show_default=True,
    help="activeDeadlineSeconds: a Job still running then is stopped and failed.",
)
@click.option(
    "--starting-deadline",
    default="10m",
    show_default=True,
    help="startingDeadlineSeconds: a run that could not start this late is skipped.",
)
@click.option(
    "--backoff-limit",
    type=click.IntRange(0, 20),
    default=2,
    show_default=True,
    help="Retries of a failed pod (exit 2, 3, 70, 75); 1, 64-66 and 77 fail the Job at once.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="partguard.toml to ship in a ConfigMap (validated first).",
)
@click.option(
    "--password-secret",
    metavar="NAME[:KEY]",
    help="PGPASSWORD from this Secret (key default: password; CloudNativePG: <cluster>-app).",
)
@click.option(
    "--pgpass-secret",
    metavar="NAME[:KEY]",
    help="A .pgpass file from this Secret (key default: pgpass), copied to mode 0600.",
)
@click.option("--cpu", default="50m:500m", show_default=True, help="CPU request[:limit].")
@click.option("--memory", default="128Mi:256Mi", show_default=True, help="Memory request[:limit].")
@click.option(
    "--run-as-user",
    type=click.IntRange(1, 2**31 - 1),
    default=10001,
    show_default=True,
    help="Non-root UID (and GID) of the pod.",
)
def command(
    params: ConnParams,
    image: str,
    name: str | None,
    namespace: str | None,
    schedule: str | None,
    time_zone: str,
    retry_for: str,
    deadline: str,
    starting_deadline: str,
    backoff_limit: int,
    config_path: str | None,
    password_secret: str | None,
    pgpass_secret: str | None,
    cpu: str,
    memory: str,
    run_as_user: int,
) -> int:
    """Print a Kubernetes CronJob running `partguard maintain` for one database.

    Apply with: partguard k8s -d app -h db-rw --password-secret db-app | kubectl apply -f -
    """
    config_text = None
    if config_path is not None:
        load(config_path)  # a mistake fails here, not in the cluster at 3 a.m.
        try:
            config_text = Path(config_path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{config_path} is not UTF-8") from None
    manifest = render(
        K8sOptions(
            params=params,
            image=image,
            name=name,
            namespace=namespace,
            schedule=schedule,
            time_zone=time_zone,
            retry_for=retry_for,
            deadline=deadline,
            starting_deadline=starting_deadline,
            backoff_limit=backoff_limit,
            config_text=config_text,
            password=SecretRef.parse(password_secret, "password") if password_secret else None,
            pgpass=SecretRef.parse(pgpass_secret, "pgpass") if pgpass_secret else None,
            cpu=Resources.parse(cpu, "--cpu"),
            memory=Resources.parse(memory, "--memory"),
            run_as_user=run_as_user,
        )
    )
    click.echo(manifest.yaml, nl=False)
    return 0
