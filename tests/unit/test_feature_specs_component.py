"""The kustomize component for the configmap feature spec store: valid YAML, and RBAC
that allows exactly what the store does, on the ConfigMaps it names by default."""

from __future__ import annotations

from pathlib import Path

import yaml

from kimball_grpc.config.settings import DEFAULT_SPEC_CONFIGMAP, DEFAULT_SPEC_CONFIGMAP_COPY

COMPONENT = Path(__file__).parents[2] / "deploy/kubernetes/components/feature-specs-configmap"
# The store reads (GET), creates (POST) and replaces (PUT) ConfigMaps: get, create, update.
NEEDED = {"get", "create", "update"}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((COMPONENT / name).read_text()) if d is not None]


def allowed(role: dict) -> dict[str, set[str]]:
    """verb -> the ConfigMap names it is allowed on ("*" for any)."""
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""] and rule["resources"] == ["configmaps"]
        for verb in rule["verbs"]:
            out.setdefault(verb, set()).update(rule.get("resourceNames", ["*"]))
    return out


def test_the_component_lists_its_resources_which_parse():
    (kustomization,) = documents("kustomization.yaml")
    assert kustomization["kind"] == "Component"
    kinds = {}
    for name in kustomization["resources"]:
        for document in documents(name):
            kinds[document["kind"]] = document
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    assert kinds["ServiceAccount"]["metadata"]["name"] == "kimball"
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kimball"}]
    patch = yaml.safe_load(kustomization["patches"][0]["patch"])
    pod = patch["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kimball"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["KIMBALL_FEATURE_SPEC_STORE"]["value"] == "configmap"


def test_the_home_role_allows_what_the_store_does_on_its_configmaps_only():
    (role,) = documents("role.yaml")
    verbs = allowed(role)
    assert set(verbs) >= NEEDED
    for verb in ("get", "update"):
        assert verbs[verb] == {DEFAULT_SPEC_CONFIGMAP, DEFAULT_SPEC_CONFIGMAP_COPY}
    assert verbs["create"] == {"*"}  # Kubernetes cannot limit create by name
    assert not {"delete", "list", "watch"} & set(verbs)


def test_the_example_for_an_additional_namespace_allows_the_copy():
    role, binding = documents("additional-namespace.example.yaml")
    verbs = allowed(role)
    assert set(verbs) >= NEEDED
    assert verbs["get"] == verbs["update"] == {DEFAULT_SPEC_CONFIGMAP_COPY}
    assert binding["subjects"][0]["namespace"] == "KIMBALL_NAMESPACE"
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
