"""The deployment files: what can be checked without a container runtime or a
cluster. The compose file and the CronJob parse, name what they must, and
their settings and arguments are ones trr-assets accepts; the systemd unit
passes ``systemd-analyze verify``; the Dockerfile holds to its promises
(slim, non-root, the wheel, the worker, a health check)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from trr_assets.cli.main import build_parser
from trr_assets.config import settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "trr-assets-worker.service"


def _accepts(args: list[str]) -> Any:
    """The parsed command line; a SystemExit (bad usage) fails the test."""
    return build_parser().parse_args(args)


def _settings_from_env(env: dict[str, str]) -> Any:
    return settings_from_mapping({}, environ={k: str(v) for k, v in env.items()})


def test_the_compose_file_runs_the_worker_with_postgresql_and_s3() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "worker", "migrate"} <= set(services)
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on a service that does not exist: {needed}"
    worker = services["worker"]
    assert worker["build"] == "." and worker["command"] == ["worker"]
    settings = _settings_from_env(worker["environment"])
    assert "@postgres:5432/" in settings.database.url
    assert settings.s3.endpoint_url == "http://minio:9000" and settings.s3.buckets == ["trr-assets"]
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
    assert worker["ports"] == ["9464:9464"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    _accepts(services["migrate"]["command"])


def test_the_cronjob_runs_a_dry_run_that_exits_3_on_drift() -> None:
    cron = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "reconcile-cronjob.yaml").read_text())
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    [container] = job["template"]["spec"]["containers"]
    args = _accepts(container["args"])
    assert args.command == "reconcile" and args.dry_run and args.exit_code and not args.repair
    _settings_from_env({e["name"]: e["value"] for e in container["env"]})
    assert job["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def _unit_lines() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            found.setdefault(section, [])
        else:
            found[section].append(line)
    return found


def test_the_systemd_unit_runs_the_worker_and_passes_systemd_analyze(tmp_path: Path) -> None:
    lines = _unit_lines()
    assert set(lines) == {"Unit", "Service", "Install"}
    service = dict(line.split("=", 1) for line in lines["Service"])
    command = shlex.split(service["ExecStart"])
    assert command[0] == "/opt/trr-assets/bin/trr-assets"
    assert _accepts(command[1:]).command == "worker"
    assert service["KillSignal"] == "SIGTERM" and service["DynamicUser"] == "yes"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # the structure above is all that can be checked here
        return
    # verify wants the program to exist: the same unit, pointing at a stand-in.
    stand_in = tmp_path / "trr-assets"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/trr-assets/bin/trr-assets", str(stand_in)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_dockerfile_is_slim_non_root_and_runs_the_worker_with_a_health_check() -> None:
    steps = _instructions()
    kinds = [kind for kind, _ in steps]
    assert set(kinds) <= {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "EXPOSE", "HEALTHCHECK",
                          "STOPSIGNAL", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
    bases = [arg for kind, arg in steps if kind == "FROM"]
    assert all("-slim" in base for base in bases)
    last_stage = max(i for i, kind in enumerate(kinds) if kind == "FROM")
    users = [arg for kind, arg in steps[last_stage:] if kind == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the image runs as root"
    exec_form = {kind: json.loads(arg) for kind, arg in steps if kind in ("ENTRYPOINT", "CMD")}
    assert exec_form == {"ENTRYPOINT": ["trr-assets"], "CMD": ["worker"]}
    _accepts(exec_form["CMD"])
    [health] = [arg for kind, arg in steps if kind == "HEALTHCHECK"]
    probe = json.loads(health.split("CMD", 1)[1])
    assert "/healthz" in probe[-1]
    compile(probe[-1], "<healthcheck>", "exec")  # the probe is valid Python
    installs = [arg for kind, arg in steps if kind == "RUN" and "pip install" in arg]
    assert installs and "--no-index" in installs[-1], "the final stage installs the built wheel only"
    for kind, arg in steps:
        if kind == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY of a path that does not exist: {source}"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(arg for kind, arg in steps if kind == "ENV")))
    settings = _settings_from_env({k: v for k, v in env.items() if k.startswith("TRR_ASSETS_")})
    assert settings.metrics.port == 9464 and settings.metrics.host == "0.0.0.0"


@pytest.mark.parametrize("path", ["Dockerfile", "compose.yaml", "deploy/kubernetes/reconcile-cronjob.yaml",
                                  "deploy/systemd/trr-assets-worker.service"])
def test_docs_deploy_names_each_file(path: str) -> None:
    assert path in (ROOT / "docs" / "deploy.md").read_text()
