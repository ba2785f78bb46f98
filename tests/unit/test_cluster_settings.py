"""Cluster mode's settings: off by default, each value checked naming its variable or flag,
and the combinations cluster mode cannot run refused at start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support.settings_cases import assert_refused, env_id

from kimball_grpc.cli.main import main
from kimball_grpc.config import settings as settings_module
from kimball_grpc.config.settings import load_settings
from kimball_grpc.core.errors import ConfigError


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.config")


def test_single_node_by_default():
    s = load_settings({})
    assert not s.cluster_mode
    assert (s.nats_urls, s.nats_creds_file) == ((), None)
    assert (s.partitions, s.nats_stream_replicas) == (64, 3)
    assert s.replica_id == socket.gethostname()


def test_cluster_settings_from_the_environment_and_flags(tmp_path):
    creds = tmp_path / "user.creds"
    creds.write_text("creds")
    env = {
        "KIMBALL_NATS_URL": "nats://n1:4222, tls://user:pw@n2:4222,",
        "KIMBALL_NATS_CREDS_FILE": str(creds),
        "KIMBALL_REPLICA_ID": "kimball-0",
        "KIMBALL_PARTITIONS": "16",
        "KIMBALL_NATS_STREAM_REPLICAS": "1",
        "KIMBALL_API_TOKENS": "shared",
    }
    s = load_settings(env)
    assert s.cluster_mode
    assert s.nats_urls == ("nats://n1:4222", "tls://user:pw@n2:4222")
    assert (s.nats_creds_file, s.replica_id) == (creds, "kimball-0")
    assert (s.partitions, s.nats_stream_replicas) == (16, 1)
    s = load_settings(env, overrides={"replica_id": "kimball-1", "partitions": 8})
    assert (s.replica_id, s.partitions) == ("kimball-1", 8)


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"KIMBALL_NATS_URL": "n1:4222"}, ["KIMBALL_NATS_URL", "'n1:4222'"]),
        ({"KIMBALL_NATS_URL": "http://n1:4222"}, ["KIMBALL_NATS_URL", "'http://n1:4222'"]),
        ({"KIMBALL_NATS_URL": " , "}, ["KIMBALL_NATS_URL", "one or more"]),
        ({"KIMBALL_NATS_URL": "nats://:4222"}, ["KIMBALL_NATS_URL"]),
        ({"KIMBALL_REPLICA_ID": "a/b"}, ["KIMBALL_REPLICA_ID", "'a/b'"]),
        ({"KIMBALL_REPLICA_ID": "x" * 64}, ["KIMBALL_REPLICA_ID", "at most 63"]),
        ({"KIMBALL_PARTITIONS": "0"}, ["KIMBALL_PARTITIONS", "from 1 to 1024"]),
        ({"KIMBALL_PARTITIONS": "many"}, ["KIMBALL_PARTITIONS"]),
        ({"KIMBALL_NATS_STREAM_REPLICAS": "6"}, ["KIMBALL_NATS_STREAM_REPLICAS", "from 1 to 5"]),
        ({"KIMBALL_NATS_CREDS_FILE": "/x.creds"}, ["KIMBALL_NATS_CREDS_FILE", "without"]),
        (
            {
                "KIMBALL_NATS_URL": "nats://n1",
                "KIMBALL_API_TOKENS": "shared",
                "KIMBALL_NATS_CREDS_FILE": "/absent.creds",
            },
            ["KIMBALL_NATS_CREDS_FILE", "no such file", "/absent.creds"],
        ),
        (
            {"KIMBALL_NATS_URL": "nats://n1"},
            ["cluster mode", "tokens every replica shares", "KIMBALL_API_TOKENS"],
        ),
        (
            {"KIMBALL_NATS_URL": "nats://n1", "FEATURES_MODE": "sidecar"},
            ["cluster mode", "sidecar mode"],
        ),
        (
            {"KIMBALL_NATS_URL": "nats://n1", "KIMBALL_REST_WORKERS": "2"},
            ["cluster mode", "--rest-workers"],
        ),
        (
            {"KIMBALL_NATS_URL": "nats://n1", "KIMBALL_FEATURE_SPEC_STORE": "configmap"},
            ["cluster mode", "configmap feature spec store"],
        ),
    ],
    ids=env_id,
)
def test_bad_values_are_refused_naming_the_setting(env, fragments):
    assert_refused(env, fragments)


def test_a_host_name_unfit_for_a_replica_id_is_refused_in_cluster_mode_only(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "bad/host")
    assert load_settings({}).replica_id == "bad/host"  # single node: never used
    with pytest.raises(ConfigError) as info:
        load_settings({"KIMBALL_NATS_URL": "nats://n1"})
    assert "--replica-id" in info.value.message and "default the host name" in info.value.message


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--nats-url", "localhost"], "--nats-url must be NATS URLs"),
        (["--replica-id", "a b"], "--replica-id must be"),
        (["--partitions", "2000"], "--partitions must be from 1 to 1024"),
        (["--nats-stream-replicas", "0"], "--nats-stream-replicas must be from 1 to 5"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(flags, fragment, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", *flags])
    assert exited.value.code == 2
    assert fragment in capsys.readouterr().err


def test_cluster_mode_takes_shared_tokens_from_any_source_or_no_authentication(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("shared\n")
    cluster = {"KIMBALL_NATS_URL": "nats://n1"}
    for source in ({"KIMBALL_API_TOKENS": "shared"}, {"KIMBALL_API_TOKENS_FILE": str(tokens)}):
        assert load_settings(cluster | source).cluster_mode, source
    assert load_settings(cluster, overrides={"api_auth": False}).cluster_mode  # app.config's


def test_flags_reach_the_settings(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setenv("KIMBALL_API_TOKENS", "shared")
    monkeypatch.setattr(
        "kimball_grpc.cli.main._serve_then_exit", lambda settings: seen.setdefault("s", settings)
    )
    assert (
        main(
            [
                "serve",
                "--nats-url",
                "nats://a:1,nats://b:2",
                "--replica-id",
                "r-2",
                "--partitions",
                "4",
                "--nats-stream-replicas",
                "1",
                "--data-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    s = seen["s"]
    assert (s.nats_urls, s.replica_id, s.partitions, s.nats_stream_replicas) == (
        ("nats://a:1", "nats://b:2"),
        "r-2",
        4,
        1,
    )
    assert isinstance(s.data_dir, Path)
