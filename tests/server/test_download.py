"""The generator download service: authentication, the release gate, sampling, and a real TLS process."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fedsynth.common.artifact import save_artifact, write_audit_status
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.model import ModelConfig, TabularUNet1D
from fedsynth.common.scheduler import SchedulerConfig
from fedsynth.common.schema import Column, Schema
from fedsynth.server.download import ServeSettings, TokenStore, create_app, hash_token

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _schema() -> Schema:
    return Schema(
        columns=(
            Column("age", "numeric", 18, 100, integer=True),
            Column("bmi", "numeric", 10, 60),
            Column("sex", "binary", categories=("F", "M")),
            Column("death", "binary", categories=("No", "Yes")),
        ),
        target="death",
        name="tiny",
    )


def _artifact(root: Path, version: int) -> Path:
    schema = _schema()
    cfg = ModelConfig(n_features=TabularTransform(schema).n_features, seq_len=4, dim=8)
    model = TabularUNet1D(cfg)
    return save_artifact(
        root,
        state_dict=model.state_dict(),
        schema=schema,
        model_config=cfg,
        scheduler_config=SchedulerConfig(num_train_timesteps=10),
        run_config={"num-server-rounds": 2},
        ledger={"sites": {"site-a": {"epsilon": 1.25, "delta": 1e-5, "rounds": 2, "num_examples": 40},
                          "site-b": {"epsilon": 2.5, "delta": 1e-5, "rounds": 2, "num_examples": 30}}},
        version=version,
    )


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    """v1 released, v2 failed its audit, v3 never audited."""
    root = tmp_path / "artifacts"
    write_audit_status(_artifact(root, 1), passed=True, failed_checks=[], report="audit/report.json",
                       summary={"mia_auc": 0.51})
    write_audit_status(_artifact(root, 2), passed=False, failed_checks=["DCR 5th percentile below holdout"])
    _artifact(root, 3)
    return root


@pytest.fixture()
def client(artifacts: Path) -> TestClient:
    return TestClient(create_app(artifacts, [TOKEN], settings=ServeSettings(max_sample_rows=50)))


# authentication


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "},
     {"Authorization": TOKEN}],
    ids=["none", "wrong", "basic-scheme", "empty", "no-scheme"],
)
@pytest.mark.parametrize(
    "route", ["/generators", "/generators/1", "/generators/1/download", "/generators/1/sample?n=2"]
)
def test_every_route_but_healthz_needs_a_valid_token(client: TestClient, route: str, headers: dict) -> None:
    r = client.get(route, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json() == {"detail": "missing or invalid bearer token"}


def test_token_file_accepts_hashes_and_plain_tokens_and_reloads(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# download tokens\n\n{hash_token('hashed-one')}  alice@site-a\nplain-two ci\n")
    store = TokenStore.from_file(f)
    assert store.verify("hashed-one") == "alice@site-a"
    assert store.verify("plain-two") == "ci"
    assert store.verify(hash_token("hashed-one")) is None  # the digest itself is not a token
    assert store.verify("") is None
    f.write_text(f"{hash_token('third')} bob\n")
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert store.verify("hashed-one") is None  # revoked without a restart
    assert store.verify("third") == "bob"


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    from fedsynth.common.errors import ConfigError

    (tmp_path / "tokens").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no token"):
        TokenStore.from_file(tmp_path / "tokens")
    with pytest.raises(ConfigError):
        create_app(tmp_path, [])


# listing and metadata


def test_list_shows_release_status_epsilon_and_audit(client: TestClient) -> None:
    gens = {g["version"]: g for g in client.get("/generators", headers=AUTH).json()["generators"]}
    assert sorted(gens) == [1, 2, 3]
    assert gens[1]["audit"]["released"] is True
    assert gens[1]["audit"]["summary"] == {"mia_auc": 0.51}
    assert gens[2]["audit"]["released"] is False
    assert gens[2]["audit"]["failed_checks"] == ["DCR 5th percentile below holdout"]
    assert gens[3]["audit"]["audited"] is False
    assert gens[1]["privacy"]["max_epsilon"] == pytest.approx(2.5)
    assert gens[1]["privacy"]["sites"]["site-a"]["epsilon"] == pytest.approx(1.25)


def test_metadata_has_model_card_schema_and_config(client: TestClient) -> None:
    for name in ("1", "v1", "generator-v1"):
        info = client.get(f"/generators/{name}", headers=AUTH).json()
        assert info["version"] == 1
        assert info["model_card"].startswith("# fedsynth generator v1")
        assert [c["name"] for c in info["schema"]["columns"]] == ["age", "bmi", "sex", "death"]
        assert info["config"]["model"]["seq_len"] == 4


@pytest.mark.parametrize("name", ["9", "../etc", "generator-v1x", "v-1"])
def test_unknown_versions_are_404(client: TestClient, name: str) -> None:
    assert client.get(f"/generators/{name}", headers=AUTH).status_code == 404
    assert client.get(f"/generators/{name}/download", headers=AUTH).status_code == 404


# the release gate


def test_released_generator_downloads_as_a_verified_zip(client: TestClient, artifacts: Path) -> None:
    r = client.get("/generators/v1/download", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["x-content-sha256"] == hashlib.sha256(r.content).hexdigest()
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    assert {"generator-v1/weights.pt", "generator-v1/manifest.json", "generator-v1/audit_status.json"} <= names


@pytest.mark.parametrize(("version", "audited", "check"), [
    (2, True, "DCR 5th percentile below holdout"),
    (3, False, "the generator has not been audited"),
])
def test_blocked_generators_are_403_with_failed_checks(client: TestClient, version: int, audited: bool,
                                                        check: str) -> None:
    for route in (f"/generators/{version}/download", f"/generators/{version}/sample?n=3"):
        r = client.get(route, headers=AUTH)
        assert r.status_code == 403
        body = r.json()
        assert body["audited"] is audited
        assert body["failed_checks"] == [check]


def test_retrained_weights_invalidate_the_audit(client: TestClient, artifacts: Path) -> None:
    # an audit is bound to the weights' hash: new weights (re-saved manifest) need a new audit
    import json

    v1 = artifacts / "generator-v1"
    (v1 / "weights.pt").write_bytes((v1 / "weights.pt").read_bytes() + b"\0")
    assert client.get("/generators/1/download", headers=AUTH).status_code == 409  # hash mismatch
    manifest = json.loads((v1 / "manifest.json").read_text())
    manifest["files"]["weights.pt"] = hashlib.sha256((v1 / "weights.pt").read_bytes()).hexdigest()
    (v1 / "manifest.json").write_text(json.dumps(manifest))
    r = client.get("/generators/1/download", headers=AUTH)
    assert r.status_code == 403
    assert "audit again" in r.json()["failed_checks"][0]


# sampling


def test_sample_returns_csv_with_schema_columns_and_is_reproducible(client: TestClient) -> None:
    r = client.get("/generators/1/sample", params={"n": 7, "seed": 3, "steps": 3}, headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(r.text))
    assert list(df.columns) == ["age", "bmi", "sex", "death"] and len(df) == 7
    assert df["age"].between(18, 100).all() and set(df["sex"]) <= {"F", "M"}
    again = client.get("/generators/1/sample", params={"n": 7, "seed": 3, "steps": 3}, headers=AUTH)
    assert again.text == r.text


@pytest.mark.parametrize("params", [{"n": 51}, {"n": 0}, {"n": 5, "steps": 10_000}, {"n": "x"}])
def test_sample_limits(client: TestClient, params: dict) -> None:
    assert client.get("/generators/1/sample", params=params, headers=AUTH).status_code == 422


# a real process with TLS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_fedsynth_serve_over_tls(
    artifacts: Path, tmp_path: Path, stop_process_group: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    from fedsynth.cli.certs import generate_tls

    tls = generate_tls(tmp_path / "tls", hosts=("127.0.0.1", "localhost"))
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{hash_token(TOKEN)} tester\n")
    port = _free_port()
    exe = shutil.which("fedsynth", path=str(Path(sys.executable).parent)) or "fedsynth"
    proc = subprocess.Popen(
        [exe, "serve", "--artifacts", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
         "--token-file", str(token_file), "--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", verify=ctx, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"fedsynth serve did not come up (rc={proc.poll()}):\n{out}")
            time.sleep(0.3)
        with httpx.Client(base_url=base, verify=ctx, timeout=30) as http:
            assert http.get("/generators").status_code == 401
            r = http.get("/generators/1/download", headers=AUTH)
            assert r.status_code == 200
            assert "generator-v1/weights.pt" in zipfile.ZipFile(io.BytesIO(r.content)).namelist()
            assert http.get("/generators/2/download", headers=AUTH).status_code == 403
        # a client that does not trust our CA must refuse the connection
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", verify=ssl.create_default_context(), timeout=5)
    finally:
        stop_process_group(proc)


# the CLI's guard rails


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"host": "0.0.0.0"}, "plain HTTP"),
    ({"certfile": Path("/nonexistent.pem")}, "both --certfile and --keyfile"),
    ({"host": "0.0.0.0", "insecure": True}, "--token-file"),
])
def test_serve_refuses_unsafe_or_incomplete_settings(artifacts: Path, kwargs: dict, message: str) -> None:
    from fedsynth.cli.serve import serve
    from fedsynth.common.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        serve(artifacts, **kwargs)


def test_serve_token_stores_only_the_hash(tmp_path: Path) -> None:
    from fedsynth.cli.serve import add_token

    f = tmp_path / "tokens"
    token = add_token(f, label="alice@site-a")
    assert token not in f.read_text()
    assert f.stat().st_mode & 0o077 == 0
    assert TokenStore.from_file(f).verify(token) == "alice@site-a"
