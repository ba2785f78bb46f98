"""Cluster mode's advertise address: where the other replicas reach this replica's gRPC
port; by default the host name and the gRPC port, from the environment or the flag, a bad
address refused naming the setting, and refused without cluster mode."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from kimball_grpc.app import advertised_address
from kimball_grpc.cli import main as cli_main
from kimball_grpc.config import settings as settings_module
from kimball_grpc.config.settings import load_settings
from kimball_grpc.core.errors import ConfigError

CLUSTER = {"KIMBALL_NATS_URL": "nats://n1:4222", "KIMBALL_API_TOKENS": "shared"}


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.config")


def test_the_host_name_and_the_bound_grpc_port_unless_set():
    wildcard = load_settings(CLUSTER)  # listens on every address: the host name
    assert advertised_address(wildcard, 50051) == f"{socket.gethostname()}:50051"
    moved = load_settings(CLUSTER | {"GRPC_PORT": "6000"})  # the port it is bound to
    assert advertised_address(moved, 6000) == f"{socket.gethostname()}:6000"
    given = load_settings(CLUSTER | {"KIMBALL_ADVERTISE_ADDRESS": "kimball-1.kimball:50051"})
    assert advertised_address(given, 0) == "kimball-1.kimball:50051"
    v6 = load_settings(CLUSTER | {"KIMBALL_ADVERTISE_ADDRESS": "[::1]:7000"})
    assert advertised_address(v6, 0) == "[::1]:7000"


def test_the_one_address_it_listens_on_when_it_listens_on_one():
    assert advertised_address(replace(load_settings(CLUSTER), grpc_host="10.0.0.7"), 9) == (
        "10.0.0.7:9"
    )
    assert advertised_address(replace(load_settings(CLUSTER), grpc_host="::1"), 9) == "[::1]:9"


def test_the_flag_wins_over_the_environment(monkeypatch):
    served = []
    environ = CLUSTER | {"KIMBALL_ADVERTISE_ADDRESS": "a:1"}
    monkeypatch.setattr(cli_main, "environment", lambda: environ)
    monkeypatch.setattr(cli_main, "_serve_then_exit", served.append)
    assert cli_main.main(["serve", "--advertise-address", "b:2"]) == 0
    assert advertised_address(served[0], 0) == "b:2"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("http://kimball-1:50051", "not a URL"),
        ("kimball-1:0", "host:port"),
        ("kimball-1:grpc", "host:port"),
        (":50051", "host:port"),
        ("kimball-1:50051/x", "not a URL"),
    ],
)
def test_a_bad_address_is_refused_naming_the_variable(value, fragment):
    with pytest.raises(ConfigError) as info:
        load_settings(CLUSTER | {"KIMBALL_ADVERTISE_ADDRESS": value})
    assert "KIMBALL_ADVERTISE_ADDRESS" in info.value.message
    assert fragment in info.value.message


def test_a_bad_flag_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["serve", "--advertise-address", "kimball:99999"])
    assert exited.value.code == 2
    assert "--advertise-address must be host:port" in capsys.readouterr().err


def test_it_is_refused_without_cluster_mode():
    with pytest.raises(ConfigError) as info:
        load_settings({"KIMBALL_ADVERTISE_ADDRESS": "kimball-1:50051"})
    assert "--advertise-address (KIMBALL_ADVERTISE_ADDRESS) is set without --nats-url" in (
        info.value.message
    )
