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

REPO = Path(__file__).resolve().parents[2]
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
MLFLOW_SERVICES = ["mlflow-postgres", "mlflow"]
CELERY_SERVICES = ["redis", "airflow-worker-1", "airflow-worker-2"]
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


# The secrets are empty in .env.example on purpose (people generate their own).
ENV = env_example() | {
    "AIRFLOW_JWT_SECRET": "test-jwt",
    "AIRFLOW_FERNET_KEY": "test-fernet",
    "AIRFLOW_API_SECRET_KEY": "test-api-secret",
}


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
        "alertmanager",
        "grafana",
        "mailpit",
        *MLFLOW_SERVICES,
        *CELERY_SERVICES,
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
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["apache/airflow:3.3.2-python3.12"]
    assert re.search(r"^COPY .*retrain_dags/ /opt/airflow/dags/$", text, re.MULTILINE)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in text  # pip must not move Airflow
    assert "/opt/watcher-src[airflow,sql,reports,mlflow]" in text


def test_host_ports_do_not_clash(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in services(compose).items():
        for spec in svc.get("ports", []):
            host = int(str(spec).split(":")[-2])
            assert host not in seen, f"host port {host}: {seen.get(host)} and {name}"
            seen[host] = name
    # airflow, grafana, prometheus, alertmanager, mailpit UI, watcher metrics, mlflow
    assert len(seen) == 7


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
    # The [celery] section belongs to the Celery provider (the `airflow` extra installs it).
    from airflow.providers.celery.get_provider_info import get_provider_info

    options |= get_provider_info()["config"]
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


# ---- issue 16: a stack that cannot skew ----------------------------------------------------

LOCK = REPO / "docker" / "constraints.txt"
# What decides whether a model written in one image loads, and scores the same, in the other.
LOCKED = {"numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "skops", "joblib", "evidently"}


def _pip_installs(dockerfile: Path) -> list[str]:
    """Every `pip install`/`pip wheel` command of a Dockerfile, continuation lines joined."""
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    return [line for line in text.splitlines() if re.search(r"\bpip (install|wheel)\b", line)]


def test_one_lock_pins_the_ml_stack_at_the_versions_tested_here() -> None:
    from importlib.metadata import version

    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.strip().lower()] = pinned.strip()
    assert set(pins) >= LOCKED
    for name in LOCKED:
        # The lock is what this test suite runs: a model trained here loads in the images.
        assert pins[name] == version(name), f"{name}: lock {pins[name]}, tested {version(name)}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.airflow"])
def test_both_images_install_through_the_one_lock(dockerfile: str) -> None:
    installs = _pip_installs(REPO / "docker" / dockerfile)
    watcher = [cmd for cmd in installs if "watcher" in cmd or '".[' in cmd]
    assert watcher, f"{dockerfile}: no pip command installs watcher"
    for cmd in watcher:
        assert "--constraint" in cmd, f"{dockerfile}: {cmd.strip()}"
        assert "constraints.txt" in cmd, f"{dockerfile}: {cmd.strip()}"
    text = (REPO / "docker" / dockerfile).read_text(encoding="utf-8")
    assert re.search(r"^COPY .*docker/constraints.txt ", text, re.MULTILINE)


def test_both_images_run_the_same_python() -> None:
    daemon = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    airflow = (REPO / "docker" / "Dockerfile.airflow").read_text(encoding="utf-8")
    daemon_py = set(re.findall(r"^FROM python:(\d+\.\d+)-", daemon, re.MULTILINE))
    airflow_py = set(re.findall(r"^FROM apache/airflow:\S+-python(\d+\.\d+)", airflow, re.M))
    assert len(daemon_py) == 1
    assert daemon_py == airflow_py


def test_the_airflow_image_installs_airflow_under_its_own_constraints() -> None:
    installs = _pip_installs(REPO / "docker" / "Dockerfile.airflow")
    text = (REPO / "docker" / "Dockerfile.airflow").read_text(encoding="utf-8")
    (url,) = re.findall(r'^ARG AIRFLOW_CONSTRAINTS_URL="(\S+)"', text, re.MULTILINE)
    assert url.startswith("https://raw.githubusercontent.com/apache/airflow/constraints-")
    assert url.endswith("/constraints-3.12.txt")  # the image's Python
    (first,) = [c for c in installs if "AIRFLOW_CONSTRAINTS_URL" in c]
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in first
    assert "apache-airflow-providers-smtp" in first
    assert installs.index(first) == 0  # before watcher, so watcher cannot move Airflow's pins


