"""Kubernetes manifests as `kubectl apply -k` would send them: rendered by the real
`kubectl kustomize`, then checked the way a cluster (or a pod failing to start) would find
their mistakes. Each check returns the problems it found, as lines naming the object."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import yaml

from kimball_grpc.config.settings import load_settings
from kimball_grpc.core.errors import ConfigError

Doc = dict
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def render(directory: Path) -> list[Doc]:
    """The documents ``kubectl kustomize directory`` renders (kubectl must be installed)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: it renders deploy/kubernetes (kubectl kustomize)"
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def named(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    """The document of that kind and name, or None."""
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """Each workload and its pod template (a Pod is its own)."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]
        elif doc["kind"] == "Pod":
            yield doc, doc


def containers(template: Doc) -> list[Doc]:
    """A pod's containers, init (and native sidecar) containers first."""
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def is_kimball(container: Doc) -> bool:
    """A container running Kimball's image (under any registry and tag)."""
    repository = container["image"].rsplit("@", 1)[0]
    repository = re.sub(r":[^/:]+$", "", repository)  # the tag, not a registry's port
    return repository.rsplit("/", 1)[-1] == "kimball"


def schema_problems(docs: list[Doc], version: str) -> list[str]:
    """Each document against Kubernetes ``version``'s OpenAPI schema, strictly: an unknown
    field is an error, as `kubectl apply --validate=strict` makes it."""
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            problems.append(f"{named(doc)}: {where}: {exc.message} (Kubernetes {version})")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{named(doc)}: {exc.message}")
    return problems


def _keys(doc: Doc) -> set[str]:
    return {*doc.get("data", {}), *doc.get("stringData", {}), *doc.get("binaryData", {})}


def _reference(docs: list[Doc], kind: str, name: str, keys: list[str], where: str) -> list[str]:
    if (doc := find(docs, kind, name)) is None:
        return [f"{where}: {kind} {name} is not in the render"]
    return [f"{where}: {kind} {name} has no key {key}" for key in keys if key not in _keys(doc)]


def reference_problems(docs: list[Doc]) -> list[str]:
    """Every ConfigMap and Secret (and key) that env, envFrom and volumes name exists: else
    the pod never starts (CreateContainerConfigError, or a volume that cannot mount)."""
    problems = []
    for workload, template in pod_templates(docs):
        for container in containers(template):
            where = f"{named(workload)} container {container['name']}"
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if (ref := source.get(field)) and not ref.get("optional"):
                        problems += _reference(
                            docs, kind, ref["name"], [ref["key"]], f"{where} env {env['name']}"
                        )
            for env_from in container.get("envFrom", []):
                for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                    if (ref := env_from.get(field)) and not ref.get("optional"):
                        problems += _reference(docs, kind, ref["name"], [], f"{where} envFrom")
        for volume in template["spec"].get("volumes", []):
            where = f"{named(workload)} volume {volume['name']}"
            sources = [volume, *volume.get("projected", {}).get("sources", [])]
            for source in sources:
                if (ref := source.get("secret")) and not ref.get("optional"):
                    name = ref.get("secretName") or ref.get("name")
                    keys = [item["key"] for item in ref.get("items", [])]
                    problems += _reference(docs, "Secret", name, keys, where)
                if (ref := source.get("configMap")) and not ref.get("optional"):
                    keys = [item["key"] for item in ref.get("items", [])]
                    problems += _reference(docs, "ConfigMap", ref["name"], keys, where)
    return problems


def mount_problems(docs: list[Doc]) -> list[str]:
    """Every volumeMount names a volume of its pod or a StatefulSet's volumeClaimTemplate."""
    problems = []
    for workload, template in pod_templates(docs):
        volumes = {volume["name"] for volume in template["spec"].get("volumes", [])}
        claims = workload["spec"].get("volumeClaimTemplates", [])
        volumes |= {claim["metadata"]["name"] for claim in claims}
        for container in containers(template):
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(
                        f"{named(workload)} container {container['name']}: volumeMount "
                        f"{mount['name']} ({mount['mountPath']}) names no volume"
                    )
    return problems


def _has_port(container: Doc, port: int | str) -> bool:
    ports = container.get("ports", [])
    if isinstance(port, str) and not port.isdigit():
        return any(p.get("name") == port for p in ports)
    return any(p["containerPort"] == int(port) for p in ports)


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _selected(docs: list[Doc], selector: dict) -> list[tuple[Doc, Doc]]:
    return [
        (workload, template)
        for workload, template in pod_templates(docs)
        if _selects(selector, template["metadata"].get("labels", {}))
    ]


def port_problems(docs: list[Doc]) -> list[str]:
    """Every probe's port is a port of its container, and every Service targetPort a port of
    each pod the Service selects (a name where the Service names it)."""
    problems = []
    for workload, template in pod_templates(docs):
        for container in containers(template):
            for probe_name in PROBES:
                probe = container.get(probe_name, {})
                for action in ("httpGet", "tcpSocket", "grpc"):
                    if action in probe and not _has_port(container, probe[action]["port"]):
                        problems.append(
                            f"{named(workload)} container {container['name']}: {probe_name} "
                            f"port {probe[action]['port']} is none of its containerPorts"
                        )
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        selector = service["spec"].get("selector", {})
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload, template in _selected(docs, selector):
                if not any(_has_port(c, target) for c in containers(template)):
                    problems.append(
                        f"{named(service)} port {port.get('name', port['port'])}: targetPort "
                        f"{target} is no containerPort of {named(workload)}"
                    )
    return problems


def selector_problems(docs: list[Doc]) -> list[str]:
    """Workload selectors match their own pod labels; every Service and PodDisruptionBudget
    selects some pod of the render; a StatefulSet's serviceName is a headless Service."""
    problems = []
    for workload, template in pod_templates(docs):
        selector = workload["spec"].get("selector", {}).get("matchLabels")
        labels = template["metadata"].get("labels", {})
        if selector is not None and not _selects(selector, labels):
            problems.append(f"{named(workload)}: selector {selector} misses its pods' labels")
        if workload["kind"] == "StatefulSet":
            service = find(docs, "Service", workload["spec"]["serviceName"])
            if service is None or service["spec"].get("clusterIP") != "None":
                problems.append(
                    f"{named(workload)}: serviceName {workload['spec']['serviceName']} is no "
                    f"headless Service of the render"
                )
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"].get("selector", {})
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"].get("matchLabels", {})
        else:
            continue
        if not _selected(docs, selector):
            problems.append(f"{named(doc)}: selector {selector} selects no pod of the render")
    return problems


def _env(container: Doc) -> dict[str, str]:
    return {env["name"]: env["value"] for env in container.get("env", []) if "value" in env}


def relay_target_problems(docs: list[Doc]) -> list[str]:
    """A relay (FEATURES_MODE=sidecar) delivers to ANALYTICS_HOST: a Service of the render
    (in this namespace, or named with it) with that port, in front of an api server."""
    problems = []
    for workload, template in pod_templates(docs):
        for container in containers(template):
            env = _env(container)
            if env.get("FEATURES_MODE") != "sidecar":
                continue
            where = f"{named(workload)} container {container['name']}"
            host, _, port = env.get("ANALYTICS_HOST", "").rpartition(":")
            service = find(docs, "Service", host.split(".")[0])
            if service is None:
                problems.append(f"{where}: ANALYTICS_HOST {host!r} is no Service of the render")
                continue
            if not any(str(p["port"]) == port for p in service["spec"]["ports"]):
                problems.append(f"{where}: Service {host} has no port {port}")
            api_servers = [
                c
                for _, pod in _selected(docs, service["spec"].get("selector", {}))
                for c in containers(pod)
                if is_kimball(c) and _env(c).get("FEATURES_MODE", "api") == "api"
            ]
            if not api_servers:
                problems.append(f"{where}: Service {host} selects no Kimball api server")
    return problems


def _effective(field: str, container: Doc, template: Doc) -> object:
    """A security setting as the container gets it: its own, else its pod's."""
    own = container.get("securityContext", {})
    return own[field] if field in own else template["spec"].get("securityContext", {}).get(field)


def security_problems(docs: list[Doc]) -> list[str]:
    """Kimball's containers run as its image's user (uid 10001), non-root, on a read-only
    root filesystem, without privilege escalation or capabilities, under the runtime's
    default seccomp profile: what the "restricted" Pod Security Standard asks."""
    wanted = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    problems = []
    for workload, template in pod_templates(docs):
        for container in filter(is_kimball, containers(template)):
            where = f"{named(workload)} container {container['name']}"
            for field, value in wanted.items():
                if (actual := _effective(field, container, template)) != value:
                    problems.append(f"{where}: {field} is {actual!r}, not {value!r}")
            capabilities = container.get("securityContext", {}).get("capabilities", {})
            if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
                problems.append(f"{where}: capabilities {capabilities}, not drop: [ALL]")
    return problems


_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(text: str) -> int:
    match = _QUANTITY.match(str(text))
    assert match, f"a resource quantity this check does not read: {text!r}"
    return int(match[1]) * _UNITS[match[2]]


def content(doc: Doc) -> dict[str, bytes]:
    """A ConfigMap's or Secret's content, decoded."""
    decode = base64.b64decode if doc["kind"] == "Secret" else str.encode
    out = {key: decode(value) for key, value in doc.get("data", {}).items()}
    return out | {key: value.encode() for key, value in doc.get("stringData", {}).items()}


def _mounted_files(docs: list[Doc], template: Doc, container: Doc, root: Path) -> dict[str, Path]:
    """Writes the ConfigMaps and Secrets the container mounts under ``root`` as the kubelet
    would under ``/``; returns each mount path and where it went."""
    volumes = {volume["name"]: volume for volume in template["spec"].get("volumes", [])}
    moved = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        for kind, field in (("Secret", "secret"), ("ConfigMap", "configMap")):
            if field not in volume:
                continue
            ref = volume[field]
            source = find(docs, kind, ref.get("secretName") or ref.get("name"))
            data = content(source) if source else {}
            items = ref.get("items") or [{"key": key, "path": key} for key in data]
            target = root / mount["mountPath"].lstrip("/")
            for item in items:
                (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (target / item["path"]).write_bytes(data.get(item["key"], b""))
            moved[mount["mountPath"]] = target
    return moved


def environment(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet resolves it."""
    environ: dict[str, str] = {}
    for env_from in container.get("envFrom", []):
        for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if ref := env_from.get(field):
                source = find(docs, kind, ref["name"])
                data = content(source) if source else {}
                environ |= {key: value.decode() for key, value in data.items()}
    for env in container.get("env", []):
        source = env.get("valueFrom", {})
        if "value" in env:
            # The kubelet expands $(NAME) from the variables declared before this one.
            environ[env["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: environ.get(m[1], m[0]), env["value"]
            )
        elif ref := source.get("secretKeyRef") or source.get("configMapKeyRef"):
            kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
            found = find(docs, kind, ref["name"])
            environ[env["name"]] = content(found).get(ref["key"], b"").decode() if found else ""
        elif ref := source.get("resourceFieldRef"):
            resource, _, bound = ref["resource"].partition(".")
            amount = container.get("resources", {}).get(resource, {}).get(bound)
            if amount is not None:
                environ[env["name"]] = str(_quantity(amount) // _quantity(ref.get("divisor", 1)))
        elif ref := source.get("fieldRef"):
            environ[env["name"]] = POD_FIELDS[ref["fieldPath"]]
    return environ


# The downward API's fields, for the first pod of a workload in namespace "default".
POD_FIELDS = {"metadata.name": "kimball-0", "metadata.namespace": "default"}


def settings_problems(docs: list[Doc], root: Path) -> list[str]:
    """Kimball's own settings accept each Kimball container's environment and the
    app.config it mounts, as ``kimball serve`` reads them at start-up (exit 2 otherwise).
    Mounted files are written under ``root``, and paths into them followed there."""
    problems = []
    for index, (workload, template) in enumerate(pod_templates(docs)):
        for container in filter(is_kimball, containers(template)):
            where = f"{named(workload)} container {container['name']}"
            mounted = _mounted_files(docs, template, container, root / str(index))
            environ = environment(docs, container)
            for name, value in environ.items():
                for mount_path, copy in mounted.items():
                    if value.startswith(mount_path.rstrip("/") + "/"):
                        environ[name] = str(copy / value[len(mount_path.rstrip("/")) + 1 :])
            declared = {env["name"] for env in container.get("env", [])}
            if "KUBERNETES_MEMORY_LIMIT" in declared - environ.keys():
                problems.append(f"{where}: KUBERNETES_MEMORY_LIMIT refers to no memory limit")
            try:
                load_settings(environ)
            except ConfigError as exc:
                problems.append(f"{where}: Kimball refuses its settings: {exc.message}")
    return problems
