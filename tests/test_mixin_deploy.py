"""deploy/: the compose demo stack, its Prometheus configuration and Grafana provisioning.

Docker is not needed: the container layout is rebuilt in a temporary directory from the compose file's
bind mounts, so `promtool check config` sees exactly the paths Prometheus sees in its container.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from mixin.config import EXPORTER_JOB_REGEX
from tests.helpers import REPO_ROOT, require_binary

DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PROVISIONING = DEPLOY / "grafana" / "provisioning"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE)
    return doc


def bind_mounts(service: str) -> dict[PurePosixPath, Path]:
    """Container path -> repository path, for the service's bind mounts (named volumes skipped)."""
    mounts = {}
    for volume in compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[PurePosixPath(target)] = (DEPLOY / source).resolve()
    return mounts


def to_repo(service: str, container_path: str) -> Path:
    """Where a path inside the service's container comes from in the repository."""
    path = PurePosixPath(container_path)
    for target, source in bind_mounts(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted into {service}")


def materialize(service: str, root: Path) -> None:
    """Recreate the service's bind mounts under root, as symlinks to the repository."""
    for target, source in bind_mounts(service).items():
        link = root / str(target).lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, link)


def test_compose_services_and_mounts_exist() -> None:
    services = compose()["services"]
    assert {"exporter", "prometheus", "grafana"} <= set(services)
    exporter = services["exporter"]
    assert exporter["build"]["context"] == ".."
    assert exporter["entrypoint"] == ["assistants-exporter"] and "--demo" in exporter["command"]
    for name in services:
        for target, source in bind_mounts(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
            assert REPO_ROOT in source.parents, f"{name}: {source} is outside the repository"


def test_scrape_config_matches_the_exporter_and_the_down_alert() -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    command = compose()["services"]["exporter"]["command"]
    listen_port = command[command.index("--listen") + 1].rsplit(":", 1)[1]
    job = next(j for j in config["scrape_configs"] if re.fullmatch(EXPORTER_JOB_REGEX, j["job_name"]))
    assert job["static_configs"][0]["targets"] == [f"exporter:{listen_port}"]


@pytest.mark.prometheus
def test_promtool_check_config_in_the_container_layout(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    materialize("prometheus", tmp_path)
    config = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    rule_files = sorted((REPO_ROOT / "rules").glob("*.yml"))
    # An unmatched rule_files glob is not an error for promtool, so check that ours were found.
    assert f"SUCCESS: {len(rule_files)} rule files found" in out, out
    assert "assistants-exporter.rules.yml" in out


@pytest.mark.parametrize("path", sorted(PROVISIONING.rglob("*.yml")), ids=lambda p: p.name)
def test_provisioning_files_are_well_formed(path: Path) -> None:
    doc = load_yaml(path)
    assert doc["apiVersion"] == 1
    assert doc.get("datasources") or doc.get("providers")


def test_provisioning_paths_exist() -> None:
    grafana = compose()["services"]["grafana"]
    assert to_repo("grafana", "/etc/grafana/provisioning") == PROVISIONING.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert to_repo("grafana", home).is_file()
    providers = load_yaml(PROVISIONING / "dashboards" / "assistants-exporter.yml")["providers"]
    for provider in providers:
        source = to_repo("grafana", provider["options"]["path"])
        assert source.is_dir() and sorted(source.glob("*.json")), provider


def test_datasource_points_at_the_prometheus_service() -> None:
    sources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["isDefault"]
    assert prometheus[0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
