"""Listen addresses: ``--host``/``KIMBALL_HOST`` (gRPC) and ``--api-host``/``KIMBALL_API_HOST``
(REST), every address of both families by default."""

from __future__ import annotations

import pytest

from kimball_grpc.config.settings import Settings, load_settings, parse_listen_host
from kimball_grpc.core.errors import ConfigError


def test_both_servers_listen_on_every_address_by_default():
    settings = load_settings({})
    assert (settings.grpc_host, settings.rest_host) == ("::", "::")


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("::", "::"),
        ("[::]", "::"),
        ("0.0.0.0", "0.0.0.0"),
        (" 127.0.0.1 ", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("fd00:0:0::2", "fd00::2"),
        ("localhost", "localhost"),
        ("kimball.default.svc.cluster.local", "kimball.default.svc.cluster.local"),
        ("host-1", "host-1"),
    ],
)
def test_an_address_is_taken_as_given(given, address):
    assert parse_listen_host("--host", given) == address


@pytest.mark.parametrize(
    "value",
    [
        "",
        "  ",
        "[]",
        "127.0.0.1:50051",
        "[::1]:8080",
        "http://0.0.0.0",
        "0.0.0.0/0",
        "bad_name",
        "-leading-hyphen",
        "trailing-hyphen-",
        "a..b",
        "10.1",
        "256.1.1.1",
        "[localhost]",
        "a" * 64,
        "host name",
    ],
)
def test_a_bad_address_is_refused_naming_the_setting(value):
    with pytest.raises(ConfigError) as refused:
        parse_listen_host("KIMBALL_API_HOST", value)
    assert refused.value.message.startswith("KIMBALL_API_HOST must be an address to listen on")
    assert repr(value) in refused.value.message


def test_the_environment_sets_each_server_and_flags_win():
    settings = load_settings({"KIMBALL_HOST": "[::1]", "KIMBALL_API_HOST": "0.0.0.0"})
    assert (settings.grpc_host, settings.rest_host) == ("::1", "0.0.0.0")
    settings = load_settings({"KIMBALL_HOST": "::1"}, overrides={"grpc_host": "127.0.0.1"})
    assert (settings.grpc_host, settings.rest_host) == ("127.0.0.1", "127.0.0.1")


def test_rest_follows_the_grpc_address_unless_told():
    # --host alone keeps both servers where it says, as it did when it was the only option.
    assert Settings(grpc_host="127.0.0.1").rest_host == "127.0.0.1"
    assert Settings(grpc_host="127.0.0.1", api_host="::").rest_host == "::"


def test_a_bad_variable_is_refused_naming_it():
    with pytest.raises(ConfigError, match="KIMBALL_HOST must be"):
        load_settings({"KIMBALL_HOST": "0.0.0.0:50051"})
