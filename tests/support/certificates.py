"""Certificates made at test time: a CA of the test's own, a server certificate for the
loopback names (127.0.0.1, ::1, localhost), client certificates; written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kimball_grpc.config.tls import ClientTls, ServerTls, load_client_tls, load_server_tls

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its certificate (PEM file) and what it signs with."""

    name: str
    cert: Path
    _certificate: x509.Certificate
    _key: ec.EllipticCurvePrivateKey

    def issue(self, directory: Path, name: str, *, server: bool = True) -> KeyPair:
        """A certificate signed by this CA, for the loopback names (a server's) or for a
        client called ``name``, written to ``directory/name.crt`` and ``name.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(name, key, issuer=self._certificate.subject)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if server:
            alternative_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
            alternative_names += [
                x509.IPAddress(ipaddress.ip_address(a)) for a in LOOPBACK_NAMES[1:]
            ]
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative_names), critical=False
            )
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return KeyPair(
            _write(directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM)),
            _write(directory / f"{name}.key", _key_pem(key)),
        )


def authority(directory: Path, name: str = "test-ca") -> Authority:
    """A new CA, its certificate written to ``directory/name.crt``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        _builder(name, key, issuer=subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = _write(directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(name, path, certificate, key)


@dataclass(frozen=True)
class Certificates:
    """What a TLS test needs: a CA, a server certificate it signed, a client certificate
    it signed, and a second CA that signed neither."""

    ca: Authority
    server: KeyPair
    client: KeyPair
    other_ca: Authority


def make_certificates(directory: Path) -> Certificates:
    """A CA, its server and client certificates, and another CA, under ``directory``."""
    ca = authority(directory, "test-ca")
    return Certificates(
        ca=ca,
        server=ca.issue(directory, "server"),
        client=ca.issue(directory, "client", server=False),
        other_ca=authority(directory, "other-ca"),
    )


def _builder(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def server_tls(certificates: Certificates, *, mutual: bool = False) -> ServerTls:
    """A server's TLS with the test server certificate; ``mutual``: clients must present a
    certificate of the test CA."""
    tls = load_server_tls(
        certificates.server.cert,
        certificates.server.key,
        certificates.ca.cert if mutual else None,
    )
    assert tls is not None
    return tls


def client_tls(ca: Authority, pair: KeyPair | None = None) -> ClientTls:
    """A client's TLS trusting ``ca``, presenting ``pair`` if given."""
    tls = load_client_tls(ca.cert, pair.cert if pair else None, pair.key if pair else None)
    assert tls is not None
    return tls


def https_context(ca: Authority, pair: KeyPair | None = None) -> ssl.SSLContext:
    """An HTTPS client's context trusting ``ca``, presenting ``pair`` if given."""
    context = ssl.create_default_context(cafile=ca.cert)
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    return context
