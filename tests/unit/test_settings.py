"""Settings: defaults < app.config file < environment < command-line overrides."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from support import app_configs

from kimball_grpc.api.grpc_front import server_options
from kimball_grpc.config import settings as settings_module
from kimball_grpc.config.logs import LogFormat
from kimball_grpc.config.settings import (
    HttpLimits,
    Mode,
    PredictionTarget,
    Settings,
    load_settings,
    read_config_file,
)
from kimball_grpc.core.counter_config import (
    DEFAULT_RULE,
    CounterConfig,
    CounterRule,
    DateCohort,
    FilterType,
)
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.core.limits import StateLimits
from storage.wal import FsyncPolicy


def write(tmp_path: Path, text: str, name: str = "app.config") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and precedence --------------------------------------------------------


def same_settings(a: Settings, b: Settings) -> bool:
    """Equal apart from counter_config (CounterConfig has no __eq__): its rules instead."""
    return (
        replace(a, counter_config=None, storage=None)
        == replace(b, counter_config=None, storage=None)
        and a.counter_config.rules == b.counter_config.rules
    )


def test_defaults():
    s = load_settings({})
    assert same_settings(s, Settings())
    assert s.grpc_port == 50051
    assert s.api_port == 8080
    assert s.mode is Mode.API
    assert s.log_level == "INFO"
    assert s.api_auth is True
    assert s.api_auth_tokens == ()
    assert s.config_path is None
    assert s.counter_config.rule_for("any") is DEFAULT_RULE
    assert s.kubernetes_memory_limit is None
    assert s.max_response_bytes == 64 * 1024 * 1024


def test_default_config_path_is_read_when_present(tmp_path, monkeypatch):
    path = write(tmp_path, '[{features, [{site, "from default path"}]}].')
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", path)
    s = load_settings({})
    assert s.site == "from default path"
    assert s.config_path == path


def test_file_overrides_defaults(tmp_path):
    path = write(tmp_path, "[{features, [{api_auth, disable}, {counter_startup_delay, 5}]}].")
    s = load_settings({}, path)
    assert s.api_auth is False
    assert s.counter_startup_delay_ms == 5
    assert s.config_path == path
    assert s.grpc_port == 50051  # untouched by the file


def test_environment_overrides_defaults_and_file_values_survive(tmp_path):
    path = write(tmp_path, '[{features, [{site, "file-site"}]}].')
    env = {"GRPC_PORT": "6000", "FEATURES_MODE": "sidecar"}
    s = load_settings(env, path)
    assert (s.grpc_port, s.mode, s.site) == (6000, Mode.SIDECAR, "file-site")


def test_overrides_beat_environment_file_and_defaults(tmp_path):
    path = write(tmp_path, '[{features, [{site, "file-site"}, {api_auth, disable}]}].')
    env = {"GRPC_PORT": "6000", "API_PORT": "7000", "LOG_LEVEL": "debug"}
    s = load_settings(
        env,
        path,
        {"grpc_port": 6001, "site": "flag-site", "api_auth": True, "api_port": None},
    )
    assert s.grpc_port == 6001  # flag over env
    assert s.site == "flag-site"  # flag over file
    assert s.api_auth is True  # flag over file
    assert s.api_port == 7000  # a flag left unset (None) does not override
    assert s.log_level == "DEBUG"  # env over default


def test_config_path_argument_beats_kimball_config_env(tmp_path):
    from_env = write(tmp_path, '[{features, [{site, "env"}]}].', "env.config")
    from_arg = write(tmp_path, '[{features, [{site, "arg"}]}].', "arg.config")
    assert load_settings({"KIMBALL_CONFIG": str(from_env)}).site == "env"
    s = load_settings({"KIMBALL_CONFIG": str(from_env)}, from_arg)
    assert (s.site, s.config_path) == ("arg", from_arg)


def test_environment_variables_are_read():
    env = {
        "API_PORT": "8081",
        "GRPC_PORT": "0",
        "FEATURES_MODE": "sidecar",
        "ANALYTICS_HOST": "kimball:50052",
        "ANALYTICS_TOKEN": "relay-secret",
        "KIMBALL_SPOOL_MAX_EVENTS": "5000",
        "KIMBALL_MAX_STREAMS": "300",
        "KIMBALL_MAX_SUBSCRIBERS": "200",
        "KIMBALL_SUBSCRIBER_BUFFER_EVENTS": "100000",
        "NAMESPACE": "prod",
        "ADDITIONAL_NAMESPACES": "a, b,,c ",
        "STORAGE_PATH_PREFIX": "prefix/",
        "LOG_LEVEL": "warning",
        "KUBERNETES_MEMORY_LIMIT": "536870912",
        "KIMBALL_DATA_DIR": "/var/kimball",
        "KIMBALL_MAX_RESPONSE_BYTES": "4194304",
    }
    s = load_settings(env)
    assert s.api_port == 8081
    assert s.grpc_port == 0
    assert s.mode is Mode.SIDECAR
    assert s.analytics_host == "kimball:50052"
    assert s.analytics_token == "relay-secret"
    assert "relay-secret" not in repr(s)
    assert s.spool_max_events == 5000
    assert (s.max_streams, s.max_subscribers, s.subscriber_buffer_events) == (300, 200, 100_000)
    assert s.namespace == "prod"
    assert s.additional_namespaces == ("a", "b", "c")
    assert s.storage_path_prefix == "prefix/"
    assert s.log_level == "WARNING"
    assert s.kubernetes_memory_limit == 536870912
    assert s.data_dir == Path("/var/kimball")
    assert s.max_response_bytes == 4 * 1024 * 1024


def test_growth_limits_from_environment_and_flags():
    assert load_settings({}).state_limits == StateLimits(
        namespaces=1_000, event_names=10_000, counters=200_000, goals=100, feature_specs=10_000
    )
    env = {
        "KIMBALL_MAX_NAMESPACES": "7",
        "KIMBALL_MAX_EVENT_NAMES": "8",
        "KIMBALL_MAX_COUNTERS": "9",
        "KIMBALL_MAX_GOALS": "1",
        "KIMBALL_MAX_FEATURE_SPECS": "1000000",
    }
    s = load_settings(env, overrides={"max_goals": 3})  # a flag beats the variable
    assert s.state_limits == StateLimits(
        namespaces=7, event_names=8, counters=9, goals=3, feature_specs=1_000_000
    )


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("kimball:50051", "kimball:50051"),
        ("kimball", "kimball:50051"),
        ("grpc://kimball:7000", "kimball:7000"),
        ("10.0.0.5:9000", "10.0.0.5:9000"),
        ("[::1]:7000", "[::1]:7000"),
        ("::1", "[::1]:50051"),
    ],
)
def test_analytics_host_takes_the_api_servers_grpc_address(given, address):
    assert load_settings({"ANALYTICS_HOST": given}).analytics_host == address


def test_port_falls_back_to_api_port():
    assert load_settings({"PORT": "9000"}).api_port == 9000
    assert load_settings({"PORT": "9000", "API_PORT": "9001"}).api_port == 9001


def test_empty_environment_values_are_ignored():
    env = {"GRPC_PORT": "", "FEATURES_MODE": "", "LOG_LEVEL": "", "KIMBALL_CONFIG": ""}
    assert same_settings(load_settings(env), Settings())


# --- the README's example app.config files ------------------------------------------


def test_readme_site_and_cluster(tmp_path):
    path = write(tmp_path, app_configs.SITE_AND_CLUSTER)
    s = load_settings({}, path)
    assert (s.site, s.cluster) == ("Site name", "Cluster name")


def test_readme_counters_weekly_fixed_rule(tmp_path):
    path = write(tmp_path, app_configs.WEEKLY_FIXED_COUNTERS)
    config = load_settings({}, path).counter_config
    assert isinstance(config, CounterConfig)
    expected = CounterRule(".*", FilterType.FIXED, 10_000, 0.01, DateCohort.WEEKLY)
    assert config.rules == (expected,)
    got = config.rule_for("any_event")
    assert got == expected
    assert got.filter_type is FilterType.FIXED
    assert got.date_cohort is DateCohort.WEEKLY
    assert (got.pattern, got.size, got.error_probability) == (".*", 10_000, 0.01)


def test_counters_rules_in_order_with_binary_pattern(tmp_path):
    path = write(
        tmp_path,
        """[{features, [{counters, #{init => [
    #{pattern => <<"^checkout">>, type => bloom_scalable, size => 64,
      error_probability => 0.001},
    #{pattern => "", type => bloom_fixed_size, size => 1000, error_probability => 0.05}
]}}]}].
""",
    )
    config = load_settings({}, path).counter_config
    assert config.rule_for("checkout_done").size == 64
    assert config.rule_for("checkout_done").filter_type is FilterType.SCALABLE
    assert config.rule_for("signup").size == 1000


def test_readme_api_auth_disable(tmp_path):
    path = write(tmp_path, "[{features, [\n    {api_auth, disable}\n]}].\n")
    assert load_settings({}, path).api_auth is False


def test_readme_api_auth_enable_with_tokens(tmp_path):
    path = write(
        tmp_path,
        "[{features, [\n"
        "    {api_auth, enable},\n"
        '    {api_auth_tokens, [<<"SECRET_TOKEN">>]}\n'
        "]}].\n",
    )
    s = load_settings({}, path)
    assert s.api_auth is True
    assert s.api_auth_tokens == ("SECRET_TOKEN",)


def test_readme_external_grpc_event_targets(tmp_path):
    path = write(
        tmp_path,
        '[{features, [\n    {external_grpc_event_targets, [{"127.0.0.1", 8079}]}\n]}].\n',
    )
    assert load_settings({}, path).external_grpc_event_targets == (("127.0.0.1", 8079),)


def test_readme_external_grpc_prediction_targets(tmp_path):
    path = write(
        tmp_path,
        "[{features, [\n"
        '    {external_grpc_prediction_targets, [{"service name", "127.0.0.1", 8079}]}\n'
        "]}].\n",
    )
    assert load_settings({}, path).external_grpc_prediction_targets == (
        PredictionTarget("service name", "127.0.0.1", 8079),
    )


def test_readme_counter_startup_delay(tmp_path):
    path = write(tmp_path, "[{features, [\n    {counter_startup_delay, 1}\n]}].\n")
    assert load_settings({}, path).counter_startup_delay_ms == 1


def test_file_with_comments_and_other_applications(tmp_path):
    path = write(
        tmp_path,
        """%% Kimball configuration
[{kernel, [{logger_level, info}]},
 {features, [
    {site, "s"}, % trailing comment
    {cluster, <<"c">>}
 ]}].
""",
    )
    s = load_settings({}, path)
    assert (s.site, s.cluster) == ("s", "c")


# --- storage ----------------------------------------------------------------------------


def test_storage_defaults_to_a_directory_in_the_data_dir(tmp_path):
    s = load_settings({"KIMBALL_DATA_DIR": str(tmp_path)})
    assert s.storage.uri == (tmp_path / "objects").resolve().as_uri()
    assert s.wal_dir == tmp_path / "wal"
    assert (s.wal_fsync, s.wal_fsync_interval_ms, s.snapshot_interval_s) == (
        FsyncPolicy.ALWAYS,
        200,
        60.0,
    )


def test_original_s3_variables_make_the_storage_uri_under_the_prefix():
    env = {
        "S3_BUCKET": "analytics",
        "S3_HOST": "minio:9000",
        "NAMESPACE": "prod",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "hidden",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    s = load_settings(env)
    assert s.storage.uri == "s3://analytics/prod"  # STORAGE_PATH_PREFIX defaults to NAMESPACE
    assert (s.storage.s3_endpoint, s.storage.aws_region) == ("minio:9000", "eu-west-1")
    assert s.storage.aws_access_key_id == "AKIA"
    assert "hidden" not in repr(s) and "hidden" not in repr(s.storage)


def test_gcs_variables_and_an_explicit_prefix(tmp_path):
    env = {
        "GCS_BUCKET": "kimball-gcs",
        "STORAGE_PATH_PREFIX": "team/a",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023",
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json"),
    }
    s = load_settings(env)
    assert s.storage.uri == "gs://kimball-gcs/team/a"
    assert s.storage.gcs_endpoint == "http://127.0.0.1:9023"
    assert s.storage.gcs_credentials_file == tmp_path / "key.json"


def test_storage_uri_and_wal_policy_from_environment_and_flags():
    env = {"KIMBALL_STORAGE": "s3://bkt/x", "KIMBALL_WAL_FSYNC": "interval"}
    s = load_settings(env, overrides={"storage_uri": "gs://other/y"})
    assert (s.storage.uri, s.wal_fsync) == ("gs://other/y", FsyncPolicy.INTERVAL)
    s = load_settings({"KIMBALL_WAL_FSYNC_INTERVAL_MS": "50", "KIMBALL_SNAPSHOT_INTERVAL": "2.5"})
    assert (s.wal_fsync_interval_ms, s.snapshot_interval_s) == (50, 2.5)
    s = load_settings({"KIMBALL_EXTERNAL_PREDICTION_DEADLINE_MS": "75"})
    assert s.external_prediction_deadline_ms == 75


def test_connection_limits_default_in_line_with_nginx_and_grpc():
    s = load_settings({})
    assert s.http_limits == HttpLimits(
        header_timeout_s=60.0, body_timeout_s=60.0, keepalive_timeout_s=75.0, max_connections=512
    )
    options = dict(server_options(s))
    assert options["grpc.server_handshake_timeout_ms"] == 60_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 30_000
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.max_concurrent_streams"] == 256
    assert "grpc.max_connection_age_ms" not in options  # no age limit unless set


def test_connection_limits_from_the_environment():
    s = load_settings(
        {
            "KIMBALL_HTTP_HEADER_TIMEOUT": "10",
            "KIMBALL_HTTP_BODY_TIMEOUT": "30.5",
            "KIMBALL_HTTP_KEEPALIVE_TIMEOUT": "5",
            "KIMBALL_HTTP_MAX_CONNECTIONS": "2000",
            "KIMBALL_GRPC_HANDSHAKE_TIMEOUT": "20",
            "KIMBALL_GRPC_MIN_PING_INTERVAL": "60",
            "KIMBALL_GRPC_MAX_PING_STRIKES": "0",
            "KIMBALL_GRPC_MAX_CONCURRENT_STREAMS": "1000",
            "KIMBALL_GRPC_MAX_CONNECTION_AGE": "3600",
            "KIMBALL_GRPC_MAX_CONNECTION_AGE_GRACE": "120",
        }
    )
    assert s.http_limits == HttpLimits(10.0, 30.5, 5.0, 2000)
    options = dict(server_options(s))
    assert options["grpc.server_handshake_timeout_ms"] == 20_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 60_000
    assert options["grpc.http2.max_ping_strikes"] == 0  # no limit
    assert options["grpc.max_concurrent_streams"] == 1000
    assert options["grpc.max_connection_age_ms"] == 3_600_000
    assert options["grpc.max_connection_age_grace_ms"] == 120_000


def test_log_settings_from_environment_and_flags():
    s = load_settings({})
    assert (s.log_level, s.log_format, s.access_log) == ("INFO", LogFormat.TEXT, True)
    env = {"LOG_LEVEL": "warning", "KIMBALL_LOG_FORMAT": "JSON", "KIMBALL_ACCESS_LOG": "off"}
    s = load_settings(env)
    assert (s.log_level, s.log_format, s.access_log) == ("WARNING", LogFormat.JSON, False)
    flags = {"log_level": "DEBUG", "log_format": LogFormat.TEXT, "access_log": True}
    s = load_settings(env, overrides=flags)
    assert (s.log_level, s.log_format, s.access_log) == ("DEBUG", LogFormat.TEXT, True)


def test_snapshots_kept_and_skipping_damage_from_environment_and_flags():
    s = load_settings({})
    assert (s.snapshots_kept, s.wal_skip_damaged) == (2, False)
    s = load_settings({"KIMBALL_SNAPSHOTS_KEPT": "1", "KIMBALL_WAL_SKIP_DAMAGED": "true"})
    assert (s.snapshots_kept, s.wal_skip_damaged) == (1, True)
    s = load_settings({"KIMBALL_SNAPSHOTS_KEPT": "100", "KIMBALL_WAL_SKIP_DAMAGED": "Off"})
    assert (s.snapshots_kept, s.wal_skip_damaged) == (100, False)
    s = load_settings(
        {"KIMBALL_SNAPSHOTS_KEPT": "3", "KIMBALL_WAL_SKIP_DAMAGED": "0"},
        overrides={"snapshots_kept": 5, "wal_skip_damaged": True},
    )
    assert (s.snapshots_kept, s.wal_skip_damaged) == (5, True)


def test_rest_workers_from_environment_and_flags():
    assert load_settings({}).rest_workers == 0  # REST in the server process, as before
    assert load_settings({"KIMBALL_REST_WORKERS": "2"}).rest_workers == 2
    assert load_settings({"KIMBALL_REST_WORKERS": "64"}).rest_workers == 64
    s = load_settings({"KIMBALL_REST_WORKERS": "2"}, overrides={"rest_workers": 0})
    assert s.rest_workers == 0


# --- bad environment values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"GRPC_PORT": "abc"}, ["GRPC_PORT", "'abc'"]),
        ({"GRPC_PORT": "70000"}, ["GRPC_PORT", "70000"]),
        ({"GRPC_PORT": "-1"}, ["GRPC_PORT", "-1"]),
        ({"GRPC_PORT": "80.5"}, ["GRPC_PORT", "80.5"]),
        ({"GRPC_PORT": "1_000"}, ["GRPC_PORT", "'1_000'"]),
        ({"GRPC_PORT": " 80"}, ["GRPC_PORT", "' 80'"]),
        ({"API_PORT": "http"}, ["API_PORT", "'http'"]),
        ({"API_PORT": "65536"}, ["API_PORT", "65536"]),
        ({"PORT": "x"}, ["PORT", "'x'"]),
        ({"FEATURES_MODE": "nope"}, ["FEATURES_MODE", "'nope'", "api", "sidecar"]),
        ({"LOG_LEVEL": "loud"}, ["LOG_LEVEL", "'loud'"]),
        ({"LOG_LEVEL": "notset"}, ["LOG_LEVEL", "DEBUG, INFO", "'notset'"]),
        ({"KIMBALL_LOG_FORMAT": "xml"}, ["KIMBALL_LOG_FORMAT", "text or json", "'xml'"]),
        ({"KIMBALL_ACCESS_LOG": "quiet"}, ["KIMBALL_ACCESS_LOG", "true or false", "'quiet'"]),
        ({"KUBERNETES_MEMORY_LIMIT": "x"}, ["KUBERNETES_MEMORY_LIMIT", "'x'"]),
        ({"KUBERNETES_MEMORY_LIMIT": "512Mi"}, ["KUBERNETES_MEMORY_LIMIT", "'512Mi'"]),
        ({"KUBERNETES_MEMORY_LIMIT": "0"}, ["KUBERNETES_MEMORY_LIMIT", "'0'"]),
        ({"KUBERNETES_MEMORY_LIMIT": "-5"}, ["KUBERNETES_MEMORY_LIMIT", "'-5'"]),
        ({"S3_BUCKET": "abc", "GCS_BUCKET": "def"}, ["S3_BUCKET and GCS_BUCKET"]),
        ({"S3_BUCKET": "bkt", "S3_HOST": "ftp://h"}, ["storage", "S3 endpoint"]),
        ({"KIMBALL_STORAGE": "s3://bkt/p", "S3_BUCKET": "abc"}, ["KIMBALL_STORAGE", "S3_BUCKET"]),
        ({"KIMBALL_STORAGE": "ftp://host/x"}, ["storage", "'ftp'", "s3://bucket"]),
        ({"KIMBALL_STORAGE": "file:relative/dir"}, ["storage", "absolute path"]),
        ({"KIMBALL_STORAGE": "s3:///prefix"}, ["storage", "no bucket"]),
        ({"KIMBALL_WAL_FSYNC": "sometimes"}, ["KIMBALL_WAL_FSYNC", "always, interval, never"]),
        ({"KIMBALL_WAL_FSYNC_INTERVAL_MS": "0"}, ["KIMBALL_WAL_FSYNC_INTERVAL_MS"]),
        ({"KIMBALL_WAL_FSYNC_INTERVAL_MS": "1.5"}, ["KIMBALL_WAL_FSYNC_INTERVAL_MS", "'1.5'"]),
        ({"KIMBALL_SNAPSHOT_INTERVAL": "0"}, ["KIMBALL_SNAPSHOT_INTERVAL", "'0'"]),
        ({"KIMBALL_SNAPSHOT_INTERVAL": "soon"}, ["KIMBALL_SNAPSHOT_INTERVAL", "'soon'"]),
        ({"KIMBALL_SNAPSHOTS_KEPT": "0"}, ["KIMBALL_SNAPSHOTS_KEPT", "from 1 to 100", "'0'"]),
        ({"KIMBALL_SNAPSHOTS_KEPT": "101"}, ["KIMBALL_SNAPSHOTS_KEPT", "from 1 to 100"]),
        ({"KIMBALL_SNAPSHOTS_KEPT": "-1"}, ["KIMBALL_SNAPSHOTS_KEPT", "'-1'"]),
        ({"KIMBALL_SNAPSHOTS_KEPT": "two"}, ["KIMBALL_SNAPSHOTS_KEPT", "'two'"]),
        ({"KIMBALL_SNAPSHOTS_KEPT": "1.5"}, ["KIMBALL_SNAPSHOTS_KEPT", "'1.5'"]),
        ({"KIMBALL_WAL_SKIP_DAMAGED": "maybe"}, ["KIMBALL_WAL_SKIP_DAMAGED", "true or false"]),
        ({"KIMBALL_WAL_SKIP_DAMAGED": "2"}, ["KIMBALL_WAL_SKIP_DAMAGED", "'2'"]),
        ({"KIMBALL_EXTERNAL_PREDICTION_DEADLINE_MS": "0"}, ["DEADLINE_MS", "at least 1"]),
        ({"KIMBALL_EXTERNAL_PREDICTION_DEADLINE_MS": "fast"}, ["DEADLINE_MS", "'fast'"]),
        ({"ANALYTICS_HOST": "http://kimball:8080"}, ["ANALYTICS_HOST", "gRPC address", "URL"]),
        ({"ANALYTICS_HOST": "kimball:0"}, ["ANALYTICS_HOST", "'kimball:0'"]),
        ({"ANALYTICS_HOST": "kimball:grpc"}, ["ANALYTICS_HOST", "host:port"]),
        ({"ANALYTICS_HOST": ":50051"}, ["ANALYTICS_HOST", "host:port"]),
        ({"KIMBALL_SPOOL_MAX_EVENTS": "0"}, ["KIMBALL_SPOOL_MAX_EVENTS", "at least 1"]),
        ({"KIMBALL_SPOOL_MAX_EVENTS": "1e6"}, ["KIMBALL_SPOOL_MAX_EVENTS", "'1e6'"]),
        ({"KIMBALL_MAX_NAMESPACES": "0"}, ["KIMBALL_MAX_NAMESPACES", "at least 1", "'0'"]),
        ({"KIMBALL_MAX_EVENT_NAMES": "-3"}, ["KIMBALL_MAX_EVENT_NAMES", "'-3'"]),
        ({"KIMBALL_MAX_COUNTERS": "1e6"}, ["KIMBALL_MAX_COUNTERS", "whole number", "'1e6'"]),
        ({"KIMBALL_MAX_GOALS": "lots"}, ["KIMBALL_MAX_GOALS", "'lots'"]),
        ({"KIMBALL_MAX_FEATURE_SPECS": "10 000"}, ["KIMBALL_MAX_FEATURE_SPECS", "'10 000'"]),
        ({"KIMBALL_HTTP_HEADER_TIMEOUT": "0"}, ["KIMBALL_HTTP_HEADER_TIMEOUT", "'0'"]),
        ({"KIMBALL_HTTP_BODY_TIMEOUT": "-1"}, ["KIMBALL_HTTP_BODY_TIMEOUT", "'-1'"]),
        ({"KIMBALL_HTTP_KEEPALIVE_TIMEOUT": "long"}, ["KIMBALL_HTTP_KEEPALIVE_TIMEOUT", "'long'"]),
        ({"KIMBALL_HTTP_MAX_CONNECTIONS": "0"}, ["KIMBALL_HTTP_MAX_CONNECTIONS", "at least 1"]),
        ({"KIMBALL_HTTP_MAX_CONNECTIONS": "1k"}, ["KIMBALL_HTTP_MAX_CONNECTIONS", "'1k'"]),
        ({"KIMBALL_GRPC_HANDSHAKE_TIMEOUT": "inf"}, ["KIMBALL_GRPC_HANDSHAKE_TIMEOUT", "'inf'"]),
        ({"KIMBALL_GRPC_MAX_CONNECTION_AGE": "9999999"}, ["CONNECTION_AGE", "at most 2147483"]),
        ({"KIMBALL_GRPC_MAX_CONNECTION_AGE_GRACE": "0"}, ["CONNECTION_AGE_GRACE", "'0'"]),
        ({"KIMBALL_GRPC_MIN_PING_INTERVAL": "61"}, ["MIN_PING_INTERVAL", "at most 60", "sidecars"]),
        ({"KIMBALL_GRPC_MAX_PING_STRIKES": "-1"}, ["KIMBALL_GRPC_MAX_PING_STRIKES", "'-1'"]),
        ({"KIMBALL_GRPC_MAX_CONCURRENT_STREAMS": "0"}, ["MAX_CONCURRENT_STREAMS", "at least 1"]),
        ({"KIMBALL_MAX_RESPONSE_BYTES": "64MiB"}, ["KIMBALL_MAX_RESPONSE_BYTES", "'64MiB'"]),
        ({"KIMBALL_MAX_RESPONSE_BYTES": "-1"}, ["KIMBALL_MAX_RESPONSE_BYTES", "'-1'"]),
        ({"KIMBALL_MAX_RESPONSE_BYTES": "4194303"}, ["KIMBALL_MAX_RESPONSE_BYTES", "4194304"]),
        (
            {"KIMBALL_MAX_RESPONSE_BYTES": "2147483648"},
            ["KIMBALL_MAX_RESPONSE_BYTES", "2147483647"],
        ),
        ({"KIMBALL_MAX_STREAMS": "0"}, ["KIMBALL_MAX_STREAMS", "at least 1"]),
        ({"KIMBALL_MAX_STREAMS": "-3"}, ["KIMBALL_MAX_STREAMS", "'-3'"]),
        ({"KIMBALL_MAX_SUBSCRIBERS": "many"}, ["KIMBALL_MAX_SUBSCRIBERS", "'many'"]),
        ({"KIMBALL_MAX_SUBSCRIBERS": "0"}, ["KIMBALL_MAX_SUBSCRIBERS", "at least 1"]),
        ({"KIMBALL_SUBSCRIBER_BUFFER_EVENTS": "0"}, ["BUFFER_EVENTS", "at least 1"]),
        ({"KIMBALL_SUBSCRIBER_BUFFER_EVENTS": "100001"}, ["BUFFER_EVENTS", "at most 100,000"]),
        ({"KIMBALL_REST_WORKERS": "-1"}, ["KIMBALL_REST_WORKERS", "'-1'"]),
        ({"KIMBALL_REST_WORKERS": "two"}, ["KIMBALL_REST_WORKERS", "'two'"]),
        ({"KIMBALL_REST_WORKERS": "65"}, ["KIMBALL_REST_WORKERS", "at most 64"]),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "",
)
def test_bad_environment_value_is_refused_naming_the_variable(env, fragments):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


# --- bad config files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "fragments"),
    [
        ("{colour, blue}", ["setting colour", "unknown setting"]),
        ("{site, 42}", ["setting site", "must be a string"]),
        ("{api_auth, maybe}", ["setting api_auth", "enable or disable"]),
        ("{api_auth_tokens, [<<>>]}", ["setting api_auth_tokens"]),
        ('{api_auth_tokens, <<"T">>}', ["setting api_auth_tokens"]),
        ("{counter_startup_delay, -1}", ["setting counter_startup_delay"]),
        ("{counter_startup_delay, 1.5}", ["setting counter_startup_delay"]),
        ("{counters, [1]}", ["setting counters"]),
        (
            '{counters, #{init => [#{pattern => "(", type => bloom_scalable, size => 1,'
            " error_probability => 0.1}]}}",
            ["setting counters", "counter rule 1", "not a valid regular expression"],
        ),
        (
            '{counters, #{init => [#{pattern => ".*", type => bloom_scalable, size => 1,'
            ' error_probability => 0.1}, #{pattern => ".*", type => bloom_scalable,'
            " size => 0, error_probability => 0.1}]}}",
            ["setting counters", "counter rule 2", "size"],
        ),
        (
            '{counters, #{init => [#{pattern => ".*", type => bloom_scalable, size => 1,'
            " error_probability => 1}]}}",
            ["setting counters", "counter rule 1", "error_probability"],
        ),
        (
            '{counters, #{init => [#{pattern => ".*", type => bloom_scalable, size => 1}]}}',
            ["setting counters", "counter rule 1", "missing key 'error_probability'"],
        ),
        (
            '{external_grpc_event_targets, [{"127.0.0.1", 70000}]}',
            ["setting external_grpc_event_targets", "70000"],
        ),
        (
            '{external_grpc_event_targets, [{"127.0.0.1"}]}',
            ["setting external_grpc_event_targets"],
        ),
        ("{external_grpc_event_targets, x}", ["setting external_grpc_event_targets"]),
        (
            '{external_grpc_prediction_targets, [{"127.0.0.1", 8079}]}',
            ["setting external_grpc_prediction_targets"],
        ),
        ("site", ["{key, value}"]),
    ],
)
def test_bad_setting_in_file_is_refused_naming_file_and_setting(tmp_path, features, fragments):
    path = write(tmp_path, f"[{{features, [{features}]}}].\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message  # "path:line: ..." where known
    for fragment in fragments:
        assert fragment in message, message


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(
        tmp_path,
        '[{features, [\n    {site, "x"}\n    {cluster, "y"}\n]}].\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:"), message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[{features, [{site, "x"}]}]\n', 1),  # missing final dot: after the last token
        ("[{features, [\n\n  {site, Site}\n]}].\n", 3),  # a variable
        ('[{features, [{site, "unterminated}]}].\n', 1),
    ],
)
def test_other_syntax_errors_name_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(info.value).startswith(f"{path}:"), str(info.value)
    assert f":{line}:" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "text",
    ["{features, []}.\n", "[{features, site}].\n"],
)
def test_wrong_file_shape_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"features"):
        load_settings({}, path)


def test_missing_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "no-such.config"
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(path) in str(info.value)
    assert "cannot read config file" in str(info.value)


def test_missing_file_from_environment_is_refused(tmp_path):
    path = tmp_path / "no-such.config"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({"KIMBALL_CONFIG": str(path)})


def test_directory_and_non_utf8_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({}, tmp_path)
    path = tmp_path / "latin1.config"
    path.write_bytes(b'[{features, [{site, "caf\xe9"}]}].\n')
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(path) in str(info.value)


def test_config_errors_name_the_line_of_the_setting_or_rule(tmp_path):
    path = tmp_path / "app.config"
    path.write_text(
        "[{features, [\n"
        '    {site, "x"},\n'
        "    {counters, #{init => [\n"
        '        #{pattern => ".*", type => bloom_scalable, size => 10,\n'
        "          error_probability => 0.01},\n"
        '        #{pattern => ".*", type => bloom_scalable, size => 10,\n'
        "          error_probability => 2}\n"
        "    ]}}\n"
        "]}].\n"
    )
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert str(info.value).startswith(f"{path}:6: setting counters: counter rule 2:")
    path.write_text('[{features, [\n  {site, "x"},\n  {api_auth, maybe}\n]}].\n')
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert str(info.value).startswith(f"{path}:3: setting api_auth:")


# --- the original's own config files, includes, settings of no use here ------------------

ORIGINAL = Path(__file__).resolve().parents[1] / "fixtures" / "original"


def copy_original(tmp_path: Path) -> Path:
    """The original's config files, copied into ``tmp_path`` (paths in them are relative)."""
    shutil.copytree(ORIGINAL, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_the_originals_development_sys_config_and_its_included_file(tmp_path, monkeypatch):
    root = copy_original(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path)  # includes are found next to the file, not in the cwd
    s = load_settings({}, root / "sys.config")
    assert s.api_auth is False  # sys.config
    assert (s.site, s.cluster, s.counter_startup_delay_ms) == ("Site name", "Cluster name", 1)
    assert s.file_store_path == root / "features.json"  # relative to the file
    assert s.storage.uri == (root / "features.json").resolve().as_uri()
    # kernel (an Erlang/OTP application) goes without a word; local_dev is named.
    assert s.config_warnings == (
        "ignoring settings of the original that have no use in Kimball: "
        f"local_dev ({root / 'sys.config'}:12)",
    )


@pytest.mark.parametrize("name", ["config/sys.config", "config/example.config"])
def test_the_originals_release_files_load_without_a_warning(tmp_path, name):
    s = load_settings({}, copy_original(tmp_path) / name)
    assert s.config_warnings == ()
    assert s.storage.uri == (Path("kimball-data") / "objects").resolve().as_uri()


def test_the_originals_default_and_example_configs(tmp_path):
    root = copy_original(tmp_path)
    assert same_settings(
        load_settings({}, root / "config/default.config"),
        replace(Settings(), config_path=root / "config/default.config"),
    )
    rules = load_settings({}, root / "config/example.config").counter_config.rules
    assert [(r.pattern, r.date_cohort) for r in rules] == [
        ("goal", DateCohort.WEEKLY),
        (".*", None),
    ]


def test_a_release_template_is_refused_saying_what_it_is(tmp_path):
    path = copy_original(tmp_path) / "config/sys.config.src"
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(info.value).startswith(f"{path}:3:")
    assert "${LOG_LEVEL} is a variable of a release template" in str(info.value)


def test_an_include_adds_config_unless_named_so_and_reads_in_place(tmp_path):
    """Later entries win, as Erlang merges them: an include overrides what came before it
    and is overridden by what follows; nested includes are read in their turn."""
    top = '[{features, [{site, "a"}, {cluster, "a"}]}, "b", {features, [{cluster, "top"}]}].'
    write(tmp_path, top, "top.config")
    write(tmp_path, '[{features, [{site, "b"}, {cluster, "b"}]}, "sub/c.config"].', "b.config")
    (tmp_path / "sub").mkdir()
    write(tmp_path, '[{features, [{counter_startup_delay, 7}]}, "d"].', "sub/c.config")
    write(tmp_path, "[{features, [{api_auth, disable}]}].", "sub/d.config")  # next to c
    s = load_settings({}, tmp_path / "top.config")
    assert (s.site, s.cluster, s.counter_startup_delay_ms, s.api_auth) == ("b", "top", 7, False)
    assert s.config_warnings == ()


def test_an_absolute_include(tmp_path):
    (tmp_path / "kimball").mkdir()
    write(tmp_path, '[{features, [{site, "abs"}]}].', "kimball/app.config")
    path = write(tmp_path / "kimball", f'[{{kernel, []}}, "{tmp_path}/kimball/app"].', "sys.config")
    assert load_settings({}, path).site == "abs"


def test_a_missing_included_file_is_refused_naming_both_files(tmp_path):
    path = write(tmp_path, '[{features, [{site, "x"}]}, "local"].', "sys.config")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read the config file it includes, ")
    assert str(tmp_path / "local.config") in message


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"sys.config": '["sys"].'}, ["sys.config", "sys.config"]),
        (
            {"a.config": '["b"].', "b.config": '[{kernel, []}, "c"].', "c.config": '["b"].'},
            ["b.config", "c.config", "b.config"],
        ),
    ],
    ids=["itself", "through-another"],
)
def test_an_include_cycle_is_refused_naming_it(tmp_path, files, cycle):
    for name, text in files.items():
        write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_settings({}, tmp_path / next(iter(files)))
    message = str(info.value)
    assert "makes a cycle" in message, message
    assert message.endswith(" -> ".join(str(tmp_path / name) for name in cycle)), message


