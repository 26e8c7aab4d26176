"""``partguard systemd``: the printed units run maintain with the database quoted the way
systemd parses it, on a persistent randomized timer, and ``--install`` writes both files."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from partguard.cli import main
from partguard.commands.systemd import quote_arg, systemd_escape

EXE = "/usr/local/bin/partguard"


def units(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str], str]:
    rc = main(["systemd", "--executable", EXE, *argv])
    out, err = capsys.readouterr()
    files: dict[str, str] = {}
    name = None
    for line in out.splitlines():
        header = re.fullmatch(r"# (\S+\.(?:service|timer))", line)
        if header:
            name = header.group(1)
            files[name] = ""
        elif name is not None:
            files[name] += line + "\n"
    return rc, files, err


def setting(text: str, key: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{key}=")]
    return line.split("=", 1)[1]


def systemd_argv(exec_start: str) -> list[str]:
    """How systemd splits ExecStart (quotes, backslashes), then undoes %% and $$."""
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(exec_start)]


def test_printed_units_run_maintain_hourly_on_a_persistent_timer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, files, err = units(capsys, "-d", "sales")
    assert rc == 0 and err == ""
    assert set(files) == {"partguard-maintain-sales.service", "partguard-maintain-sales.timer"}
    service, timer = (
        files["partguard-maintain-sales.service"],
        files["partguard-maintain-sales.timer"],
    )
    assert setting(service, "ExecStart") == f"{EXE} maintain -d sales --retry-for 10m"
    assert setting(service, "Type") == "oneshot"
    assert setting(service, "StandardOutput") == "journal"
    assert setting(service, "NoNewPrivileges") == "yes"
    assert setting(timer, "OnCalendar") == "hourly"
    assert setting(timer, "Persistent") == "true"
    assert setting(timer, "RandomizedDelaySec") == "5min"
    assert setting(timer, "Unit") == "partguard-maintain-sales.service"
    assert setting(timer, "WantedBy") == "timers.target"


def test_hostile_database_name_is_quoted_for_systemd_and_escaped_in_the_unit_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = 'my "db" $HOME 100%/x'
    rc, files, _ = units(capsys, "-d", db, "--every", "*:0/15")
    assert rc == 0
    name = systemd_escape(db)
    assert "/" not in name and " " not in name
    service = files[f"partguard-maintain-{name}.service"]
    exec_start = setting(service, "ExecStart")
    assert "%%" in exec_start and "$$HOME" in exec_start
    assert systemd_argv(exec_start) == [EXE, "maintain", "-d", db, "--retry-for", "10m"]
    assert setting(files[f"partguard-maintain-{name}.timer"], "OnCalendar") == "*:0/15"


def test_escape_matches_systemd_escape() -> None:
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape is not installed")
    for text in ("sales", "my-db", "a b/c", ".hidden", "Ünïcode", "x:y_z.w"):
        expected = subprocess.run(
            [tool, text], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert systemd_escape(text) == expected, text


def test_plain_arguments_stay_unquoted_and_others_are_quoted() -> None:
    assert quote_arg("--retry-for") == "--retry-for"
    assert quote_arg("host=db1 dbname=x") == '"host=db1 dbname=x"'
    assert quote_arg('a\\b"c') == '"a\\\\b\\"c"'


def test_password_in_conninfo_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["systemd", "--executable", EXE, "-d", "dbname=x password=secret"])
    out, err = capsys.readouterr()
    assert rc == 64 and out == ""
    assert "password" in err and "secret" not in err


def test_install_writes_both_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = units(capsys, "-d", "sales", "--name", "pg-sales", "--install", str(tmp_path))
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pg-sales.service", "pg-sales.timer"]
    assert "systemctl enable --now pg-sales.timer" in err
    timer = (tmp_path / "pg-sales.timer").read_text()
    assert setting(timer, "Unit") == "pg-sales.service"
    assert (tmp_path / "pg-sales.service").stat().st_mode & 0o777 == 0o644


def test_installed_units_pass_systemd_analyze_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    exe = shutil.which("partguard") or str(Path(__file__).parents[1] / ".venv/bin/partguard")
    rc = main(["systemd", "--executable", exe, "-d", 'odd "db" 100%', "--install", str(tmp_path)])
    capsys.readouterr()
    assert rc == 0
    paths = sorted(str(p) for p in tmp_path.iterdir())
    proc = subprocess.run([tool, "verify", *paths], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Unbalanced quoting" not in proc.stderr
