"""Schemathesis against the live REST API of ``kimball serve`` as a real process: every
operation of its OpenAPI document, with generated requests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.kimball_process import read_until_listening, start, stop, token_config


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
                # An event stream answers for as long as its client reads: its generated
                # requests would never end. tests/integration/test_event_stream.py covers it.
                "--exclude-path",
                "/v0/events:stream",
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
            cwd=tmp_path,  # its example database and reports stay with this run
        )
        assert result.returncode == 0, result.stdout[-4000:]
    finally:
        stop(server)
