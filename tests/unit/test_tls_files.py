"""TLS files read and checked at start-up: a wrong combination or a wrong file stops the
start with an error naming the setting and the path as given, never a file's content."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support.certificates import Certificates, make_certificates

from kimball_grpc.config.settings import load_settings
from kimball_grpc.config.tls import load_client_tls, load_server_tls
from kimball_grpc.core.errors import ConfigError


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def test_a_certificate_and_its_key_make_a_tls_server_of_tls_1_2_at_least(certs):
    tls = load_server_tls(certs.server.cert, certs.server.key, None)
    assert tls is not None
    assert tls.certificate_chain == certs.server.cert.read_bytes()
    assert tls.private_key == certs.server.key.read_bytes()
    assert tls.client_ca is None
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert tls.context.verify_mode is ssl.CERT_NONE
    assert "PRIVATE KEY" not in repr(tls)


def test_a_client_ca_asks_every_client_for_a_certificate(certs):
    tls = load_server_tls(certs.server.cert, certs.server.key, certs.ca.cert)
    assert tls is not None and tls.client_ca == certs.ca.cert.read_bytes()
    assert tls.context.verify_mode is ssl.CERT_REQUIRED


def test_no_files_is_plain_text():
    assert load_server_tls(None, None, None) is None
    assert load_client_tls(None, None, None) is None


def test_the_environment_and_flags_give_the_files(certs):
    settings = load_settings(
        {
            "KIMBALL_TLS_CERT_FILE": str(certs.server.cert),
            "KIMBALL_TLS_KEY_FILE": str(certs.server.key),
            "KIMBALL_TLS_CA_FILE": str(certs.ca.cert),
            "KIMBALL_TLS_CLIENT_CERT_FILE": str(certs.client.cert),
            "KIMBALL_TLS_CLIENT_KEY_FILE": str(certs.client.key),
        },
        overrides={"tls_client_ca_file": certs.ca.cert},
    )
    assert settings.server_tls is not None and settings.server_tls.client_ca is not None
    assert settings.client_tls is not None
    assert settings.client_tls.ca == certs.ca.cert.read_bytes()
    assert settings.client_tls.certificate_chain == certs.client.cert.read_bytes()


@pytest.mark.parametrize(
    ("given", "fragments"),
    [
        (
            {"KIMBALL_TLS_CERT_FILE": "server"},
            ["--tls-cert-file (KIMBALL_TLS_CERT_FILE) is set but --tls-key-file", "both"],
        ),
        (
            {"KIMBALL_TLS_KEY_FILE": "server"},
            ["--tls-key-file (KIMBALL_TLS_KEY_FILE) is set but --tls-cert-file", "both"],
        ),
        (
            {"KIMBALL_TLS_CLIENT_CA_FILE": "ca"},
            ["--tls-client-ca-file (KIMBALL_TLS_CLIENT_CA_FILE) needs --tls-cert-file"],
        ),
        (
            {"KIMBALL_TLS_CLIENT_CERT_FILE": "client", "KIMBALL_TLS_CLIENT_KEY_FILE": "client"},
            ["--tls-client-cert-file (KIMBALL_TLS_CLIENT_CERT_FILE) needs --tls-ca-file"],
        ),
        (
            {"KIMBALL_TLS_CA_FILE": "ca", "KIMBALL_TLS_CLIENT_CERT_FILE": "client"},
            [
                "--tls-client-cert-file (KIMBALL_TLS_CLIENT_CERT_FILE) is set but "
                "--tls-client-key-file"
            ],
        ),
    ],
)
def test_files_that_go_together_are_refused_alone(certs, given, fragments):
    files = {"server": certs.server.cert, "ca": certs.ca.cert, "client": certs.client.cert}
    environ = {name: str(files[value]) for name, value in given.items()}
    with pytest.raises(ConfigError) as refused:
        load_settings(environ)
    for fragment in fragments:
        assert fragment in refused.value.message


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def test_a_missing_or_empty_file_is_refused_naming_its_setting(certs, tmp_path):
    missing = Path("secrets/tls.crt")  # relative, as an operator may give it
    with pytest.raises(ConfigError) as refused:
        load_server_tls(missing, certs.server.key, None)
    assert refused.value.message == (
        "--tls-cert-file (KIMBALL_TLS_CERT_FILE) secrets/tls.crt: cannot read it: "
        "No such file or directory"
    )
    empty = _write(tmp_path, "empty.key", b"\n")
    with pytest.raises(ConfigError, match=r"--tls-key-file .*empty.key: the file is empty"):
        load_server_tls(certs.server.cert, empty, None)
    with pytest.raises(ConfigError, match=r"--tls-client-ca-file .*: cannot read it: Is a dir"):
        load_server_tls(certs.server.cert, certs.server.key, tmp_path)
    with pytest.raises(ConfigError, match=r"--tls-ca-file .*absent.crt: cannot read it"):
        load_client_tls(tmp_path / "absent.crt", None, None)


def test_files_that_are_not_what_they_should_be_are_refused(certs, tmp_path):
    junk = _write(tmp_path, "junk.pem", b"hello\n")
    key_text = certs.server.key.read_bytes()
    cases = [
        ((certs.server.key, certs.server.key, None), "--tls-cert-file", "not a PEM certificate"),
        ((junk, certs.server.key, None), "--tls-cert-file", "not a PEM certificate"),
        ((certs.server.cert, junk, None), "--tls-key-file", "not a PEM private key"),
        ((certs.server.cert, certs.server.cert, None), "--tls-key-file", "not a PEM private key"),
        (
            (certs.server.cert, certs.server.key, certs.server.key),
            "--tls-client-ca-file",
            "not a PEM certificate",
        ),
        (
            (certs.server.cert, certs.client.key, None),
            "--tls-key-file",
            "is not the key of the certificate in --tls-cert-file",
        ),
    ]
    for files, setting, problem in cases:
        with pytest.raises(ConfigError) as refused:
            load_server_tls(*files)
        message = refused.value.message
        assert message.startswith(setting) and problem in message, message
        assert "PRIVATE KEY" not in message and key_text.decode() not in message


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(certs, tmp_path):
    key = serialization.load_pem_private_key(certs.server.key.read_bytes(), None)
    encrypted = _write(
        tmp_path,
        "encrypted.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    )
    with pytest.raises(ConfigError, match=r"--tls-key-file .*: the key is encrypted"):
        load_server_tls(certs.server.cert, encrypted, None)


def test_a_client_certificate_must_match_its_key(certs):
    with pytest.raises(ConfigError) as refused:
        load_client_tls(certs.ca.cert, certs.client.cert, certs.server.key)
    assert refused.value.message.startswith("--tls-client-key-file (KIMBALL_TLS_CLIENT_KEY_FILE) ")
    assert "is not the key of the certificate in --tls-client-cert-file" in refused.value.message
    with pytest.raises(ConfigError, match=r"--tls-ca-file .*: not a PEM certificate"):
        load_client_tls(certs.client.key, None, None)
