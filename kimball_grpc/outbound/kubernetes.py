"""A client of the Kubernetes API for the calls Kimball makes: read, create and replace a
ConfigMap (``GET``, ``POST``, ``PUT`` on ``/api/v1/namespaces/{ns}/configmaps``).

Built on ``kubernetes_asyncio`` (the ``kubernetes`` extra), imported only here and
only when a ConfigMap store is configured. Credentials: the kubeconfig file named
by ``KUBECONFIG`` when set, else the pod's service account (its token and CA
certificate at the standard paths, the API server at ``KUBERNETES_SERVICE_HOST``
and ``KUBERNETES_SERVICE_PORT``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kimball_grpc.core.errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT_S = 10.0  # one call; a retry comes later, with backoff


@dataclass(frozen=True)
class KubernetesAccess:
    """Where the API server is and how to prove who we are (from ``Settings``)."""

    kubeconfig: Path | None = None
    service_host: str = ""
    service_port: str = ""
    service_account_dir: Path = field(default=SERVICE_ACCOUNT_DIR)


class KubernetesError(Exception):
    """A call that did not succeed: ``status`` is the HTTP status, 0 when no answer came."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status or 'no answer'}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


class ConfigMapConflict(KubernetesError):
    """409: the ConfigMap changed since it was read (or exists, for a create)."""


class ConfigMapMissing(KubernetesError):
    """404: no such ConfigMap (or namespace)."""


@dataclass
class ConfigMap:
    """A ConfigMap as read: its ``data`` and the version a replace must name; ``raw`` is
    the whole object, so a replace keeps what Kimball does not manage (labels, keys)."""

    namespace: str
    name: str
    data: dict[str, str]
    resource_version: str
    raw: Any


class ConfigMaps:
    """Read, create and replace ConfigMaps through one connection pool."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes_asyncio import client

        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._model = client

    @classmethod
    async def connect(cls, access: KubernetesAccess) -> ConfigMaps:
        """A client for ``access``; ``ConfigError`` when the library is missing or the
        credentials cannot be loaded (reads local files only: no call is made)."""
        try:
            from kubernetes_asyncio import client, config
        except ImportError:
            raise ConfigError(
                "the configmap feature spec store needs the Kubernetes client: "
                "pip install 'kimball[kubernetes]'"
            ) from None
        configuration = client.Configuration()
        try:
            if access.kubeconfig is not None:
                await config.load_kube_config(
                    config_file=str(access.kubeconfig),
                    client_configuration=configuration,
                    persist_config=False,
                )
            elif access.service_host:
                config.load_incluster_config(
                    client_configuration=configuration,
                    token_filename=str(access.service_account_dir / "token"),
                    cert_filename=str(access.service_account_dir / "ca.crt"),
                    environ={
                        "KUBERNETES_SERVICE_HOST": access.service_host,
                        "KUBERNETES_SERVICE_PORT": access.service_port,
                    },
                )
            else:
                raise ConfigError(
                    "the configmap feature spec store needs Kubernetes credentials: run in a "
                    "pod (KUBERNETES_SERVICE_HOST and its service account) or set KUBECONFIG"
                )
            api_client = client.ApiClient(configuration)  # reads the CA certificate
        except (config.ConfigException, OSError, ValueError) as exc:  # unreadable, bad YAML
            where = f"KUBECONFIG {access.kubeconfig}" if access.kubeconfig else "in-cluster"
            raise ConfigError(f"Kubernetes credentials ({where}): {exc}") from None
        return cls(api_client)

    async def close(self) -> None:
        await self._api_client.close()

    async def read(self, namespace: str, name: str) -> ConfigMap | None:
        """The ConfigMap, or None if there is none."""
        try:
            raw = await self._call(self._core.read_namespaced_config_map, name, namespace)
        except ConfigMapMissing:
            return None
        return self._wrap(namespace, name, raw)

    async def create(self, namespace: str, name: str, data: dict[str, str]) -> str:
        """A new ConfigMap, its ``resourceVersion``; ``ConfigMapConflict`` if one of that
        name exists."""
        body = self._model.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=self._model.V1ObjectMeta(name=name, namespace=namespace),
            data=data,
        )
        created = await self._call(self._core.create_namespaced_config_map, namespace, body)
        return created.metadata.resource_version or ""

    async def replace(self, current: ConfigMap, data: dict[str, str]) -> str:
        """``current`` with its data now ``data``, if it is still at the version read; its
        new ``resourceVersion``. ``ConfigMapConflict`` if it changed since,
        ``ConfigMapMissing`` if it is gone."""
        raw = current.raw
        raw.data = data
        raw.metadata.resource_version = current.resource_version
        replaced = await self._call(
            self._core.replace_namespaced_config_map, current.name, current.namespace, raw
        )
        return replaced.metadata.resource_version or ""

    def _wrap(self, namespace: str, name: str, raw: Any) -> ConfigMap:
        return ConfigMap(
            namespace, name, dict(raw.data or {}), raw.metadata.resource_version or "", raw
        )

    async def _call(self, method: Any, *args: Any) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await method(*args, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            status = int(exc.status or 0)
            reason = f"{exc.reason or 'error'}: {_message(exc.body)}".rstrip(": ")
            if status == 409:
                raise ConfigMapConflict(status, reason) from None
            if status == 404:
                raise ConfigMapMissing(status, reason) from None
            raise KubernetesError(status, reason) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubernetesError(0, f"cannot reach the Kubernetes API: {exc!r}") from None


def _message(body: object) -> str:
    """The ``message`` of a Kubernetes ``Status`` answer, else the body's start."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        status = json.loads(text)
    except ValueError:
        return text[:200]
    return str(status.get("message", ""))[:200] if isinstance(status, dict) else text[:200]
