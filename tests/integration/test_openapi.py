"""The OpenAPI document and its page, served by the REST gateway.

Schemathesis against a live ``kimball serve`` is in system/test_openapi_schemathesis.py.
"""

from __future__ import annotations

import re

from support.routes import V0_ROUTES

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


async def test_the_routes_that_can_answer_429_document_it(http) -> None:
    """Routes that add to the state (growth limits) and paged reads (the answer size limit)."""
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
