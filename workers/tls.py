"""TLS material for workers: server contexts, and certificates made for trying level 5.

Real deployments bring their own CA and certificates. ``make_worker_pki`` makes a
throw-away CA and one server certificate for the given loopback addresses, so
that level 5 (``wss://`` + certificate verification) can be exercised on one
machine exactly as it runs across hosts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "WorkerPKI",
    "certificate_der",
    "is_loopback_host",
    "make_worker_pki",
    "server_ssl_context",
]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and 127.0.0.0/8 / ::1: where plain ws:// and no token are allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_ssl_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context presenting ``certfile``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    return context


@dataclass(frozen=True)
class WorkerPKI:
    """Paths of a CA certificate and a server certificate/key signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def certificate_der(certfile: str | Path) -> bytes:
    """The first certificate of a PEM file, DER-encoded (what a TLS peer sees)."""
    text = Path(certfile).read_text()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[: text.index(end) + len(end)])


def make_worker_pki(folder: str | Path, hosts: list[str], *, days: int = 30) -> WorkerPKI:
    """A CA and a server certificate valid for ``hosts`` (IP addresses or DNS names)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim test CA"))
        .issuer_name(_name("fedsim test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim worker"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pki = WorkerPKI(out / "ca.pem", out / "worker.pem", out / "worker-key.pem")
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pki.server_key)
    return pki
