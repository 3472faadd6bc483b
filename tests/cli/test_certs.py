"""Generated TLS material and SuperNode keys are what Flower 1.42 accepts."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedsynth.cli.certs import generate_node_keys, generate_tls
from fedsynth.cli.federation import SiteSpec, write_flower_app


def test_server_cert_is_signed_by_ca_and_covers_loopback(tmp_path) -> None:
    files = generate_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert (files.server_key.stat().st_mode & 0o777) == 0o600


def test_node_keys_are_openssh_nist_ec(tmp_path) -> None:
    keys = generate_node_keys(tmp_path, name="site-a")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp384r1"


def test_flower_app_is_one_small_pyproject(tmp_path) -> None:
    app = write_flower_app(tmp_path / "app", run_config={"num-server-rounds": 2, "output-dir": "/x y",
                                                         "lr": 0.001, "unet-dim-mults": "1,2"})
    import tomllib

    data = tomllib.loads((app / "pyproject.toml").read_text())
    assert data["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedsynth.client.app:app"
    assert data["tool"]["flwr"]["app"]["config"]["output-dir"] == "/x y"
    assert [p.name for p in app.iterdir()] == ["pyproject.toml"]


def test_node_config_string_quotes_paths(tmp_path) -> None:
    spec = SiteSpec("a b", tmp_path / "d.csv", 3.0)
    text = spec.node_config()
    assert 'site-id="a b"' in text and "epsilon-budget=3.0" in text
