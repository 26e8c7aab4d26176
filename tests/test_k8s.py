"""``partguard k8s``: the printed manifest is valid against a current Kubernetes schema (the
schemas bundled with kubernetes-validate, checked with the network switched off), keeps the
password out, maps maintain's exit codes to Job failure, and its command line really is a
working ``partguard maintain``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from partguard.commands.k8s import K8sOptions, SecretRef, render
from partguard.db import ConnParams

Run = Callable[..., tuple[int, str, str]]
ROOT = Path(__file__).resolve().parent.parent
# Text a naive YAML writer would mangle: quotes, a colon, a hash, indentation, non-ASCII.
HOSTILE_TOML = """# partguard.toml: "quoted", 'single', key: value # not a comment in YAML
[[table]]
name = 'public."Événements: log"'
interval = "1 day"
  # indented comment
retention = "30 days"
"""


def k8s(run: Run, *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    rc, out, err = run("k8s", *argv)
    return rc, [d for d in yaml.safe_load_all(out) if d is not None] if rc == 0 else [], err


def cronjob(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cj,) = [d for d in docs if d["kind"] == "CronJob"]
    return cj


def pod_spec(cj: dict[str, Any]) -> dict[str, Any]:
    return cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def validate(docs: list[dict[str, Any]]) -> str:
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    return version


def test_manifest_is_valid_and_maintain_runs_like_the_systemd_service(
    run: Run, tmp_path: Path
) -> None:
    cfg = tmp_path / "partguard.toml"
    cfg.write_text(HOSTILE_TOML, encoding="utf-8")
    rc, docs, err = k8s(
        run,
        "-d",
        "app",
        "-h",
        "cluster-rw",
        "-U",
        "app",
        "--namespace",
        "db",
        "--password-secret",
        "cluster-app",
        "--config",
        str(cfg),
    )
    assert (rc, err) == (0, "")
    assert [d["kind"] for d in docs] == ["ConfigMap", "CronJob"]
    version = validate(docs)
    assert tuple(int(p) for p in version.split(".")[:2]) >= (1, 30)
    config_map, cj = docs
    assert config_map["data"]["partguard.toml"] == HOSTILE_TOML  # byte for byte through YAML
    assert config_map["metadata"]["namespace"] == cj["metadata"]["namespace"] == "db"
    spec = cj["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 600
    assert spec["schedule"].endswith(" * * * *") and 0 <= int(spec["schedule"].split()[0]) < 60
    job = spec["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (2, 7200)
    fail, ignore = job["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["values"] == [1, 64, 65, 66, 77]
    assert ignore == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    pod = pod_spec(cj)
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == 10001
    )
    (c,) = pod["containers"]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert c["env"] == [
        {
            "name": "PGPASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "cluster-app", "key": "password"}},
        }
    ]
    assert c["command"] == ["partguard"]
    assert c["args"] == [
        "maintain",
        "-d",
        "app",
        "-h",
        "cluster-rw",
        "-U",
        "app",
        "--retry-for",
        "10m",
        "--config",
        "/etc/partguard/partguard.toml",
    ]
    assert {"name": "config", "mountPath": "/etc/partguard", "readOnly": True} in c["volumeMounts"]


def test_the_containers_command_line_is_a_working_maintain(
    dsn: str, run: Run, tmp_path: Path
) -> None:
    """Render against the test database, then run exactly the container's arguments (with the
    ConfigMap's file where the pod would mount it): maintain works and exits 0."""
    parts = conninfo_to_dict(dsn)
    cfg = tmp_path / "partguard.toml"
    cfg.write_text("[defaults]\npremake = 4\n")
    rc, docs, _ = k8s(
        run,
        "-d",
        str(parts["dbname"]),
        "-h",
        str(parts["host"]),
        "-p",
        str(parts["port"]),
        "-U",
        str(parts["user"]),
        "--config",
        str(cfg),
    )
    assert rc == 0
    (c,) = pod_spec(cronjob(docs))["containers"]
    args = [str(cfg) if a == "/etc/partguard/partguard.toml" else a for a in c["args"]]
    rc, out, err = run(*args)
    assert rc == 0, out + err
    assert "no table to maintain" in err  # an empty database: nothing to do, and it says so


