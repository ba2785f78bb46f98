"""A small Kubernetes API server on loopback with exactly the ConfigMap endpoints Kimball
calls. No real API server can run on these machines; this is the one stand-in the
project allows, and it keeps to the API's documented behaviour for these calls:

- ``GET /api/v1/namespaces/{ns}/configmaps/{name}``: 200 with the object, 404 ``Status``;
- ``POST /api/v1/namespaces/{ns}/configmaps``: 201, or 409 ``AlreadyExists``;
- ``PUT /api/v1/namespaces/{ns}/configmaps/{name}``: 200; 409 ``Conflict`` when the body
  names a ``resourceVersion`` that is not the current one; 404 when there is none.

Every object gets a new ``resourceVersion`` (one counter for the whole server, as etcd's
revision) on each write. A bearer token, when set, is required (401 otherwise). Tests
can change a ConfigMap behind Kimball's back (``touch``), make the next writes conflict
(``conflicts``), and see each request (``requests``).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

PREFIX = "/api/v1/namespaces/{namespace}/configmaps"


@dataclass
class KubernetesApi:
    """The server's state: ConfigMaps by (namespace, name), and what it was asked."""

    token: str = "test-token"
    configmaps: dict[tuple[str, str], dict] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    conflicts: int = 0  # the next this many PUTs answer 409 (someone else wrote first)
    revision: int = 100
    port: int = 0

    def data(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.configmaps.get((namespace, name))
        return None if found is None else dict(found.get("data") or {})

    def put(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Create or change a ConfigMap as someone else would (a new version)."""
        current = self.configmaps.get((namespace, name))
        body = current or {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
        body["data"] = dict(data)
        self._store(namespace, name, body)

    def touch(self, namespace: str, name: str) -> None:
        """Someone else wrote it: a new ``resourceVersion``, the same data."""
        self._store(namespace, name, self.configmaps[(namespace, name)])

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file for this server, with its token."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
            f"clusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{self.port}\n"
            "users:\n- name: test\n  user:\n"
            f"    token: {self.token}\n"
            "contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n"
        )
        return path

    def _store(self, namespace: str, name: str, body: dict) -> dict:
        self.revision += 1
        body = copy.deepcopy(body)
        metadata = body.setdefault("metadata", {})
        metadata.update(name=name, namespace=namespace, resourceVersion=str(self.revision))
        self.configmaps[(namespace, name)] = body
        return body

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._check_token])
        app.router.add_get(PREFIX + "/{name}", self._get)
        app.router.add_post(PREFIX, self._post)
        app.router.add_put(PREFIX + "/{name}", self._put)
        return app

    @web.middleware
    async def _check_token(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _get(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        found = self.configmaps.get((namespace, name))
        if found is None:
            return _status(404, "NotFound", f'configmaps "{name}" not found')
        return web.json_response(found)

    async def _post(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        body = await request.json()
        name = body["metadata"]["name"]
        if (namespace, name) in self.configmaps:
            return _status(409, "AlreadyExists", f'configmaps "{name}" already exists')
        return web.json_response(self._store(namespace, name, body), status=201)

    async def _put(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await request.json()
        current = self.configmaps.get((namespace, name))
        if current is None:
            return _status(404, "NotFound", f'configmaps "{name}" not found')
        named = body.get("metadata", {}).get("resourceVersion")
        if self.conflicts > 0 or (named and named != current["metadata"]["resourceVersion"]):
            self.conflicts = max(0, self.conflicts - 1)
            self.touch(namespace, name)  # the other writer's change
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on configmaps "{name}": the object has been '
                f"modified; please apply your changes to the latest version and try again",
            )
        return web.json_response(self._store(namespace, name, body))


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )


@asynccontextmanager
async def kubernetes_api(
    api: KubernetesApi | None = None, port: int = 0
) -> AsyncIterator[KubernetesApi]:
    """The server (``api``'s state, or a new one) on a loopback port (``port``, else
    ``api``'s, else a free one) until the block ends."""
    api = api or KubernetesApi()
    port = port or api.port
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    api.port = runner.addresses[0][1]
    try:
        yield api
    finally:
        await runner.cleanup()
