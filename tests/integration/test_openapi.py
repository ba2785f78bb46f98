"""The OpenAPI document and its page, and schemathesis against the live REST API."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kimball_process import read_until_listening, start, stop, token_config

ROUTES = {
    ("post", "/v0/analytics"),
    ("post", "/v0/analytics:stream"),
    ("get", "/v0/analytics"),
    ("post", "/v0/goals"),
    ("get", "/v0/goals"),
    ("get", "/v0/namespaces"),
    ("get", "/v0/predictions"),
    ("get", "/v0/nudges"),
    ("post", "/v0/featureSpecs"),
    ("get", "/v0/featureSpecs"),
    ("get", "/v0/featureSpecs/{name}"),
    ("delete", "/v0/featureSpecs/{name}"),
    ("get", "/v0/features"),
    ("get", "/alive"),
    ("get", "/ready"),
}


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


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(tmp_path: Path) -> None:
    """Bounded: about 750 generated requests over every operation, well under 3 minutes."""
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is installed with the test extras"
    config = token_config(tmp_path, "schemathesis")
    server = start(
        "--grpc-port", "0", "--data-dir", str(tmp_path / "data"), "--config", str(config)
    )
    try:
        port = read_until_listening(server).rest_port
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"http://127.0.0.1:{port}/api-docs/openapi.json",
                "--header",
                "Authorization: Bearer schemathesis",
                "--max-examples",
                "60",
                "--generation-deterministic",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_headers_conformance,response_schema_conformance,ignored_auth,"
                "unsupported_method",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout[-4000:]
    finally:
        stop(server)
