from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.config import load_config
from watcher.errors import ConfigError

GOOD = """
[daemon]
state_dir = "state"

[models.m1]
reference = "ref.csv"
source = { kind = "directory", path = "incoming" }
columns = { numeric = ["a", "b"], categorical = ["c"], prediction = "p" }
drift = { drift_share = 0.3, columns = { a = { stattest = "psi", threshold = 0.2 } } }
policy = { consecutive = 3 }

[models.m2]
source = { kind = "sql", dsn = "postgresql+psycopg://u@127.0.0.1/db", table = "preds" }
columns = { numeric = ["x"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watcher.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    s = load_config(None)
    assert s.daemon.state_dir == Path(".watcher")
    assert (s.metrics.host, s.metrics.port) == ("127.0.0.1", 9108)
    assert s.models == {}


def test_models_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    s = load_config(write(tmp_path, GOOD))
    m1 = s.models["m1"]
    assert m1.source.kind == "directory"
    assert m1.source.path == (tmp_path / "incoming").resolve()
    assert m1.reference == (tmp_path / "ref.csv").resolve()
    assert s.daemon.state_dir == (tmp_path / "state").resolve()
    assert m1.drift.columns["a"].stattest == "psi"
    assert m1.policy.consecutive == 3
    assert m1.policy.cooldown_seconds == 6 * 3600
    assert s.models["m2"].source.kind == "sql"
    assert s.dag_id("m1") == "retrain_m1"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_METRICS__PORT", "9200")
    monkeypatch.setenv("WATCHER_AIRFLOW__PASSWORD", "s3cret")
    s = load_config(write(tmp_path, GOOD))
    assert s.metrics.port == 9200
    assert s.airflow.password is not None
    assert s.airflow.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    s = load_config(write(tmp_path, GOOD + '\n[smtp]\npassword_file = "pw"\n'))
    assert s.smtp.password is not None
    assert s.smtp.password.get_secret_value() == "from-file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("drift_share = 0.3", "drift_share = 3"), "models.m1.drift.drift_share"),
        (GOOD.replace('kind = "directory"', 'kind = "ftp"'), "models.m1.source"),
        (GOOD + "\n[metrics]\nprot = 1\n", "metrics.prot"),
        (
            GOOD.replace('categorical = ["c"]', 'categorical = ["a"]'),
            "both numeric and categorical",
        ),
        (GOOD.replace('prediction = "p"', 'prediction = "b"'), "is both a numeric feature"),
        (
            GOOD.replace('a = { stattest = "psi"', 'zz = { stattest = "psi"'),
            "not numeric or categorical",
        ),
        (
            GOOD.replace('stattest = "psi"', 'stattest = "magic"'),
            "models.m1.drift.columns.a.stattest",
        ),
        ("[models.m1]\ncolumns = {}\n", "models.m1.source"),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_invalid_configs_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert expected in str(info.value)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    ok = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "m1" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("consecutive = 3", "consecutive = 0"))
    res = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert "models.m1.policy.consecutive" in res.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


def test_dump_toml_round_trips_through_load_config(tmp_path: Path) -> None:
    from watcher.config import dump_toml

    data = {
        "daemon": {"state_dir": str(tmp_path / "s"), "poll_interval_seconds": 0.5},
        "smtp": {"enabled": True, "recipients": ["a@example.com", "b@example.com"]},
        "models": {
            "bikes-1": {
                "source": {"kind": "directory", "path": str(tmp_path / "in")},
                "columns": {"numeric": ["wind speed", "température"], "categorical": ["c"]},
                "drift": {"columns": {"wind speed": {"stattest": "psi", "threshold": 0.2}}},
            }
        },
    }
    path = tmp_path / "out.toml"
    path.write_text(dump_toml(data))
    s = load_config(path)
    assert s.daemon.poll_interval_seconds == 0.5
    assert s.smtp.recipients == ["a@example.com", "b@example.com"]
    m = s.models["bikes-1"]
    assert m.columns.numeric == ["wind speed", "température"]
    assert m.drift.columns["wind speed"].threshold == 0.2


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*/watcher.toml"))
)
def test_every_bundled_example_config_is_valid(example: Path) -> None:
    """The examples are what a new user copies: each must pass the validation `run` does."""
    settings = load_config(example)
    assert settings.models
