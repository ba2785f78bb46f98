"""Cluster mode's membership lease: 10 s by default, from the environment or the flag,
anything outside 1 to 3600 seconds refused naming the setting."""

from __future__ import annotations

import pytest

from kimball_grpc.cli import main as cli_main
from kimball_grpc.config import settings as settings_module
from kimball_grpc.config.settings import load_settings
from kimball_grpc.core.errors import ConfigError


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.config")


def test_the_lease_is_ten_seconds_unless_set():
    assert load_settings({}).lease_seconds == 10.0
    assert load_settings({"KIMBALL_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
    assert load_settings({"KIMBALL_LEASE_SECONDS": "3600"}).lease_seconds == 3600.0


def test_the_flag_wins_over_the_environment(monkeypatch):
    served = []
    monkeypatch.setattr(cli_main, "environment", lambda: {"KIMBALL_LEASE_SECONDS": "5"})
    monkeypatch.setattr(cli_main, "_serve_then_exit", served.append)
    assert cli_main.main(["serve", "--lease-seconds", "30"]) == 0
    assert served[0].lease_seconds == 30.0


@pytest.mark.parametrize("value", ["0", "0.5", "3601", "-1", "ten", "nan", "inf", " "])
def test_a_bad_lease_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError) as info:
        load_settings({"KIMBALL_LEASE_SECONDS": value})
    assert "KIMBALL_LEASE_SECONDS" in info.value.message


def test_a_bad_lease_flag_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["serve", "--lease-seconds", "0.1"])
    assert exited.value.code == 2
    assert "--lease-seconds must be from 1 to 3600 seconds, got '0.1'" in capsys.readouterr().err
