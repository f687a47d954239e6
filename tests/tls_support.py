"""Certificates made by the tests (a CA, a server certificate for 127.0.0.1, client certificates with the SANs a
test asks for, signed by the CA or by themselves) and bcrypt hashes, written to a temporary directory."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.registry import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exporter.server import HttpServer
from exporter.webconfig import WebConfig, build_ssl_context


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def san(value: str) -> x509.GeneralName:
    """A SAN of the kind its text looks like: a URI (scheme://), an e-mail (@), an IP, else a DNS name."""
    if "://" in value:
        return x509.UniformResourceIdentifier(value)
    if "@" in value:
        return x509.RFC822Name(value)
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
          ca: bool, usage: x509.ObjectIdentifier | None, sans: Sequence[str] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    elif sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([san(s) for s in sans]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, prefix: str = "") -> Pki:
    """A CA and a server and a client certificate it signed, as PEM files in `directory`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("test CA", ca_key, _name("test CA"), ca_key, True, None)
    pki = Pki(*(directory / f"{prefix}{n}" for n in ("ca.crt", "server.crt", "server.key", "client.crt",
                                                        "client.key", "ca.key")))
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, pki.ca_key)
    for cert_path, key_path, common, usage in (
            (pki.server_cert, pki.server_key, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH),
            (pki.client_cert, pki.client_key, "prometheus", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(common, key, ca_cert.subject, ca_key, False, usage)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    return pki


def client_cert(pki: Pki, directory: Path, name: str, sans: Sequence[str],
                self_signed: bool = False) -> tuple[Path, Path]:
    """A client certificate (and its key) with these SANs, signed by the CA of `pki` or by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    if self_signed:
        issuer, issuer_key = _name(name), key
    else:
        ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        loaded = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        issuer, issuer_key = ca.subject, loaded
    cert = _cert(name, key, issuer, issuer_key, False, ExtendedKeyUsageOID.CLIENT_AUTH, sans)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    """Low cost by default: tests check behaviour, not bcrypt's slowness."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def server_with_push_route(web: WebConfig) -> HttpServer:
    """An HttpServer under this web config, always healthy, with a stand-in write endpoint (POST
    /api/v1/runs answers "pushed"): what the web config tests serve."""

    async def push(request: Request) -> Response:
        return Response("pushed")

    return HttpServer(CollectorRegistry(), lambda: (True, "ok"), lambda: (True, "ok"),
                      routes=[Route("/api/v1/runs", push, methods=["POST"])],
                      ssl_context=build_ssl_context(web), web_config=web)