def test_version_1_is_trained_in_the_image_that_loads_it(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    bootstrap = svcs["watcher-bootstrap"]
    assert bootstrap["image"] == svcs["airflow-scheduler"]["image"]
    assert bootstrap["build"] == svcs["airflow-scheduler"]["build"]
    assert bootstrap["entrypoint"][:3] == ["python", "-m", "watcher.retrain.bootstrap"]
    assert ("watcher-data", "/data", False) in mounts(bootstrap)


def test_airflow_components_share_the_api_secret_key(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    keys = {svcs[n]["environment"].get("AIRFLOW__API__SECRET_KEY") for n in AIRFLOW_SERVICES}
    assert keys == {"test-api-secret"}
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="AIRFLOW_API_SECRET_KEY"):
        interpolate(raw, env_example() | {"AIRFLOW_JWT_SECRET": "x", "AIRFLOW_FERNET_KEY": "y"})


# Who must be healthy (or done) before whom.
START_ORDER = {
    "airflow-init": {"postgres": "service_healthy"},
    "airflow-apiserver": {
        "postgres": "service_healthy",
        "airflow-init": "service_completed_successfully",
    },
    "airflow-scheduler": {"airflow-apiserver": "service_healthy"},
    "airflow-dag-processor": {"airflow-apiserver": "service_healthy"},
    "airflow-triggerer": {"airflow-apiserver": "service_healthy"},
    "watcher-bootstrap": {"airflow-init": "service_completed_successfully"},
    "watcher": {
        "watcher-bootstrap": "service_completed_successfully",
        "airflow-apiserver": "service_healthy",
        "mailpit": "service_healthy",
    },
    "alertmanager": {"mailpit": "service_healthy"},
    "prometheus": {"watcher": "service_healthy", "alertmanager": "service_healthy"},
    "grafana": {"prometheus": "service_healthy"},
}


@pytest.mark.parametrize("name", sorted(START_ORDER))
def test_start_order_is_gated_on_health(compose: dict[str, Any], name: str) -> None:
    svcs = services(compose)
    depends = svcs[name]["depends_on"]
    for dep, condition in START_ORDER[name].items():
        assert depends.get(dep, {}).get("condition") == condition, f"{name} -> {dep}"
        if condition == "service_healthy":
            assert "healthcheck" in svcs[dep], f"{dep} has no healthcheck to wait for"
    # No cycles: following depends_on from any service ends.
    seen: list[str] = []

    def walk(n: str) -> None:
        assert n not in seen, f"depends_on cycle: {[*seen, n]}"
        seen.append(n)
        for d in svcs[n].get("depends_on", {}):
            walk(d)
        seen.pop()

    walk(name)


@pytest.mark.parametrize(
    "password", ['pa"ss', "back\\slash", "quote'n\"both\\", "ünïcödé $HOME `id` %s"]
)
def test_the_login_file_holds_any_password(
    compose: dict[str, Any], tmp_path: Path, password: str
) -> None:
    """The api-server's start script, run here by bash and Python, writes valid JSON."""
    import subprocess
    import sys

    api = services(compose)["airflow-apiserver"]
    assert api["entrypoint"] == "/bin/bash"
    script = api["command"][1]
    assert "printf" not in script
    lines = script.splitlines()
    assert lines[-1] == "exec /entrypoint airflow api-server"
    # The image's `python`, here this interpreter; the exec line starts Airflow, so stop before.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    target = tmp_path / "passwords.json"
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(target),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": password,
    }
    done = subprocess.run(
        ["bash", "-c", "\n".join(lines[:-1])], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text(encoding="utf-8")) == {"admin": password}
    assert (target.stat().st_mode & 0o077) == 0  # umask 077: only the airflow user reads it
    assert (
        api["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
        == "/opt/airflow/simple_auth_manager_passwords.json"
    )


def test_prometheus_has_no_lifecycle_or_admin_endpoint(compose: dict[str, Any]) -> None:
    command = services(compose)["prometheus"]["command"]
    assert not [c for c in command if "lifecycle" in c or "admin-api" in c], command


def test_alertmanager_gets_the_committed_route_and_prometheus_sends_to_it(
    compose: dict[str, Any],
) -> None:
    svcs = services(compose)
    am = svcs["alertmanager"]
    assert am["image"].startswith("prom/alertmanager:")
    cfg = host_path(am, "/etc/alertmanager/alertmanager.yml")
    assert cfg == REPO / "dashboards/alertmanager/alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am["command"]
    assert any(str(p).endswith(":9093") for p in am["ports"])
    prom = yaml.safe_load((REPO / "dashboards/prometheus/prometheus.yml").read_text())
    targets = [
        t
        for am_cfg in prom["alerting"]["alertmanagers"]
        for sc in am_cfg["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    route = yaml.safe_load(cfg.read_text())
    # The mail goes to the stack's SMTP server, the one the daemon uses.
    host, port = route["global"]["smtp_smarthost"].split(":")
    assert host == svcs["watcher"]["environment"]["WATCHER_SMTP__HOST"]
    assert port == svcs["watcher"]["environment"]["WATCHER_SMTP__PORT"]


def test_mlflow_serves_artifacts_from_a_postgresql_store(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    mlflow = svcs["mlflow"]
    cmd = mlflow["command"]
    store = cmd[cmd.index("--backend-store-uri") + 1]
    assert store.startswith("postgresql+psycopg2://mlflow:")
    assert store.endswith("@mlflow-postgres:5432/mlflow")
    assert "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert ("mlflow-artifacts", "/mlartifacts", False) in mounts(mlflow)
    assert "mlflow:5000" in cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert mlflow["depends_on"]["mlflow-postgres"]["condition"] == "service_healthy"
    dockerfile = (REPO / mlflow["build"]["dockerfile"]).read_text(encoding="utf-8")
    # The server runs the MLflow the `mlflow` extra pins (and the tests run).
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (pin,) = re.findall(r'"(mlflow==[0-9.]+)"', pyproject)
    assert pin in dockerfile
    from importlib.metadata import version

    assert pin == f"mlflow=={version('mlflow')}"
    # Every watcher container knows where MLflow is; the backend is chosen in .env.
    for name in (*WATCHER_SERVICES, *AIRFLOW_SERVICES):
        env = svcs[name]["environment"]
        assert env["WATCHER_REGISTRY__TRACKING_URI"] == "http://mlflow:5000", name
        assert env["WATCHER_REGISTRY__BACKEND"] == ENV["WATCHER_REGISTRY_BACKEND"], name


def test_the_celery_profile_has_redis_and_two_workers_sharing_no_writable_disk(
    compose: dict[str, Any],
) -> None:
    svcs = services(compose)
    for name in CELERY_SERVICES:
        assert svcs[name].get("profiles") == ["celery"], name
    for name in MLFLOW_SERVICES:
        assert "profiles" not in svcs[name], name
    scheduler = svcs["airflow-scheduler"]["environment"]
    hostnames = set()
    for name in ("airflow-worker-1", "airflow-worker-2"):
        worker = svcs[name]
        env = worker["environment"]
        for key in (
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CELERY__BROKER_URL",
            "AIRFLOW__CELERY__RESULT_BACKEND",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "WATCHER_CONFIG",
        ):
            assert env[key] == scheduler[key], (name, key)
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
        assert worker["command"][:2] == ["celery", "worker"]
        hostnames.add(worker["command"][worker["command"].index("--celery-hostname") + 1])
        # Only the data source, read-only: no disk to hand files through.
        writable = [v for v in worker["volumes"] if not v.endswith(":ro")]
        assert writable == ["airflow-logs:/opt/airflow/logs"], name  # Airflow's own logs
        assert "watcher-data:/data:ro" in worker["volumes"]
        for dep in ("redis", "mlflow", "postgres", "airflow-apiserver"):
            assert worker["depends_on"][dep]["condition"] == "service_healthy", (name, dep)
    assert len(hostnames) == 2
    assert ENV["AIRFLOW_EXECUTOR"] in ("LocalExecutor", "CeleryExecutor")
