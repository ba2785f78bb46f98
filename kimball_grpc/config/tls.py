"""TLS files: a server's certificate and key (and the CA its clients must be signed by, for
mutual TLS), a client's CA bundle (and its own certificate and key); read and checked once,
at start-up, so that a wrong file stops the start with an error naming its setting.

The errors name the setting and the path as given, nothing more (no resolved path, no
file content).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from kimball_grpc.config.files import read_limited
from kimball_grpc.core.errors import ConfigError

# Each file's setting as an operator gives it: the option, then the environment variable.
CERT_FILE = "--tls-cert-file (KIMBALL_TLS_CERT_FILE)"
KEY_FILE = "--tls-key-file (KIMBALL_TLS_KEY_FILE)"
CLIENT_CA_FILE = "--tls-client-ca-file (KIMBALL_TLS_CLIENT_CA_FILE)"
CA_FILE = "--tls-ca-file (KIMBALL_TLS_CA_FILE)"
CLIENT_CERT_FILE = "--tls-client-cert-file (KIMBALL_TLS_CLIENT_CERT_FILE)"
CLIENT_KEY_FILE = "--tls-client-key-file (KIMBALL_TLS_CLIENT_KEY_FILE)"

MAX_PEM_BYTES = 1024 * 1024  # far more than any certificate chain or key


@dataclass(frozen=True)
class ServerTls:
    """What a server serves TLS with: its certificate chain and key (PEM), the CA bundle a
    client's certificate must be signed by (``None``: clients need none), and the REST
    server's ``ssl.SSLContext`` built from them (TLS 1.2 at least)."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None
    context: ssl.SSLContext = field(compare=False)


@dataclass(frozen=True)
class ClientTls:
    """What a client connects over TLS with: the CA bundle the server's certificate must be
    signed by, and its own certificate chain and key when the server asks for one."""

    ca: bytes
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)


def load_server_tls(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
) -> ServerTls | None:
    """The server's TLS from its files (``None`` without a certificate: plain text), or
    ``ConfigError`` naming the setting whose file is missing, unreadable, not PEM, or a key
    that is not the certificate's."""
    _pair(cert_file, CERT_FILE, key_file, KEY_FILE)
    if client_ca_file is not None and cert_file is None:
        raise ConfigError(
            f"{CLIENT_CA_FILE} needs {CERT_FILE} and {KEY_FILE}: mutual TLS runs over TLS"
        )
    if cert_file is None or key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # the REST server speaks HTTP/1.1
    chain, key = _load_pair(context, cert_file, CERT_FILE, key_file, KEY_FILE)
    client_ca = None
    if client_ca_file is not None:
        client_ca = _read(client_ca_file, CLIENT_CA_FILE)
        _trust(context, client_ca, client_ca_file, CLIENT_CA_FILE)
        context.verify_mode = ssl.CERT_REQUIRED
    return ServerTls(chain, key, client_ca, context)


def load_client_tls(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ClientTls | None:
    """A client's TLS from its files (``None`` without a CA bundle: plain text), or
    ``ConfigError`` naming the setting whose file is wrong."""
    _pair(cert_file, CLIENT_CERT_FILE, key_file, CLIENT_KEY_FILE)
    if ca_file is None:
        if cert_file is not None:
            raise ConfigError(
                f"{CLIENT_CERT_FILE} needs {CA_FILE}: the CA bundle the server's certificate "
                f"is checked against"
            )
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca = _read(ca_file, CA_FILE)
    _trust(context, ca, ca_file, CA_FILE)
    if cert_file is None or key_file is None:
        return ClientTls(ca)
    chain, key = _load_pair(context, cert_file, CLIENT_CERT_FILE, key_file, CLIENT_KEY_FILE)
    return ClientTls(ca, chain, key)


def _pair(cert_file: Path | None, cert_name: str, key_file: Path | None, key_name: str) -> None:
    if (cert_file is None) != (key_file is None):
        given, missing = (cert_name, key_name) if key_file is None else (key_name, cert_name)
        raise ConfigError(f"{given} is set but {missing} is not: give both, or neither")


def _read(path: Path, setting: str) -> bytes:
    data = read_limited(path, setting, MAX_PEM_BYTES)
    if not data.strip():
        raise ConfigError(f"{setting} {path}: the file is empty")
    return data


def _certificates(data: bytes, path: Path, setting: str) -> None:
    """``ConfigError`` unless ``data`` holds PEM certificates (and only readable ones)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError):
        raise ConfigError(
            f"{setting} {path}: not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None


def _trust(context: ssl.SSLContext, data: bytes, path: Path, setting: str) -> None:
    _certificates(data, path, setting)
    context.load_verify_locations(cadata=data.decode("ascii"))


def _load_pair(
    context: ssl.SSLContext, cert_file: Path, cert_name: str, key_file: Path, key_name: str
) -> tuple[bytes, bytes]:
    """The certificate chain and key, checked to be PEM and to belong together, loaded into
    ``context``."""
    chain = _read(cert_file, cert_name)
    _certificates(chain, cert_file, cert_name)
    key = _read(key_file, key_name)
    if b"ENCRYPTED" in key:
        raise ConfigError(
            f"{key_name} {key_file}: the key is encrypted: give it unencrypted, in a file "
            f"only the server's user can read"
        )
    try:
        # The files again, as read above (ssl takes a certificate chain from files only).
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{key_name} {key_file} is not the key of the certificate in "
                f"{cert_name} {cert_file}"
            ) from None
        raise ConfigError(f"{key_name} {key_file}: not a PEM private key") from None
    except OSError as exc:
        raise ConfigError(f"{cert_name}, {key_name}: cannot read them: {exc.strerror}") from None
    return chain, key


def _no_password() -> bytes:
    # Never prompt on a terminal for a key's passphrase: an encrypted key is refused.
    raise ConfigError("encrypted keys are not supported")
