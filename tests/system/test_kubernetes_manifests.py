"""deploy/kubernetes as an operator applies it (`kubectl apply -k <dir>`): each kustomization
renders with the real `kubectl kustomize`, every document is valid Kubernetes, everything it
refers to is there, and Kimball accepts the settings it is given. Each check also has a case
where it must find a mistake, so none passes by finding nothing."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import yaml
from support import kubernetes as k8s

from kimball_grpc.api.grpc_front import SHUTDOWN_GRACE_SECONDS
from kimball_grpc.api.open_calls import STREAM_END_SECONDS
from kimball_grpc.app import FORWARD_DRAIN_SECONDS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# Every kustomization an operator may apply (components are applied through them).
DIRECTORIES = sorted(
    str(path.parent.relative_to(DEPLOY))
    for path in DEPLOY.rglob("kustomization.yaml")
    if yaml.safe_load(path.read_text())["kind"] == "Kustomization"
)
# 1.33: the oldest the manifests are written for (native sidecar containers are GA there);
# 1.37: the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33", "1.37")
CROSS_CHECKS = (
    k8s.reference_problems,
    k8s.mount_problems,
    k8s.port_problems,
    k8s.selector_problems,
    k8s.relay_target_problems,
    k8s.security_problems,
)


@functools.cache
def _rendered(directory: str) -> tuple[dict, ...]:
    return tuple(k8s.render(DEPLOY / directory))


def rendered(directory: str) -> list[dict]:
    """A fresh copy of the render, free to change."""
    return copy.deepcopy(list(_rendered(directory)))


def kimball_containers(docs: list[dict]) -> list[tuple[dict, dict, dict]]:
    """(workload, pod template, container) of every Kimball container of a render."""
    return [
        (workload, template, container)
        for workload, template in k8s.pod_templates(docs)
        for container in k8s.containers(template)
        if k8s.is_kimball(container)
    ]


def container_of(docs: list[dict], kind: str, name: str) -> dict:
    workload = k8s.find(docs, kind, name)
    assert workload is not None
    return next(c for c in k8s.containers(workload["spec"]["template"]) if k8s.is_kimball(c))


def test_the_overlays_and_examples_are_all_rendered() -> None:
    for directory in (
        "base",
        "overlays/single",
        "overlays/object-storage",
        "overlays/sidecar",
        "overlays/feature-specs-configmap",
        "overlays/cluster",
    ):
        assert directory in DIRECTORIES
    assert "examples/app-with-relay" in DIRECTORIES


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_document_is_valid_kubernetes(directory: str, version: str) -> None:
    assert k8s.schema_problems(rendered(directory), version) == []


@pytest.mark.parametrize("check", CROSS_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("directory", DIRECTORIES)
def test_everything_referred_to_is_in_the_render(directory: str, check) -> None:
    assert check(rendered(directory)) == []


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_kimball_accepts_the_settings_each_container_gets(directory: str, tmp_path: Path) -> None:
    docs = rendered(directory)
    assert kimball_containers(docs)
    assert k8s.settings_problems(docs, tmp_path) == []


def test_the_api_server_keeps_its_state_on_its_volume_and_gets_time_to_stop() -> None:
    docs = rendered("overlays/single")
    server = k8s.find(docs, "StatefulSet", "kimball")
    container = container_of(docs, "StatefulSet", "kimball")
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = [claim["metadata"]["name"] for claim in server["spec"]["volumeClaimTemplates"]]
    assert mounts[env["KIMBALL_DATA_DIR"]] in claims
    assert server["spec"]["replicas"] == 1  # the state is the process's
    # In-flight calls, streams' statuses and event targets' drain, then a last snapshot.
    stopping = SHUTDOWN_GRACE_SECONDS + STREAM_END_SECONDS + FORWARD_DRAIN_SECONDS
    assert server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 3 * stopping


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_probes_never_restart_a_server_that_is_restoring(directory: str) -> None:
    # /alive answers during a restore, /ready and gRPC health do not: only readiness may
    # wait for them, or a long restore is killed and started over.
    for _, _, container in kimball_containers(rendered(directory)):
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/alive", (directory, probe)
        grpc_port = next(p for p in container["ports"] if p["containerPort"] == 50051)
        assert container["readinessProbe"]["grpc"]["port"] == grpc_port["containerPort"]


def test_tokens_come_from_a_secret_file_that_accepts_no_token_of_this_repository() -> None:
    docs = rendered("overlays/sidecar")
    for workload, template, container in kimball_containers(docs):
        env = {e["name"]: e.get("value") for e in container["env"]}
        path = Path(env["KIMBALL_API_TOKENS_FILE"])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
        secret = k8s.find(docs, "Secret", volume["secret"]["secretName"])
        assert secret is not None, k8s.named(workload)
        lines = k8s.content(secret)[path.name].decode().splitlines()
        assert all(not line.strip() or line.startswith("#") for line in lines), lines


def test_every_service_port_declares_its_protocol() -> None:
    for directory in DIRECTORIES:
        for service in (d for d in rendered(directory) if d["kind"] == "Service"):
            protocols = {p["name"]: p.get("appProtocol") for p in service["spec"]["ports"]}
            assert protocols == {"http": "http", "grpc": "kubernetes.io/h2c"}, service


def test_object_storage_takes_its_location_and_credentials_from_a_secret() -> None:
    docs = rendered("overlays/object-storage")
    container = container_of(docs, "StatefulSet", "kimball")
    secret = k8s.find(docs, "Secret", container["envFrom"][0]["secretRef"]["name"])
    assert secret is not None
    keys = k8s.content(secret).keys()
    assert {"KIMBALL_STORAGE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys


# Each check finds the mistake it is there for, in an otherwise good render.


def test_schema_check_finds_an_unknown_field_and_a_wrong_type() -> None:
    docs = rendered("overlays/single")
    container = container_of(docs, "StatefulSet", "kimball")
    container["readinessProbe"]["grpc"]["portt"] = 50051
    assert any("'portt' was unexpected" in p for p in k8s.schema_problems(docs, "1.37"))
    docs = rendered("overlays/single")
    container_of(docs, "StatefulSet", "kimball")["ports"][0]["containerPort"] = "8080"
    assert any("containerPort" in p for p in k8s.schema_problems(docs, "1.37"))


def test_reference_check_finds_a_missing_secret_key_and_config_map() -> None:
    docs = rendered("overlays/sidecar")
    relay = container_of(docs, "DaemonSet", "kimball-relay")
    token = next(e for e in relay["env"] if e["name"] == "ANALYTICS_TOKEN")
    token["valueFrom"]["secretKeyRef"]["name"] = "kimball-relay-tokens"
    assert k8s.reference_problems(docs) == [
        "DaemonSet/kimball-relay container relay env ANALYTICS_TOKEN: Secret "
        "kimball-relay-tokens is not in the render"
    ]
    token["valueFrom"]["secretKeyRef"] = {"name": "kimball-relay", "key": "token"}
    assert k8s.reference_problems(docs) == [
        "DaemonSet/kimball-relay container relay env ANALYTICS_TOKEN: Secret kimball-relay "
        "has no key token"
    ]
    docs = rendered("overlays/single")
    volumes = k8s.find(docs, "StatefulSet", "kimball")["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "config")["configMap"]["name"] = "kimball-config"
    assert k8s.reference_problems(docs) == [
        "StatefulSet/kimball volume config: ConfigMap kimball-config is not in the render"
    ]
    docs = rendered("overlays/object-storage")
    container_of(docs, "StatefulSet", "kimball")["envFrom"][0]["secretRef"]["name"] = "storage"
    assert k8s.reference_problems(docs) == [
        "StatefulSet/kimball container kimball envFrom: Secret storage is not in the render"
    ]


def test_mount_check_finds_a_mount_of_no_volume() -> None:
    docs = rendered("overlays/single")
    container = container_of(docs, "StatefulSet", "kimball")
    next(m for m in container["volumeMounts"] if m["name"] == "data")["name"] = "state"
    assert k8s.mount_problems(docs) == [
        "StatefulSet/kimball container kimball: volumeMount state (/var/lib/kimball/data) "
        "names no volume"
    ]


def test_port_check_finds_a_probe_and_a_service_on_no_container_port() -> None:
    docs = rendered("overlays/single")
    container_of(docs, "StatefulSet", "kimball")["readinessProbe"]["grpc"]["port"] = 50052
    assert k8s.port_problems(docs) == [
        "StatefulSet/kimball container kimball: readinessProbe port 50052 is none of its "
        "containerPorts"
    ]
    docs = rendered("overlays/single")
    k8s.find(docs, "Service", "kimball")["spec"]["ports"][0]["targetPort"] = "rest"
    assert k8s.port_problems(docs) == [
        "Service/kimball port http: targetPort rest is no containerPort of StatefulSet/kimball"
    ]


def test_selector_check_finds_selectors_that_select_nothing() -> None:
    docs = rendered("overlays/sidecar")
    selector = k8s.find(docs, "Service", "kimball-relay")["spec"]["selector"]
    selector["app.kubernetes.io/component"] = "sidecar"
    budget = k8s.find(docs, "PodDisruptionBudget", "kimball")["spec"]["selector"]
    budget["matchLabels"]["app.kubernetes.io/name"] = "kimbal"
    relays = k8s.find(docs, "DaemonSet", "kimball-relay")["spec"]
    relays["selector"]["matchLabels"]["app.kubernetes.io/component"] = "api"
    k8s.find(docs, "StatefulSet", "kimball")["spec"]["serviceName"] = "kimball"
    assert k8s.selector_problems(docs) == [
        "StatefulSet/kimball: serviceName kimball is no headless Service of the render",
        "DaemonSet/kimball-relay: selector {'app.kubernetes.io/component': 'api', "
        "'app.kubernetes.io/name': 'kimball'} misses its pods' labels",
        "Service/kimball-relay: selector {'app.kubernetes.io/component': 'sidecar', "
        "'app.kubernetes.io/name': 'kimball'} selects no pod of the render",
        "PodDisruptionBudget/kimball: selector {'app.kubernetes.io/component': 'api', "
        "'app.kubernetes.io/name': 'kimbal'} selects no pod of the render",
    ]


def test_relay_target_check_finds_a_relay_pointed_at_no_api_server() -> None:
    docs = rendered("overlays/sidecar")
    relay = container_of(docs, "DaemonSet", "kimball-relay")
    host = next(e for e in relay["env"] if e["name"] == "ANALYTICS_HOST")
    host["value"] = "kimball-api:50051"
    assert k8s.relay_target_problems(docs) == [
        "DaemonSet/kimball-relay container relay: ANALYTICS_HOST 'kimball-api' is no Service "
        "of the render"
    ]
    host["value"] = "kimball.default.svc:8081"
    assert k8s.relay_target_problems(docs) == [
        "DaemonSet/kimball-relay container relay: Service kimball.default.svc has no port 8081"
    ]
    host["value"] = "kimball-relay:50051"  # the relays themselves
    assert k8s.relay_target_problems(docs) == [
        "DaemonSet/kimball-relay container relay: Service kimball-relay selects no Kimball "
        "api server"
    ]


def test_security_check_finds_a_writable_root_and_a_kept_capability() -> None:
    docs = rendered("examples/app-with-relay")
    relay = container_of(docs, "Deployment", "example-app")
    relay["securityContext"]["readOnlyRootFilesystem"] = False
    relay["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert k8s.security_problems(docs) == [
        "Deployment/example-app container kimball-relay: readOnlyRootFilesystem is False, not True",
        "Deployment/example-app container kimball-relay: capabilities {'drop': ['ALL'], "
        "'add': ['NET_BIND_SERVICE']}, not drop: [ALL]",
    ]


def test_settings_check_finds_what_kimball_would_refuse_at_start_up(tmp_path: Path) -> None:
    docs = rendered("overlays/single")
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    config["data"]["app.config"] = config["data"]["app.config"].replace(
        "{api_auth, enable}", "{api_auth, true}"
    )
    [problem] = k8s.settings_problems(docs, tmp_path / "config")
    assert "setting api_auth: must be enable or disable" in problem
    docs = rendered("overlays/object-storage")
    ref = container_of(docs, "StatefulSet", "kimball")["envFrom"][0]["secretRef"]
    storage = k8s.find(docs, "Secret", ref["name"])
    storage.setdefault("stringData", {})["S3_BUCKET"] = "another-bucket"
    [problem] = k8s.settings_problems(docs, tmp_path / "storage")
    assert "set only one of KIMBALL_STORAGE (--storage) and S3_BUCKET" in problem
    docs = rendered("overlays/single")
    del container_of(docs, "StatefulSet", "kimball")["resources"]["limits"]["memory"]
    assert k8s.settings_problems(docs, tmp_path / "memory") == [
        "StatefulSet/kimball container kimball: KUBERNETES_MEMORY_LIMIT refers to no memory limit"
    ]


def test_an_operators_own_kustomization_replaces_image_and_tokens(tmp_path: Path) -> None:
    # The way docs/operations.md tells operators to deploy: their own kustomization on top
    # of an overlay, with their image and their tokens file, in their namespace.
    own = tmp_path / "kimball-prod"
    own.mkdir()
    (own / "api-tokens").write_text("3f6c0e1d9a8b7c6d5e4f3a2b1c0d9e8f\n")
    overlay = Path(os.path.relpath(DEPLOY / "overlays" / "sidecar", own))
    (own / "kustomization.yaml").write_text(
        OWN_KUSTOMIZATION.replace("../kimball/deploy/kubernetes/overlays/sidecar", str(overlay))
    )
    docs = k8s.render(own)
    for _, _, container in kimball_containers(docs):
        assert container["image"] == "registry.example/kimball:0.1.0"
    secret = k8s.find(docs, "Secret", "kimball-secrets")
    assert secret is not None and secret["metadata"]["namespace"] == "analytics"
    assert k8s.content(secret)["api-tokens"] == b"3f6c0e1d9a8b7c6d5e4f3a2b1c0d9e8f\n"
    problems = [problem for check in CROSS_CHECKS for problem in check(docs)]
    assert problems + k8s.settings_problems(docs, tmp_path / "files") == []


# As docs/operations.md ("Kubernetes") shows it.
OWN_KUSTOMIZATION = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: analytics
resources:
  - ../kimball/deploy/kubernetes/overlays/sidecar
images:
  - name: kimball
    newName: registry.example/kimball
    newTag: "0.1.0"
secretGenerator:
  - name: kimball-secrets
    behavior: replace
    files:
      - api-tokens
    options:
      disableNameSuffixHash: true
"""


def test_the_cluster_replicas_find_nats_each_other_and_one_shared_store() -> None:
    docs = rendered("overlays/cluster")
    server = k8s.find(docs, "StatefulSet", "kimball")
    container = container_of(docs, "StatefulSet", "kimball")
    env = k8s.environment(docs, container)
    assert server["spec"]["replicas"] == 3
    assert env["KIMBALL_NATS_URL"] == "nats://nats:4222"  # the NATS chart's Service "nats"
    assert "KIMBALL_REPLICA_ID" not in env  # the host name: the pod's, stable over restarts
    # The pod's own name under the StatefulSet's headless Service, on the gRPC port.
    headless = k8s.find(docs, "Service", server["spec"]["serviceName"])
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    grpc_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    address = f"kimball-0.{server['spec']['serviceName']}.default.svc:{grpc_port}"
    assert env["KIMBALL_ADVERTISE_ADDRESS"] == address
    # A partition's new owner loads the snapshots its last owner stored: not a pod's volume.
    assert env["KIMBALL_STORAGE"].startswith(("s3://", "gs://"))
