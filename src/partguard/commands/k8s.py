"""``partguard k8s``: a CronJob that runs ``maintain`` and whose failures Kubernetes sees.

The twin of ``partguard systemd`` for clusters (CloudNativePG and friends, where pg_partman's
background worker is not available): ``concurrencyPolicy: Forbid`` so two runs never queue
on each other's locks, deadlines so a stuck run ends, and ``maintain``'s exit codes mapped to
what a retry can change. Exit 1 (WARNING), 64 (usage), 65/66 (a table it cannot handle or
find) and 77 (privileges) fail the Job at once: the same pod would fail the same way. 2, 3,
70 and 75 (a table failed, no connection, an internal error, a lock) are retried up to
``backoffLimit``. A pod evicted by a node drain (``DisruptionTarget``) is not counted.

The password never appears in the manifest: it comes from a Secret, either as
``PGPASSWORD`` or as a ``.pgpass`` file. libpq ignores a password file that group or others
may read, and a Secret volume is either root's or group-readable, so an init container
copies it into a memory-backed volume with mode 0600.

The manifest is written as YAML by a small emitter (no YAML library at run time): mappings,
sequences, block literals for multi-line text, and double-quoted (JSON) strings wherever a
plain scalar could be read as anything but a string.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from .. import __version__
from ..db import ConnParams, parse_duration
from ..errors import UsageError
from .systemd import database_label

CONFIG_DIR = "/etc/partguard"
PGPASS_DIR = "/var/run/partguard"
CONTAINER = "maintain"
# maintain's exit codes a rerun of the same pod cannot change (see the README's table).
FAIL_AT_ONCE = (1, 64, 65, 66, 77)
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_CRONJOB_NAME = 52  # the Job controller appends an 11-character suffix


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str

    @classmethod
    def parse(cls, text: str, default_key: str) -> SecretRef:
        """``NAME`` or ``NAME:KEY``."""
        ref = cls(*_pair(text, default_key))
        if not _DNS_LABEL.match(ref.name) or len(ref.name) > 253:
            raise UsageError(
                f"not a Secret name: {ref.name!r} (lower-case letters, digits and '-')"
            )
        if not re.fullmatch(r"[-._a-zA-Z0-9]+", ref.key):
            raise UsageError(f"not a Secret key: {ref.key!r}")
        return ref


@dataclass(frozen=True)
class Resources:
    """``REQUEST`` or ``REQUEST:LIMIT`` in Kubernetes quantities (50m, 128Mi)."""

    request: str
    limit: str

    @classmethod
    def parse(cls, text: str, what: str) -> Resources:
        bad = [q for q in _pair(text) if not _QUANTITY.match(q)]
        if bad:
            raise UsageError(f"{what}: not a Kubernetes quantity: {bad[0]!r} (e.g. 50m, 1, 128Mi)")
        return cls(*_pair(text))


def _pair(text: str, default: str | None = None) -> tuple[str, str]:
    """``A:B`` -> (A, B); ``A`` -> (A, default), or (A, A) without one."""
    first, _, second = text.partition(":")
    return first, second or (first if default is None else default)


@dataclass(frozen=True)
class K8sOptions:
    params: ConnParams
    image: str = f"partguard:{__version__}"
    name: str | None = None  # default partguard-maintain-<database>
    namespace: str | None = None
    schedule: str | None = None  # default: hourly, at a minute derived from the name
    time_zone: str = "Etc/UTC"
    retry_for: str = "10m"
    deadline: str = "2h"  # activeDeadlineSeconds of each Job
    starting_deadline: str = "10m"  # a run missed by more than this is skipped
    backoff_limit: int = 2
    config_text: str | None = None  # partguard.toml, validated by the caller
    password: SecretRef | None = None  # PGPASSWORD from a Secret
    pgpass: SecretRef | None = None  # a .pgpass file from a Secret
    cpu: Resources = field(default_factory=lambda: Resources("50m", "500m"))
    memory: Resources = field(default_factory=lambda: Resources("128Mi", "256Mi"))
    run_as_user: int = 10001
    extra_args: tuple[str, ...] = ()  # more maintain options, e.g. ("--lock-timeout", "10s")


@dataclass(frozen=True)
class Manifest:
    name: str
    documents: tuple[dict[str, Any], ...]

    @property
    def yaml(self) -> str:
        return "".join("---\n" + to_yaml(doc) for doc in self.documents)


def resource_name(opt: K8sOptions) -> str:
    """``partguard-maintain-<db>`` as a DNS-1123 label short enough for the Job's suffix."""
    if opt.name is not None:
        if not _DNS_LABEL.match(opt.name) or len(opt.name) > _MAX_CRONJOB_NAME:
            raise UsageError(
                f"not a CronJob name: {opt.name!r} (lower-case letters, digits and '-', "
                f"at most {_MAX_CRONJOB_NAME})"
            )
        return opt.name
    db = re.sub(r"[^a-z0-9]+", "-", database_label(opt.params).lower()).strip("-") or "default"
    return f"partguard-maintain-{db}"[:_MAX_CRONJOB_NAME].rstrip("-")


