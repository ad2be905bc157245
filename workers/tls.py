"""TLS material for workers: server contexts, and certificates made for trying level 5.

Real deployments bring their own CA and certificates. ``make_worker_pki`` makes a
throw-away CA and one server certificate for the given loopback addresses, so
that level 5 (``wss://`` + certificate verification) can be exercised on one
machine exactly as it runs across hosts.

Mutual TLS (optional, ``fedsim worker serve --tls-client-ca``): the worker
then completes a handshake only with a peer presenting a certificate from
that CA, the coordinator's. The coordinator's secret (``workers.auth``) still
has to be proven on top: a stolen token file alone no longer opens a worker,
and neither does a stolen client key alone. ``make_worker_pki`` signs the
coordinator's certificate with a CA of its own, so a worker's server
certificate, which every worker's operator holds, is no client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
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


def server_ssl_context(
    certfile: str | Path, keyfile: str | Path, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context presenting ``certfile``; with ``client_ca``, one that
    requires a client certificate signed by that CA (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context


@dataclass(frozen=True)
class WorkerPKI:
    """Paths of a CA certificate and a server certificate/key signed by it, and of the
    coordinator's client certificate/key, signed by a CA of their own."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_ca_cert: Path
    client_cert: Path
    client_key: Path


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


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    days: int,
    *,
    usage: x509.ObjectIdentifier | None = None,
    names: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """A CA certificate (``issuer`` None: self-signed) or a leaf for ``usage``."""
    now = dt.datetime.now(dt.UTC)
    issuer_name, signer = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(list(names)), critical=False
            )
    return builder.sign(signer, hashes.SHA256())


def _write_certificate(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_worker_pki(folder: str | Path, hosts: list[str], *, days: int = 30) -> WorkerPKI:
    """A CA and a server certificate valid for ``hosts`` (IP addresses or DNS names),
    and a second CA with the coordinator's client certificate."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    pki = WorkerPKI(
        out / "ca.pem",
        out / "worker.pem",
        out / "worker-key.pem",
        out / "coordinator-ca.pem",
        out / "coordinator.pem",
        out / "coordinator-key.pem",
    )
    ca_key, client_ca_key, server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    ca = _certificate("fedsim test CA", ca_key, None, days)
    client_ca = _certificate("fedsim coordinator CA", client_ca_key, None, days)
    server = _certificate(
        "fedsim worker",
        server_key,
        (ca.subject, ca_key),
        days,
        usage=x509.ExtendedKeyUsageOID.SERVER_AUTH,
        names=names,
    )
    client = _certificate(
        "fedsim coordinator",
        client_key,
        (client_ca.subject, client_ca_key),
        days,
        usage=x509.ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    for cert, path in ((ca, pki.ca_cert), (server, pki.server_cert)):
        _write_certificate(cert, path)
    for cert, path in ((client_ca, pki.client_ca_cert), (client, pki.client_cert)):
        _write_certificate(cert, path)
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki
