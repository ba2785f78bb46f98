"""The configmap feature spec store's settings: the original's names by default, every
name Kubernetes would refuse refused at start, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.settings_cases import assert_refused, env_id

from kimball_grpc.cli.main import main
from kimball_grpc.config import settings as settings_module
from kimball_grpc.config.settings import FeatureSpecStore, Mode, load_settings


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.config")


def test_defaults_are_the_originals():
    s = load_settings({})
    assert s.feature_spec_store is FeatureSpecStore.LOG
    assert s.feature_spec_configmap == "features-state-store"
    assert s.feature_spec_configmap_namespace == "getkimball"
    assert s.feature_spec_configmap_copy == "getkimball-features"
    assert s.feature_spec_file == Path("/features/data")
    assert s.feature_spec_refresh_s == 15.0
    assert (s.kubeconfig, s.kubernetes_service_host) == (None, "")


def test_the_configmap_namespace_is_namespaces_unless_set():
    assert load_settings({"NAMESPACE": "prod"}).feature_spec_configmap_namespace == "prod"
    env = {"NAMESPACE": "prod", "KIMBALL_FEATURE_SPEC_CONFIGMAP_NAMESPACE": "specs"}
    assert load_settings(env).feature_spec_configmap_namespace == "specs"


def test_settings_from_the_environment_and_flags():
    env = {
        "KIMBALL_FEATURE_SPEC_STORE": "ConfigMap",
        "KIMBALL_FEATURE_SPEC_CONFIGMAP": "kimball.specs",
        "KIMBALL_FEATURE_SPEC_CONFIGMAP_COPY": "specs-copy",
        "KIMBALL_FEATURE_SPEC_FILE": "/mnt/specs/data",
        "KIMBALL_FEATURE_SPEC_REFRESH": "2.5",
        "ADDITIONAL_NAMESPACES": "team-a, team-b,",
        "KUBECONFIG": "/home/me/.kube/config:/home/me/.kube/other",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
    }
    s = load_settings(env)
    assert s.feature_spec_store is FeatureSpecStore.CONFIGMAP
    assert (s.feature_spec_configmap, s.feature_spec_configmap_copy) == (
        "kimball.specs",
        "specs-copy",
    )
    assert (s.feature_spec_file, s.feature_spec_refresh_s) == (Path("/mnt/specs/data"), 2.5)
    assert s.additional_namespaces == ("team-a", "team-b")
    assert s.kubeconfig == Path("/home/me/.kube/config")
    assert (s.kubernetes_service_host, s.kubernetes_service_port) == ("10.0.0.1", "6443")
    flags = {"feature_spec_store": FeatureSpecStore.LOG, "feature_spec_configmap": "other"}
    s = load_settings(env, overrides=flags)
    assert (s.feature_spec_store, s.feature_spec_configmap) == (FeatureSpecStore.LOG, "other")


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        (
            {"KIMBALL_FEATURE_SPEC_STORE": "etcd"},
            ["KIMBALL_FEATURE_SPEC_STORE", "log or configmap"],
        ),
        (
            {"KIMBALL_FEATURE_SPEC_CONFIGMAP": "Specs"},
            ["KIMBALL_FEATURE_SPEC_CONFIGMAP", "'Specs'"],
        ),
        ({"KIMBALL_FEATURE_SPEC_CONFIGMAP": "a..b"}, ["KIMBALL_FEATURE_SPEC_CONFIGMAP", "'a..b'"]),
        ({"KIMBALL_FEATURE_SPEC_CONFIGMAP": "x" * 254}, ["KIMBALL_FEATURE_SPEC_CONFIGMAP"]),
        ({"KIMBALL_FEATURE_SPEC_CONFIGMAP_COPY": "-x"}, ["KIMBALL_FEATURE_SPEC_CONFIGMAP_COPY"]),
        (
            {"KIMBALL_FEATURE_SPEC_CONFIGMAP_NAMESPACE": "a.b"},
            ["KIMBALL_FEATURE_SPEC_CONFIGMAP_NAMESPACE", "namespace name", "'a.b'"],
        ),
        ({"KIMBALL_FEATURE_SPEC_REFRESH": "0"}, ["KIMBALL_FEATURE_SPEC_REFRESH", "'0'"]),
        (
            {"KIMBALL_FEATURE_SPEC_STORE": "configmap", "ADDITIONAL_NAMESPACES": "ok,Not_OK"},
            ["ADDITIONAL_NAMESPACES", "'Not_OK'"],
        ),
        (
            {"KIMBALL_FEATURE_SPEC_STORE": "configmap", "NAMESPACE": "x" * 64},
            ["NAMESPACE", "at most 63"],
        ),
    ],
    ids=env_id,
)
def test_bad_values_are_refused_naming_the_setting(env, fragments):
    assert_refused(env, fragments)


def test_namespaces_are_checked_only_where_they_are_written_to():
    env = {"ADDITIONAL_NAMESPACES": "Not_OK", "NAMESPACE": "Whatever"}
    assert load_settings(env).additional_namespaces == ("Not_OK",)  # not used: log store
    env |= {"KIMBALL_FEATURE_SPEC_STORE": "configmap", "FEATURES_MODE": "sidecar"}
    assert load_settings(env).mode is Mode.SIDECAR  # a sidecar reads its file only


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--feature-spec-store", "etcd"], "--feature-spec-store must be log or configmap"),
        (["--feature-spec-configmap", "UPPER"], "--feature-spec-configmap must be"),
        (["--feature-spec-configmap-namespace", "a_b"], "--feature-spec-configmap-namespace"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(flags, fragment, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", *flags])
    assert exited.value.code == 2
    assert fragment in capsys.readouterr().err
