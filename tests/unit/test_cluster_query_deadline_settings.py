"""Cluster mode's query deadline: 5000 ms by default, from the environment or the flag,
anything but a whole number of milliseconds from 1 to 60000 refused naming the setting."""

from __future__ import annotations

import pytest

from kimball_grpc.cli import main as cli_main
from kimball_grpc.config import settings as settings_module
from kimball_grpc.config.settings import load_settings
from kimball_grpc.core.errors import ConfigError

VARIABLE = "KIMBALL_CLUSTER_QUERY_DEADLINE_MS"


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.config")


def test_the_deadline_is_five_seconds_unless_set():
    assert load_settings({}).cluster_query_deadline_ms == 5000
    assert load_settings({VARIABLE: "1"}).cluster_query_deadline_ms == 1
    assert load_settings({VARIABLE: "60000"}).cluster_query_deadline_ms == 60000


def test_the_flag_wins_over_the_environment(monkeypatch):
    served = []
    monkeypatch.setattr(cli_main, "environment", lambda: {VARIABLE: "300"})
    monkeypatch.setattr(cli_main, "_serve_then_exit", served.append)
    assert cli_main.main(["serve", "--cluster-query-deadline-ms", "750"]) == 0
    assert served[0].cluster_query_deadline_ms == 750


@pytest.mark.parametrize("value", ["0", "60001", "-1", "1.5", "five", "1_000", " "])
def test_a_bad_deadline_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError) as info:
        load_settings({VARIABLE: value})
    assert VARIABLE in info.value.message


def test_a_bad_deadline_flag_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["serve", "--cluster-query-deadline-ms", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--cluster-query-deadline-ms must be from 1 to 60000 milliseconds, got '0'" in err
