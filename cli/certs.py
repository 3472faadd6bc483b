"""Self-signed TLS material and SuperNode authentication keys, made with ``cryptography`` (no openssl).

Flower 1.42 needs, for a TLS SuperLink (``flower-superlink --ssl-ca-certfile --ssl-certfile --ssl-keyfile``):
a CA certificate, and a server certificate signed by it whose SubjectAltNames cover the address the
SuperNodes, the ``flwr`` CLI and the SuperLink's own SuperExec dial (``127.0.0.1`` / ``localhost`` on
loopback). SuperNodes and the CLI trust the CA (``--root-certificates`` / ``root-certificates``).

SuperNode authentication (``flower-superlink --enable-supernode-auth``) uses one elliptic-curve key pair
per SuperNode on a NIST curve, both in OpenSSH format: the SuperNode holds the private key
(``flower-supernode --auth-supernode-private-key``), and the operator registers the public key with
``flwr supernode register <key.pub> <connection>`` before the SuperNode connects.

These helpers are for tests and loopback demos; real sites should use certificates from their PKI
(see ``deploy/``).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "NodeKeyPair", "generate_tls", "generate_node_keys"]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a generated CA and SuperLink server certificate (all PEM).

    Args:
        ca_cert: CA certificate; give it to SuperNodes (``--root-certificates``) and the ``flwr`` CLI.
        server_cert: SuperLink certificate (``--ssl-certfile``).
        server_key: SuperLink private key (``--ssl-keyfile``); keep it private.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyPair:
    """Paths of one SuperNode's authentication key pair (OpenSSH format, ECDSA P-384).

    Args:
        private_key: give to ``flower-supernode --auth-supernode-private-key``.
        public_key: register with ``flwr supernode register``.
    """

    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate_tls(
    out_dir: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"),
    valid_days: int = 30,
) -> TlsFiles:
    """Create a CA and a SuperLink certificate for ``hosts`` under ``out_dir``.

    Args:
        out_dir: folder for ``ca.crt``, ``server.pem`` and ``server.key``.
        hosts: IP addresses and DNS names the SuperLink is reached at (SubjectAltNames).
        valid_days: validity of both certificates.

    Returns:
        The written file paths.
    """
    out = Path(out_dir)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedsynth test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "fedsynth-superlink"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    return TlsFiles(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem)),
        server_cert=_write(out / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(
            out / "server.key",
            server_key.private_bytes(
                pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            ),
            private=True,
        ),
    )


def generate_node_keys(out_dir: str | os.PathLike[str], *, name: str) -> NodeKeyPair:
    """Create one SuperNode authentication key pair ``<name>`` / ``<name>.pub`` under ``out_dir``.

    Args:
        out_dir: destination folder.
        name: file stem, e.g. the site id.

    Returns:
        The written key paths.
    """
    out = Path(out_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return NodeKeyPair(
        private_key=_write(out / name, private, private=True),
        public_key=_write(out / f"{name}.pub", public + f" {name}\n".encode()),
    )