def _maintain_args(opt: K8sOptions) -> list[str]:
    p = opt.params
    if (
        p.dbname
        and ("=" in p.dbname or "://" in p.dbname)
        and "password" in conninfo_to_dict(p.dbname)
    ):
        raise UsageError(
            "the connection string has a password: manifests are stored in plain text; "
            "use --password-secret or --pgpass-secret instead"
        )
    args = ["maintain"]
    for flag, value in (("-d", p.dbname), ("-h", p.host), ("-p", p.port), ("-U", p.user)):
        if value:
            args += [flag, str(value)]
    args += ["--retry-for", opt.retry_for]
    if opt.config_text is not None:
        args += ["--config", f"{CONFIG_DIR}/partguard.toml"]
    return args + list(opt.extra_args)


def _seconds(text: str, what: str) -> int:
    value = int(parse_duration(text))
    if value < 1:
        raise UsageError(f"{what} must be at least one second, got {text!r}")
    return value


def render(opt: K8sOptions) -> Manifest:
    """The CronJob (and a ConfigMap for partguard.toml) for ``maintain`` against ``opt.params``."""
    if opt.password is not None and opt.pgpass is not None:
        raise UsageError("give --password-secret or --pgpass-secret, not both")
    if opt.backoff_limit < 0:
        raise UsageError("--backoff-limit must not be negative")
    name = resource_name(opt)
    labels = {
        "app.kubernetes.io/name": "partguard",
        "app.kubernetes.io/component": "maintenance",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": __version__,
    }
    meta: dict[str, Any] = {"name": name}
    if opt.namespace:
        if not _DNS_LABEL.match(opt.namespace):
            raise UsageError(f"not a namespace: {opt.namespace!r}")
        meta["namespace"] = opt.namespace
    meta["labels"] = labels
    docs: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}]
    env: list[dict[str, Any]] = []
    init: list[dict[str, Any]] = []
    if opt.config_text is not None:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {**meta, "name": f"{name}-config"},
                "data": {"partguard.toml": opt.config_text},
            }
        )
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": f"{name}-config"}})
    container_security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if opt.password is not None:
        env.append(
            {
                "name": "PGPASSWORD",
                "valueFrom": {"secretKeyRef": {"name": opt.password.name, "key": opt.password.key}},
            }
        )
    if opt.pgpass is not None:
        env.append({"name": "PGPASSFILE", "value": f"{PGPASS_DIR}/pgpass"})
        mounts.append({"name": "pgpass", "mountPath": PGPASS_DIR, "readOnly": True})
        volumes += [
            {
                "name": "pgpass-secret",
                "secret": {
                    "secretName": opt.pgpass.name,
                    "defaultMode": 0o440,
                    "items": [{"key": opt.pgpass.key, "path": "pgpass"}],
                },
            },
            {"name": "pgpass", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        ]
        copy = (
            "import os, shutil; shutil.copyfile('/secret/pgpass', '/pgpass/pgpass'); "
            "os.chmod('/pgpass/pgpass', 0o600)"
        )
        init.append(
            {
                "name": "pgpass",
                "image": opt.image,
                "command": ["python3", "-c", copy],
                "volumeMounts": [
                    {"name": "pgpass-secret", "mountPath": "/secret", "readOnly": True},
                    {"name": "pgpass", "mountPath": "/pgpass"},
                ],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"memory": "64Mi"},
                },
                "securityContext": container_security,
            }
        )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": opt.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["partguard"],
        "args": _maintain_args(opt),
        "resources": {
            "requests": {"cpu": opt.cpu.request, "memory": opt.memory.request},
            "limits": {"cpu": opt.cpu.limit, "memory": opt.memory.limit},
        },
        "securityContext": container_security,
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": opt.run_as_user,
        "runAsGroup": opt.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if opt.pgpass is not None:
        pod_security["fsGroup"] = opt.run_as_user  # the Secret file becomes readable by our group
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if init:
        pod["initContainers"] = init
    schedule = opt.schedule or f"{zlib.crc32(name.encode()) % 60} * * * *"
    docs.append(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta,
            "spec": {
                "schedule": schedule,
                "timeZone": opt.time_zone,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": _seconds(opt.starting_deadline, "--starting-deadline"),
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "backoffLimit": opt.backoff_limit,
                        "activeDeadlineSeconds": _seconds(opt.deadline, "--deadline"),
                        "podFailurePolicy": {
                            "rules": [
                                {
                                    "action": "FailJob",
                                    "onExitCodes": {
                                        "containerName": CONTAINER,
                                        "operator": "In",
                                        "values": list(FAIL_AT_ONCE),
                                    },
                                },
                                {
                                    "action": "Ignore",
                                    "onPodConditions": [
                                        {"type": "DisruptionTarget", "status": "True"}
                                    ],
                                },
                            ]
                        },
                        "template": {"metadata": {"labels": labels}, "spec": pod},
                    },
                },
            },
        }
    )
    return Manifest(name, tuple(docs))


