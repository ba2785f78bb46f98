"""TLS with real processes and certificates made by the test: `kimball serve` with mutual TLS,
`kimball health` and the client commands with a CA bundle and a client certificate,
`kimball gateway` over TLS on both sides; wrong TLS settings stop the start clearly."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from support.certificates import Certificates, https_context, make_certificates
from support.kimball_process import KIMBALL, read_until_listening, start, start_command, stop

TOKEN = "tls-process-token"


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


def flags(**files: Path) -> list[str]:
    """Options naming files: ``flags(tls_ca_file=path)`` is ``["--tls-ca-file", "path"]``."""
    return [
        part for name, path in files.items() for part in (f"--{name.replace('_', '-')}", str(path))
    ]


def server_flags(certs: Certificates) -> list[str]:
    return flags(
        tls_cert_file=certs.server.cert,
        tls_key_file=certs.server.key,
        tls_client_ca_file=certs.ca.cert,
    )


def client_flags(certs: Certificates) -> list[str]:
    return flags(
        tls_ca_file=certs.ca.cert,
        tls_client_cert_file=certs.client.cert,
        tls_client_key_file=certs.client.key,
    )


def kimball(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KIMBALL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_health_and_client_commands_over_mutual_tls(tmp_path, certs) -> None:
    process = start("--grpc-port", "0", *server_flags(certs), env={"KIMBALL_API_TOKENS": TOKEN})
    try:
        listening = read_until_listening(process)
        assert any("(TLS, client certificates required)" in line for line in listening.lines)
        target = f"localhost:{listening.grpc_port}"
        healthy = kimball("health", "--target", target, *client_flags(certs))
        assert (healthy.returncode, healthy.stdout.strip()) == (0, "SERVING"), healthy.stderr
        for refused in (
            kimball("health", "--target", target, "--timeout", "2"),  # plain text
            kimball("health", "--target", target, "--timeout", "2", *client_flags(certs)[:2]),
        ):
            assert refused.returncode == 1 and "not healthy: UNAVAILABLE" in refused.stderr
        # The client commands take the same options from the environment.
        env = {
            "KIMBALL_TARGET": target,
            "KIMBALL_TOKEN": TOKEN,
            "KIMBALL_TLS_CA_FILE": str(certs.ca.cert),
            "KIMBALL_TLS_CLIENT_CERT_FILE": str(certs.client.cert),
            "KIMBALL_TLS_CLIENT_KEY_FILE": str(certs.client.key),
        }
        tracked = kimball("track", "signup", "u1", env=env)
        assert tracked.returncode == 0, tracked.stderr
        # Without the TLS options, the error says what to check.
        hints = {
            "plain text": (
                {
                    "KIMBALL_TLS_CA_FILE": "",
                    "KIMBALL_TLS_CLIENT_CERT_FILE": "",
                    "KIMBALL_TLS_CLIENT_KEY_FILE": "",
                },
                "if the server uses TLS, give --tls-ca-file",
            ),
            "no client certificate": (
                {"KIMBALL_TLS_CLIENT_CERT_FILE": "", "KIMBALL_TLS_CLIENT_KEY_FILE": ""},
                "if the server asks for a client certificate, give --tls-client-cert-file",
            ),
            "another CA": (
                {"KIMBALL_TLS_CA_FILE": str(certs.other_ca.cert)},
                "the TLS handshake failed: check that --tls-ca-file holds the CA",
            ),
        }
        for case, (changes, hint) in hints.items():
            failed = kimball("goals", env={**env, **changes})
            assert failed.returncode == 1, case
            assert f"cannot reach Kimball at {target} (UNAVAILABLE); {hint}" in failed.stderr, (
                case,
                failed.stderr,
            )
        answer = kimball("analytics", "--json", env=env)
        counts = {c["name"]: c["count"] for c in json.loads(answer.stdout)["counts"]}
        assert counts["signup"] == 1  # a number, as JSON has them
        # REST over TLS with a client certificate: /ready and a route.
        context = https_context(certs.ca, certs.client)
        base = f"https://localhost:{listening.rest_port}"
        with urllib.request.urlopen(f"{base}/ready", context=context, timeout=10) as ready:
            assert ready.status == 200
        request = urllib.request.Request(
            f"{base}/v0/analytics", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert {c["name"] for c in json.load(response)["counts"]} >= {"signup"}
    finally:
        assert stop(process) == 0


def test_the_gateway_serves_and_calls_over_tls(tmp_path, certs) -> None:
    server = start("--grpc-port", "0", *server_flags(certs), env={"KIMBALL_API_TOKENS": TOKEN})
    gateway = None
    try:
        grpc_port = read_until_listening(server).grpc_port
        gateway = start_command(
            "gateway",
            "--grpc-target",
            f"localhost:{grpc_port}",
            "--api-port",
            "0",
            *flags(tls_cert_file=certs.server.cert, tls_key_file=certs.server.key),
            *client_flags(certs),
        )
        rest_port = read_until_listening(gateway).rest_port
        request = urllib.request.Request(
            f"https://127.0.0.1:{rest_port}/v0/goals", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, context=https_context(certs.ca), timeout=10) as ok:
            assert json.load(ok) == {"goals": []}
    finally:
        stop(gateway)
        stop(server)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (
            ["--tls-cert-file", "{server.cert}"],
            "--tls-cert-file (KIMBALL_TLS_CERT_FILE) is set "
            "but --tls-key-file (KIMBALL_TLS_KEY_FILE) is not",
        ),
        (
            ["--tls-cert-file", "{server.cert}", "--tls-key-file", "{client.key}"],
            "is not the key of the certificate in --tls-cert-file",
        ),
        (
            [
                "--tls-cert-file",
                "{server.cert}",
                "--tls-key-file",
                "{server.key}",
                "--tls-client-ca-file",
                "missing-ca.crt",
            ],
            "--tls-client-ca-file (KIMBALL_TLS_CLIENT_CA_FILE) missing-ca.crt: cannot read it",
        ),
        (["--tls-client-ca-file", "{ca.cert}"], "mutual TLS runs over TLS"),
        (["--tls-ca-file", "{server.key}"], "--tls-ca-file (KIMBALL_TLS_CA_FILE)"),
    ],
    ids=["cert-alone", "wrong-key", "missing-ca", "client-ca-alone", "key-as-ca"],
)
@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_wrong_tls_settings_stop_the_start(tmp_path, certs, command, flags, fragment) -> None:
    values = {"server": certs.server, "client": certs.client, "ca": certs.ca}
    given = [flag.format(**values) for flag in flags]
    extra = ["--grpc-target", "127.0.0.1:1"] if command == "gateway" else []
    # In tmp_path: relative paths are the test's, and nothing lands in the checkout.
    result = kimball(command, *extra, *given, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "PRIVATE KEY" not in result.stderr


def test_a_client_command_with_a_wrong_ca_file_says_so(tmp_path, certs) -> None:
    result = kimball("goals", "--tls-ca-file", str(tmp_path / "absent.crt"))
    assert result.returncode == 2
    assert "kimball: --tls-ca-file (KIMBALL_TLS_CA_FILE)" in result.stderr
    assert "absent.crt: cannot read it" in result.stderr
    result = kimball("health", "--tls-client-cert-file", str(certs.client.cert))
    assert result.returncode == 2 and "is set but --tls-client-key-file" in result.stderr
