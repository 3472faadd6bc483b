"""deploy/make-certs.sh: the files it makes are what Flower 1.42 and the download service load."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "make-certs.sh"
BIN = Path(sys.executable).parent
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "-o", str(out), *args], capture_output=True, text=True, timeout=120)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    out = tmp_path_factory.mktemp("certs") / "certs"
    res = _run(out, "-H", "superlink.example.org", "-H", "10.0.0.5", "-S", "downloads.example.org", "site-a", "site-b")
    assert res.returncode == 0, res.stderr
    return out


@needs_openssl
def test_ca_and_server_certificates(certs: Path) -> None:
    ca = _cert(certs / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for sub, names, ips in (
        ("superlink", {"superlink.example.org", "localhost"}, {"10.0.0.5", "127.0.0.1", "::1"}),
        ("serve", {"downloads.example.org", "localhost"}, {"127.0.0.1", "::1"}),
    ):
        cert = _cert(certs / sub / "server.pem")
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == names
        assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {str(ipaddress.ip_address(i)) for i in ips}
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku
        assert cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=360)
        key = serialization.load_pem_private_key((certs / sub / "server.key").read_bytes(), password=None)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()
        assert (certs / sub / "server.key").stat().st_mode & 0o077 == 0
        assert (certs / sub / "ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()


@needs_openssl
def test_supernode_keys_load_as_flower_loads_them(certs: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    for site in ("site-a", "site-b"):
        d = certs / "sites" / site
        assert (d / "auth-key").stat().st_mode & 0o077 == 0
        assert (d / "auth-key").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert (d / "auth-key.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        private, public = _try_setup_client_authentication(
            argparse.Namespace(auth_supernode_private_key=str(d / "auth-key"), auth_supernode_public_key=None)
        )
        assert isinstance(private.curve, ec.SECP384R1)
        registered = serialization.load_ssh_public_key((d / "auth-key.pub").read_bytes())
        assert registered.public_numbers() == public.public_numbers()
        assert try_load_public_key(d / "auth-key.pub")  # what `flwr supernode register` sends
        assert (d / "ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()


@needs_openssl
def test_rerun_keeps_existing_material_and_adds_sites(certs: Path) -> None:
    before = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()}
    res = _run(certs, "-H", "superlink.example.org", "site-c")
    assert res.returncode == 0, res.stderr
    assert all(p.read_bytes() == b for p, b in before.items())
    assert (certs / "sites" / "site-c" / "auth-key.pub").exists()
    _cert(certs / "superlink" / "server.pem").verify_directly_issued_by(_cert(certs / "ca.crt"))


def test_keys_only_at_a_site_needs_no_ca(tmp_path: Path) -> None:
    res = _run(tmp_path / "site", "--keys-only", "site-x")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "site").rglob("*") if p.is_file()) == ["auth-key", "auth-key.pub"]


@pytest.mark.parametrize("args", [[], ["-H", "x", "bad/site"], ["--keys-only"], ["--nope"]])
def test_bad_arguments_fail_with_a_message(tmp_path: Path, args: list[str]) -> None:
    res = _run(tmp_path / "c", *args)
    assert res.returncode != 0
    assert "make-certs.sh" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
@needs_openssl
def test_runbook_superlink_tls_auth_register_and_connect(
    tmp_path: Path, stop_process_group: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    """README sections 1-4 on loopback: TLS SuperLink with node auth, register a key, the site agent comes online."""
    certs = tmp_path / "certs"
    assert _run(certs, "-H", "127.0.0.1", "site-a").returncode == 0
    port = _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    homes = {n: tmp_path / n for n in ("link", "node", "cli")}
    for h in homes.values():
        h.mkdir()
    (homes["cli"] / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsynth"\n\n[superlink.fedsynth]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    link_log, node_log = tmp_path / "superlink.log", tmp_path / "supernode.log"
    link = subprocess.Popen(
        ["flower-superlink", "--host", "127.0.0.1", "--port", str(port),
         "--ssl-ca-certfile", str(certs / "superlink" / "ca.crt"), "--ssl-certfile", str(certs / "superlink" / "server.pem"),
         "--ssl-keyfile", str(certs / "superlink" / "server.key"), "--enable-supernode-auth",
         "--database", str(homes["link"] / "superlink.db"), "--disable-runtime-dependency-installation"],
        env={**env, "FLWR_HOME": str(homes["link"])}, stdout=link_log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    node = None
    cli_env = {**env, "FLWR_HOME": str(homes["cli"])}
    try:
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run(["flwr", "supernode", "register", str(certs / "sites" / "site-a" / "auth-key.pub"),
                                  "fedsynth", "--name", "site-a", "--format", "json"],
                                 env=cli_env, capture_output=True, text=True, timeout=60)
            # with --format json, flwr 1.42 exits 0 even on failure: read "success"
            if res.returncode == 0 and json.loads(res.stdout).get("success"):
                break
            assert link.poll() is None, f"flower-superlink exited:\n{link_log.read_text()}"
            assert time.monotonic() < deadline, res.stdout + res.stderr
            time.sleep(1)
        node = subprocess.Popen(  # the runbook's site agent: flower-supernode + warm ClientApp executor
            ["fedsynth", "site-agent", "--superlink", f"127.0.0.1:{port}", "--root-certificates",
             str(certs / "sites" / "site-a" / "ca.crt"), "--auth-supernode-private-key",
             str(certs / "sites" / "site-a" / "auth-key"), "--port", str(_free_port()),
             "--node-config", 'site-id="site-a"'],
            env={**env, "FLWR_HOME": str(homes["node"])}, stdout=node_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run(["flwr", "supernode", "list", "fedsynth", "--format", "json"],
                                 env=cli_env, capture_output=True, text=True, timeout=60)
            if res.returncode == 0 and "online" in res.stdout:
                break
            assert node.poll() is None, f"fedsynth site-agent exited with {node.returncode}:\n{node_log.read_text()}"
            assert time.monotonic() < deadline, res.stdout + res.stderr
            time.sleep(1)
        nodes = json.loads(res.stdout)
        assert "online" in json.dumps(nodes)
    finally:
        if node is not None:
            stop_process_group(node)
        stop_process_group(link)