@pytest.mark.parametrize(
    ("included", "fragments"),
    [
        ("{features, []}.", ["b.config", "expected a list"]),
        ("[{features, [{api_auth, maybe}]}].", ["b.config:1", "setting api_auth"]),
        ("[{features, [", ["b.config:1:", "expected"]),
    ],
)
def test_a_bad_included_file_is_refused_naming_it(tmp_path, included, fragments):
    path = write(tmp_path, '["b"].')
    write(tmp_path, included, "b.config")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("item", ["42", '<<"local">>', "{features}", '{"features", []}', "[]"])
def test_an_entry_neither_a_section_nor_a_file_name_is_refused(tmp_path, item):
    path = write(tmp_path, f"[{{kernel, []}},\n {item}].")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert "expected {application, [...]} or the name of a config file" in str(info.value)


def test_settings_of_the_original_with_no_use_here_give_one_warning(tmp_path):
    path = write(
        tmp_path,
        "[{features, [\n"
        "  {local_dev, true},\n"
        '  {s3_bucket, "b"},\n'
        "  {namespaces, []},\n"
        "  {local_dev, false}\n"
        "]}].",
    )
    s = load_settings({}, path)
    assert s.config_warnings == (
        "ignoring settings of the original that have no use in Kimball: "
        f"local_dev ({path}:2), s3_bucket ({path}:3), namespaces ({path}:4)",
    )
    assert s.storage.uri.startswith("file://")  # s3_bucket is not S3_BUCKET


