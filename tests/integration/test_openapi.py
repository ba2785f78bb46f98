"""The OpenAPI document and its page, served by the REST gateway.

Schemathesis against a live ``kimball serve`` is in system/test_openapi_schemathesis.py.
"""

from __future__ import annotations

import re

import pytest
from support.in_process import local_settings
from support.routes import V0_ROUTES

from kimball_grpc.config.settings import Settings

# Every /v0 route, and the probes.
ROUTES = {(verb.lower(), path) for verb, path in V0_ROUTES} | {("get", "/alive"), ("get", "/ready")}


async def test_document_lists_every_route_with_the_original_parameter_names(http) -> None:
    async with http.get("/api-docs") as response:
        assert response.status == 200
        document = await response.json()
    async with http.get("/api-docs/openapi.json") as response:
        assert await response.json() == document
    assert document["openapi"].startswith("3.")
    assert {(m, p) for p, ops in document["paths"].items() for m in ops} == ROUTES
    predictions = document["paths"]["/v0/predictions"]["get"]["parameters"]
    assert {p["name"] for p in predictions} == {"namespace", "event", "user_id"}
    nudges = document["paths"]["/v0/nudges"]["get"]["parameters"]
    assert {p["name"] for p in nudges if p["required"]} == {"goal", "user_id"}
    features = document["paths"]["/v0/features"]["get"]["parameters"]
    assert {p["name"] for p in features} == {"user_obj", "context_obj"}
    spec = document["paths"]["/v0/featureSpecs/{name}"]["delete"]["parameters"]
    assert [(p["name"], p["in"]) for p in spec] == [("name", "path")]


async def test_the_originals_path_serves_the_same_document(http) -> None:
    """The original served its document at /api-docs/swagger.json: its clients find it there."""
    async with http.get("/api-docs/openapi.json") as response:
        document = await response.json()
    async with http.get("/api-docs/swagger.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == document


class TestWithAuthentication:
    @pytest.fixture
    def settings(self, tmp_path) -> Settings:
        return local_settings(tmp_path, api_auth=True, api_auth_tokens=("s3cret",))

    @pytest.mark.parametrize(
        "path", ["/api-docs", "/api-docs/openapi.json", "/api-docs/swagger.json"]
    )
    async def test_the_document_is_open_at_each_of_its_paths(self, http, path) -> None:
        async with http.get(path) as response:
            assert response.status == 200
            assert (await response.json())["openapi"].startswith("3.")
        async with http.get("/v0/goals") as response:
            assert response.status == 401  # the API itself is not


async def test_the_routes_that_can_answer_429_document_it(http) -> None:
    """Routes that add to the state (growth limits), paged reads (the answer size limit) and
    the event stream (streams open at once)."""
    async with http.get("/api-docs/openapi.json") as response:
        paths = (await response.json())["paths"]
    refusing = {
        (m, p) for p, ops in paths.items() for m, op in ops.items() if "429" in op["responses"]
    }
    assert refusing == {
        ("post", "/v0/analytics"),
        ("post", "/v0/analytics:stream"),
        ("post", "/v0/goals"),
        ("post", "/v0/featureSpecs"),
        ("get", "/v0/analytics"),
        ("get", "/v0/goals"),
        ("get", "/v0/namespaces"),
        ("get", "/v0/featureSpecs"),
        ("get", "/v0/featureSpecs/{name}/history"),
        ("get", "/v0/events:stream"),  # streams and subscribers open at once
    }


async def test_page_is_served_from_the_installed_package(http) -> None:
    async with http.get("/api-docs/index.html") as response:
        assert response.status == 200
        page = await response.text()
    scripts = re.findall(r'src="([^"]+)"', page)
    assert scripts and all(s.startswith("/api-docs/static/") for s in scripts)
    assert "http" not in page  # no CDN
    for script in scripts:
        async with http.get(script) as response:
            assert response.status == 200
            assert len(await response.read()) > 1000