# --- YAML ----------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def to_yaml(doc: dict[str, Any]) -> str:
    return "\n".join(_mapping(doc, 0)) + "\n"


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if v is None:
        return "null"
    s = str(v)
    return s if _PLAIN.match(s) and s.lower() not in _YAML_WORDS else json.dumps(s)


def _block(s: str) -> bool:
    """Multi-line text a block literal keeps byte for byte."""
    return (
        "\n" in s
        and "\r" not in s
        and not s.startswith((" ", "\n"))
        and s.endswith("\n")
        and not s.endswith("\n\n")
        and all(ch == "\n" or ch == "\t" or ch >= " " for ch in s)
    )


def _value(key: str, v: Any, pad: str) -> list[str]:
    if isinstance(v, dict) and v:
        return [f"{pad}{key}:", *_mapping(v, len(pad) + 2)]
    if isinstance(v, list) and v:
        return [f"{pad}{key}:", *_sequence(v, len(pad) + 2)]
    if isinstance(v, (dict, list)):
        return [f"{pad}{key}: {'{}' if isinstance(v, dict) else '[]'}"]
    if isinstance(v, str) and _block(v):
        return [f"{pad}{key}: |", *(f"{pad}  {ln}" if ln else "" for ln in v[:-1].split("\n"))]
    return [f"{pad}{key}: {_scalar(v)}"]


def _mapping(d: dict[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    return [line for k, v in d.items() for line in _value(_scalar(k), v, pad)]


def _sequence(items: list[Any], indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    for item in items:
        if isinstance(item, dict) and item:
            lines = _mapping(item, indent + 2)
            out.append(f"{pad}- {lines[0].lstrip()}")
            out += lines[1:]
        elif isinstance(item, list) and item:
            lines = _sequence(item, indent + 2)
            out.append(f"{pad}- {lines[0].lstrip()}")
            out += lines[1:]
        else:
            out.append(f"{pad}- {_scalar(item)}")
    return out
