"""docker-compose.yml is consistent with the repository, its config and itself.

There is no Docker engine on the machines this suite runs on, so the stack is not started
here. Instead this test reads the compose file the way Compose does (YAML anchors, `${VAR}`
interpolation from .env.example) and checks what would otherwise only fail at
`docker compose up`: missing files, clashing ports, environment variables the daemon would
not understand, Airflow components that disagree on their secrets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from watcher.config import Settings, load_config

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = [
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
]
WATCHER_SERVICES = ["watcher", "watcher-bootstrap"]
# Read by the `watcher` command line (typer) and by retrain_dags/, not by Settings.
CLI_ONLY = {"WATCHER_CONFIG"}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


# The two secrets are empty in .env.example on purpose (people generate their own).
ENV = env_example() | {"AIRFLOW_JWT_SECRET": "test-jwt", "AIRFLOW_FERNET_KEY": "test-fernet"}


def interpolate(value: Any, env: dict[str, str] = ENV) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            empty = current is None or (op == ":-" and current == "")
            return arg if empty else str(current)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise ValueError(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    doc: dict[str, Any] = interpolate(raw)
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    return svcs


def referenced_variables() -> set[str]:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    return {m.group(1) for m in _VAR.finditer(text) if m.group(1)}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, is_bind) of the short volume syntax used in this file."""
    out = []
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out.append((source, target, source.startswith((".", "/"))))
    return out


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a path inside the container comes from on the host, through a bind mount."""
    path = PurePosixPath(container_path)
    for source, target, is_bind in mounts(service):
        if is_bind and path.is_relative_to(target):
            return REPO / source / path.relative_to(target)
    return None


def _settings_value(settings: Settings, key: str) -> Any:
    node: Any = settings
    for part in key.removeprefix("WATCHER_").lower().split("__"):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def _same(actual: Any, raw: str) -> bool:
    if isinstance(actual, SecretStr):
        return actual.get_secret_value() == raw
    if isinstance(actual, bool):
        return actual == (raw.lower() in ("1", "true", "yes", "on"))
    if isinstance(actual, int | float):
        return float(actual) == float(raw)
    if isinstance(actual, list):
        return bool(actual == json.loads(raw))
    return str(actual) == raw


# ---- the tests ------------------------------------------------------------------------------


def test_the_stack_has_every_service_of_the_issue(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    expected = {
        "postgres",
        *AIRFLOW_SERVICES,
        *WATCHER_SERVICES,
        "prometheus",
        "grafana",
        "mailpit",
    }
    assert set(svcs) == expected
    assert svcs["postgres"]["image"] == "postgres:16"
    for name, svc in svcs.items():
        for dep in svc.get("depends_on", {}):
            assert dep in svcs, f"{name} depends on unknown service {dep}"


def test_everything_mounted_or_built_exists(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    for name, svc in services(compose).items():
        for source, target, is_bind in mounts(svc):
            if is_bind:
                assert (REPO / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
            assert target.startswith("/"), f"{name}: {target}"
        if "build" in svc:
            context = REPO / svc["build"]["context"]
            dockerfile = context / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: no {dockerfile}"
            _check_dockerfile(dockerfile, context)


def _check_dockerfile(dockerfile: Path, context: Path) -> None:
    ignored = {
        line.strip()
        for line in (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words[1:-1] if not w.startswith("--")]
        for source in sources:
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source}: not found"
            assert source.rstrip("/") not in ignored, f"{dockerfile.name}: {source} dockerignored"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".env", ".venv", ".git", "**/.watcher"):
        assert entry in ignored


def test_the_watcher_image_is_non_root_and_checks_healthz() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    final_stage = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER (\S+)", final_stage, re.MULTILINE)
    assert users, "the final stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in final_stage
    assert "/healthz" in final_stage
    assert "EXPOSE 9108" in final_stage


def test_the_airflow_image_extends_3_3_2_with_watcher_and_the_dags() -> None:
    text = (REPO / "docker" / "Dockerfile.airflow").read_text(encoding="utf-8")
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["apache/airflow:3.3.2"]
    assert re.search(r"^COPY .*retrain_dags/ /opt/airflow/dags/$", text, re.MULTILINE)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in text  # pip must not move Airflow
    assert "/opt/watcher-src[airflow]" in text


def test_host_ports_do_not_clash(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in services(compose).items():
        for spec in svc.get("ports", []):
            host = int(str(spec).split(":")[-2])
            assert host not in seen, f"host port {host}: {seen.get(host)} and {name}"
            seen[host] = name
    assert len(seen) == 5  # airflow, grafana, prometheus, mailpit UI, watcher metrics


@pytest.mark.parametrize("name", WATCHER_SERVICES + AIRFLOW_SERVICES)
def test_watcher_variables_are_understood_by_the_config(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = services(compose)[name]
    env = {k: str(v) for k, v in svc["environment"].items() if k.startswith("WATCHER_")}
    config = host_path(svc, env["WATCHER_CONFIG"])
    assert config is not None, f"{name}: WATCHER_CONFIG is not inside a bind mount"
    assert config.is_file(), f"{name}: {config} does not exist"
    for key in [k for k in os.environ if k.startswith("WATCHER_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_config(config)  # raises ConfigError on anything it cannot use
    for key, raw in env.items():
        if key in CLI_ONLY:
            continue
        try:
            actual = _settings_value(settings, key)
        except (AttributeError, KeyError):
            pytest.fail(f"{name}: {key} does not name a setting of watcher.config.Settings")
        assert _same(actual, raw), f"{name}: {key}={raw!r} arrived as {actual!r}"
    # Everything the daemon and the DAG share lives on the shared volume.
    model = settings.models["bikeshare"]
    assert model.source.kind == "directory"
    for path in (
        settings.daemon.state_dir,
        settings.registry.path,
        model.source.path,
        model.source.labels_path,
    ):
        assert PurePosixPath(str(path)).is_relative_to("/data"), f"{name}: {path}"
    assert ("watcher-data", "/data", False) in mounts(svc)


def test_the_daemon_is_wired_to_airflow_mailpit_and_prometheus(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    env = svcs["watcher"]["environment"]
    assert env["WATCHER_METRICS__HOST"] == "0.0.0.0"
    port = int(env["WATCHER_METRICS__PORT"])
    assert any(str(p).endswith(f":{port}") for p in svcs["watcher"]["ports"])
    health = " ".join(svcs["watcher"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in health
    assert env["WATCHER_AIRFLOW__ENABLED"] == "true"
    assert env["WATCHER_AIRFLOW__URL"] == "http://airflow-apiserver:8080"
    assert env["WATCHER_AIRFLOW__USERNAME"] == ENV["AIRFLOW_ADMIN_USER"]
    assert env["WATCHER_AIRFLOW__PASSWORD"] == ENV["AIRFLOW_ADMIN_PASSWORD"]
    assert env["WATCHER_SMTP__HOST"] == "mailpit"
    # Prometheus scrapes the service by name on the metrics port.
    prom = yaml.safe_load((REPO / "dashboards" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "watcher"]
    assert job["static_configs"][0]["targets"] == [f"watcher:{port}"]


def test_airflow_services_share_secrets_executor_and_image(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    shared = [
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW_CONN_SMTP_DEFAULT",
        "WATCHER_CONFIG",
    ]
    first = svcs[AIRFLOW_SERVICES[0]]
    for name in AIRFLOW_SERVICES:
        svc = svcs[name]
        for key in shared:
            assert svc["environment"][key] == first["environment"][key], (name, key)
        assert svc["build"] == {"context": ".", "dockerfile": "docker/Dockerfile.airflow"}
        assert svc["image"] == first["image"]
    env = first["environment"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "test-jwt"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == "test-fernet"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    api = svcs["airflow-apiserver"]
    assert (
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    )
    assert any(str(p).endswith(":8080") for p in api["ports"])
    assert "/api/v2/monitor/health" in " ".join(api["healthcheck"]["test"])
    assert svcs["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    smtp = json.loads(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    assert smtp["host"] == "mailpit"
    assert smtp["port"] == int(svcs["watcher"]["environment"]["WATCHER_SMTP__PORT"])
    assert smtp["extra"] == {"disable_ssl": True, "disable_tls": True}


def test_secrets_must_be_set_before_the_stack_starts() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="AIRFLOW_JWT_SECRET"):
        interpolate(raw, env_example())


def test_airflow_settings_are_real_airflow_3_3_2_options(compose: dict[str, Any]) -> None:
    spec = importlib.util.find_spec("airflow")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    templates = Path(next(iter(spec.submodule_search_locations))) / "config_templates"
    options = yaml.safe_load((templates / "config.yml").read_text(encoding="utf-8"))
    for name in AIRFLOW_SERVICES:
        for key in services(compose)[name]["environment"]:
            if not key.startswith("AIRFLOW__"):
                continue
            section, option = key.removeprefix("AIRFLOW__").lower().split("__")
            assert option in options.get(section, {}).get("options", {}), f"{name}: {key}"


def test_prometheus_and_grafana_get_the_committed_files(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    prom = svcs["prometheus"]
    cfg_host = host_path(prom, "/etc/prometheus/prometheus.yml")
    assert cfg_host == REPO / "dashboards/prometheus/prometheus.yml"
    rules_host = host_path(prom, "/etc/prometheus/rules/watcher.rules.yml")
    assert rules_host is not None
    assert rules_host.is_file()
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]

    grafana = svcs["grafana"]
    provider = yaml.safe_load(
        (REPO / "dashboards/grafana/provisioning/dashboards/watcher.yml").read_text()
    )["providers"][0]["options"]["path"]
    board_dir = host_path(grafana, provider)
    assert board_dir == REPO / "dashboards/grafana/dashboards"
    assert sorted(p.name for p in board_dir.glob("*.json")) == [
        "drift-overview.json",
        "model-detail.json",
        "operations.json",
    ]
    provisioning = host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")
    assert provisioning is not None
    (source,) = yaml.safe_load(provisioning.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert any(str(p).endswith(":9090") for p in prom["ports"])
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_host = host_path(grafana, home)
    assert home_host is not None
    assert home_host.is_file()


def test_env_example_documents_every_variable() -> None:
    documented = env_example()
    used = referenced_variables()
    assert used - set(documented) == set(), "used in docker-compose.yml, missing in .env.example"
    assert set(documented) - used == set(), "in .env.example, never used by docker-compose.yml"
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#") or lines[i - 1].split("=")[0] in documented, line
