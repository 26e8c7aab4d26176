"""One exception hierarchy; only the CLI turns it into a message and an exit code.

Exit codes follow Nagios for check results (0-3) and sysexits(3) for errors, so a
script can tell "the table is unhealthy" from "you asked for something impossible".
"""

from __future__ import annotations

import errno

# Nagios statuses (check / maintain results).
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


class PartguardError(Exception):
    """Base of every error partguard reports to a human; ``exit_code`` is the process exit."""

    exit_code = 70  # EX_SOFTWARE: a bug or an unexpected server answer


class UsageError(PartguardError):
    """Bad option values: an unknown time zone, an unparsable interval, a wrong key."""

    exit_code = 64  # EX_USAGE


class TooManyChildren(UsageError):
    """A plan would create more children in one run than partguard ever does (plan/cap.py)."""


class UnsupportedTable(PartguardError):
    """Not range-partitioned, multi-column or expression key, subpartitions, FKs in the way."""

    exit_code = 65  # EX_DATAERR


class TableNotFound(PartguardError):
    exit_code = 66  # EX_NOINPUT


class UnknownGrid(PartguardError):
    """Neither partman, the children nor the options say what the partition interval is."""

    exit_code = 67


class ConnectionFailed(PartguardError):
    """Could not connect (Nagios UNKNOWN: nothing could be checked)."""

    exit_code = 3


class StandbyServer(PartguardError):
    """The server is a hot standby (in recovery): it cannot take a change; run on the primary."""

    exit_code = 69  # EX_UNAVAILABLE


class PoolerNotSupported(PartguardError):
    """The connection goes through a transaction- or statement-mode pooler (PgBouncer): session
    advisory locks and SET would not survive between statements."""

    exit_code = 78  # EX_CONFIG


class AlreadyRunning(PartguardError):
    """Another partguard fix holds the table's advisory lock."""

    exit_code = 73


class LockNotAvailable(PartguardError):
    """lock_timeout expired on every retry; the message names the blocking session."""

    exit_code = 75  # EX_TEMPFAIL


class PermissionDenied(PartguardError):
    exit_code = 77  # EX_NOPERM


class OutputFailed(PartguardError):
    """A file partguard was told to write (``--textfile``, ``systemd --install``) or a port
    it was told to listen on (``metrics --listen``) cannot be had."""

    exit_code = 74  # EX_IOERR


def os_failure(exc: OSError, what: str) -> PartguardError:
    """An OSError as one line: a refusal by permissions is 77 like the server's, the rest 74."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"{what}: {why}")
    return OutputFailed(f"{what}: {why}")


class VerificationFailed(PartguardError):
    """Row counts or hashes disagree: partguard stops and keeps every source table."""

    exit_code = 70


class Aborted(PartguardError):
    """``fix`` without --yes and without a TTY to ask on: nothing was asked, nothing changed.
    (Declining at the prompt is not an error: ``fix`` then exits 1, see the CLI.)"""

    exit_code = 64
