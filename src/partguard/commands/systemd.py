"""``partguard systemd``: a service + timer pair that runs ``maintain`` and cannot fail unseen.

The incident's timer ran psql, failed for days, and nothing looked at its output. The
service here runs ``partguard maintain`` (which retries refused connections and exits
non-zero on any table it could not maintain), logs to the journal, and the timer is
``Persistent`` so a run missed while the machine was down happens at boot.

Unit files are a small language of their own: ``%`` starts a specifier and ``$`` a variable
everywhere in ``ExecStart``, and arguments are split on blanks unless quoted. Everything
taken from the user is escaped for it, and unit names follow ``systemd-escape``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from ..db import ConnParams
from ..errors import UsageError, os_failure

DEFAULT_DIR = "/etc/systemd/system"
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")


@dataclass(frozen=True)
class SystemdOptions:
    params: ConnParams
    every: str = "hourly"  # OnCalendar=
    randomized_delay: str = "5min"
    name: str | None = None  # unit name without suffix; default partguard-maintain-<db>
    user: str = "postgres"  # the OS user the service runs as (its ~/.pgpass is read)
    executable: str | None = None
    retry_for: str = "10m"
    config: str | None = None  # partguard.toml for maintain --config
    extra_args: tuple[str, ...] = ()  # more maintain options, e.g. ("--lock-timeout", "10s")


@dataclass(frozen=True)
class Units:
    name: str  # without suffix
    service: str
    timer: str

    @property
    def files(self) -> dict[str, str]:
        return {f"{self.name}.service": self.service, f"{self.name}.timer": self.timer}


def systemd_escape(text: str) -> str:
    """``systemd-escape`` (string mode): '/' becomes '-', other unsafe bytes ``\\xNN``."""
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif ch in _NAME_SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def quote_arg(arg: str) -> str:
    """One ``ExecStart`` argument: specifiers and variables doubled, quoted when needed."""
    if "\n" in arg or "\r" in arg:
        raise UsageError("a newline cannot be part of a systemd command line")
    text = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN_ARG.match(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _setting(value: str) -> str:
    """A free-text value (Description=): only specifiers need escaping, on one line."""
    return " ".join(value.split()).replace("%", "%%")


def database_label(params: ConnParams) -> str:
    """The database name as the unit should be named after (not a whole conninfo)."""
    base = params.dbname or os.environ.get("PGDATABASE") or ""
    if base and ("=" in base or base.startswith(("postgresql://", "postgres://"))):
        base = str(conninfo_to_dict(base).get("dbname") or "")
    return base or "default"


def _maintain_args(opt: SystemdOptions) -> list[str]:
    p = opt.params
    if (
        p.dbname
        and ("=" in p.dbname or "://" in p.dbname)
        and "password" in conninfo_to_dict(p.dbname)
    ):
        raise UsageError(
            "the connection string has a password: unit files are world-readable; "
            f"put it in ~{opt.user}/.pgpass instead"
        )
    args = ["maintain"]
    for flag, value in (
        ("-d", p.dbname),
        ("-h", p.host),
        ("-p", p.port),
        ("-U", p.user),
        ("--connect-timeout", p.connect_timeout),
    ):
        if value:
            args += [flag, str(value)]
    args += ["--retry-for", opt.retry_for]
    if opt.config:
        args += ["--config", opt.config]
    return args + list(opt.extra_args)


def _executable(opt: SystemdOptions) -> str:
    """systemd wants an absolute path: the given one, the one on PATH, or this interpreter's."""
    exe = opt.executable or shutil.which("partguard")
    if exe is None:
        candidate = Path(sys.executable).with_name("partguard")
        exe = str(candidate) if candidate.exists() else None
    if exe is None:
        raise UsageError(
            "cannot find the partguard executable: pass --executable /path/to/partguard"
        )
    if not os.path.isabs(exe):
        exe = os.path.abspath(exe)
    return exe


def render(opt: SystemdOptions) -> Units:
    """The service and timer text for ``maintain`` against ``opt.params``."""
    db = database_label(opt.params)
    name = opt.name or f"partguard-maintain-{systemd_escape(db)}"
    name = name.removesuffix(".service").removesuffix(".timer")
    if not _UNIT_NAME.match(name) or len(name) > 240:
        raise UsageError(f"not a valid unit name: {name!r} (letters, digits, ':_.-\\@' only)")
    exec_start = " ".join(quote_arg(a) for a in [_executable(opt), *_maintain_args(opt)])
    what = _setting(f"database {db}")
    service = f"""\
[Unit]
Description=partguard: PostgreSQL partition maintenance ({what})
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=oneshot
User={_setting(opt.user)}
ExecStart={exec_start}
# One line per table; the exit status says whether every table was maintained (Nagios).
StandardOutput=journal
StandardError=journal
SyslogIdentifier=partguard
# --retry-for plus the slowest table's statement_timeout, with room to spare.
TimeoutStartSec=2h
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
"""
    timer = f"""\
[Unit]
Description=partguard: run {name}.service ({_setting(opt.every)})

[Timer]
OnCalendar={_setting(opt.every)}
# Catch up at boot on a run missed while the machine was off.
Persistent=true
# Many hosts on one schedule must not all connect at the same second.
RandomizedDelaySec={_setting(opt.randomized_delay)}
Unit={name}.service

[Install]
WantedBy=timers.target
"""
    return Units(name, service, timer)


def install(units: Units, directory: str | Path = DEFAULT_DIR) -> list[Path]:
    """Write both files (atomically: a half-written unit must never be loaded)."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"{d} is not a directory")
    written = []
    for fname, text in units.files.items():
        path = d / fname
        tmp = d / f".{fname}.partguard-tmp"
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(0o644)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise os_failure(exc, f"cannot write {path}") from None
        written.append(path)
    return written