def test_pgpass_secret_is_copied_to_a_private_file_libpq_accepts(run: Run) -> None:
    rc, docs, _ = k8s(
        run,
        "-d",
        "app",
        "--pgpass-secret",
        "cluster-app:pgpass",
        "--cpu",
        "100m",
        "--memory",
        "64Mi:128Mi",
        "--schedule",
        "*/15 * * * *",
        "--deadline",
        "30m",
    )
    assert rc == 0
    validate(docs)
    cj = cronjob(docs)
    assert cj["spec"]["schedule"] == "*/15 * * * *"
    assert cj["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 1800
    pod = pod_spec(cj)
    (init,) = pod["initContainers"]
    assert "os.chmod('/pgpass/pgpass', 0o600)" in init["command"][-1]
    assert pod["securityContext"]["fsGroup"] == 10001  # so the Secret file is readable by the group
    secret = next(v for v in pod["volumes"] if v["name"] == "pgpass-secret")["secret"]
    assert secret == {
        "secretName": "cluster-app",
        "defaultMode": 0o440,
        "items": [{"key": "pgpass", "path": "pgpass"}],
    }
    (c,) = pod["containers"]
    assert c["env"] == [{"name": "PGPASSFILE", "value": "/var/run/partguard/pgpass"}]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert "--config" not in c["args"] and [d["kind"] for d in docs] == ["CronJob"]


def test_the_init_containers_copy_really_yields_a_0600_file(tmp_path: Path) -> None:
    (init,) = pod_spec(
        cronjob(
            list(
                render(
                    K8sOptions(ConnParams(dbname="app"), pgpass=SecretRef("s", "pgpass"))
                ).documents
            )
        )
    )["initContainers"]
    (tmp_path / "secret").mkdir()
    (tmp_path / "pgpass").mkdir()
    (tmp_path / "secret" / "pgpass").write_text("*:*:*:app:s3cret\n")
    (tmp_path / "secret" / "pgpass").chmod(0o440)
    code = (
        init["command"][-1]
        .replace("'/secret/", f"'{tmp_path}/secret/")
        .replace("'/pgpass/", f"'{tmp_path}/pgpass/")
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    copied = tmp_path / "pgpass" / "pgpass"
    assert copied.read_text() == "*:*:*:app:s3cret\n" and copied.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["-d", "host=db password=hunter2 dbname=app"], "has a password"),
        (["-d", "app", "--name", "Bad_Name"], "not a CronJob name"),
        (["-d", "app", "--memory", "lots"], "not a Kubernetes quantity"),
        (["-d", "app", "--password-secret", "a", "--pgpass-secret", "b"], "not both"),
    ],
)
def test_mistakes_are_usage_errors(run: Run, argv: list[str], complaint: str) -> None:
    rc, out, err = run("k8s", *argv)
    assert (rc, out) == (64, "") and complaint in err and "hunter2" not in err


def test_validation_needs_no_network(tmp_path: Path) -> None:
    """kubernetes-validate reads the schemas it bundles: the same check in a network namespace
    with no interface but loopback."""
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run([unshare, "-rn", "true"], check=False, capture_output=True)
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("unshare -rn is not available here")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(list(render(K8sOptions(ConnParams(dbname="app"))).documents)))
    code = (
        "import json, sys, kubernetes_validate as kv; v = kv.latest_version(); "
        "[kv.validate(d, v, strict=True) for d in json.load(open(sys.argv[1]))]; print(v)"
    )
    got = subprocess.run(
        [unshare or "unshare", "-rn", sys.executable, "-c", code, str(manifest)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == kubernetes_validate.latest_version()


def test_an_invalid_manifest_is_rejected_by_the_validator() -> None:
    """The validator is not a rubber stamp: a misspelt field fails in strict mode."""
    (cj,) = render(K8sOptions(ConnParams(dbname="app"))).documents
    cj["spec"]["concurrencyPolicyy"] = cj["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cj, kubernetes_validate.latest_version(), strict=True)