def test_other_applications_are_named_in_one_warning_and_otp_ones_pass(tmp_path):
    path = write(
        tmp_path,
        "[{kernel, [{logger_level, info}]},\n"
        " {sasl, []}, {stdlib, []},\n"
        " {cowboy, []},\n"
        " {prometheus, [{x, 1}]},\n"
        ' {features, [{site, "s"}]}].',
    )
    s = load_settings({}, path)
    assert s.site == "s"
    assert s.config_warnings == (
        "ignoring the config of applications other than Kimball: "
        f"cowboy ({path}:3), prometheus ({path}:4)",
    )


@pytest.mark.parametrize(
    ("setting", "suggestion"),
    [
        ("api_auth_token", "api_auth_tokens"),
        ("file_store_pth", "file_store_path"),
        ("local_devv", "local_dev"),
        ("external_grpc_event_target", "external_grpc_event_targets"),
        ("counter", "counters"),
    ],
)
def test_a_typo_is_refused_with_the_closest_known_name(tmp_path, setting, suggestion):
    path = write(tmp_path, f'[{{features, [\n  {{site, "s"}},\n  {{{setting}, "x"}}\n]}}].')
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(info.value) == (
        f"{path}:3: setting {setting}: unknown setting; did you mean {suggestion}?"
    )


def test_an_unknown_setting_like_no_known_one_gets_no_suggestion(tmp_path):
    path = write(tmp_path, "[{features, [{favourite_colour, blue}]}].")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(info.value) == f"{path}:1: setting favourite_colour: unknown setting"


def test_file_store_path_is_where_local_snapshots_go_and_later_sources_win(tmp_path):
    path = write(tmp_path, '[{features, [{file_store_path, <<"/srv/kimball">>}]}].')
    s = load_settings({"KIMBALL_DATA_DIR": str(tmp_path / "data")}, path)
    assert s.storage.uri == "file:///srv/kimball"
    assert s.wal_dir == tmp_path / "data" / "wal"  # the log stays in the data directory
    assert load_settings({"S3_BUCKET": "bkt"}, path).storage.uri == "s3://bkt/default"
    assert load_settings({"KIMBALL_STORAGE": "gs://gcs/p"}, path).storage.uri == "gs://gcs/p"
    flag = load_settings({}, path, {"storage_uri": "file:///elsewhere"})
    assert flag.storage.uri == "file:///elsewhere"


def test_file_store_path_naming_a_file_is_of_no_use_and_named_in_the_warning(tmp_path):
    """The original's first versions read feature specs from a JSON file there."""
    (tmp_path / "features.json").write_text("[]")
    path = write(tmp_path, '[{features, [{file_store_path, "features.json"}]}].')
    s = load_settings({"KIMBALL_DATA_DIR": str(tmp_path / "data")}, path)
    assert s.file_store_path is None
    assert s.storage.uri == (tmp_path / "data" / "objects").resolve().as_uri()
    assert s.config_warnings == (
        f"ignoring settings of the original that have no use in Kimball: "
        f"file_store_path ({path}:1)",
    )


@pytest.mark.parametrize("value", ["42", '""', "[]", "<<>>", '"a\\0b"'])
def test_a_bad_file_store_path_is_refused(tmp_path, value):
    path = write(tmp_path, f"[{{features, [{{file_store_path, {value}}}]}}].")
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert str(info.value).startswith(f"{path}:1: setting file_store_path: must be the path")
