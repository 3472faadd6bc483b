"""Tests for fedsynth.common.artifact: save/load/sample, integrity, release gate."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from common_factories import make_mixed_schema, tiny_model_config, tiny_scheduler_config

from fedsynth.common.artifact import (
    load_generator,
    next_version,
    package_release,
    release_status,
    require_released,
    save_artifact,
    write_audit_status,
)
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import ArtifactError, ReleaseBlocked
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.validation import validate_frame

LEDGER = {"sites": {"h1": {"epsilon": 1.5, "delta": 1e-5, "rounds": 2, "num_examples": 40}}}


@pytest.fixture
def artifact(tmp_path):
    schema = make_mixed_schema()
    config = tiny_model_config(TabularTransform(schema).n_features)
    torch.manual_seed(0)
    model = TabularUNet1D(config)
    return save_artifact(
        tmp_path / "out", state_dict=model.state_dict(), schema=schema, model_config=config,
        scheduler_config=tiny_scheduler_config(), run_config={"num-server-rounds": 2, "unet-dim-mults": "1,2"},
        ledger=LEDGER, history=[{"round": 1, "loss": 0.9}],
    )


def _resave_weights(path, state_dict) -> None:
    """Overwrite weights.pt and update the manifest, as a re-export of new weights would."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    (path / "weights.pt").write_bytes(buf.getvalue())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["weights.pt"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_save_writes_versioned_immutable_folder(artifact) -> None:
    # Arrange
    root = artifact.parent

    # Act
    names = sorted(p.name for p in artifact.iterdir())

    # Assert
    assert artifact.name == "generator-v1"
    assert names == ["MODEL_CARD.md", "config.json", "manifest.json", "privacy_ledger.json", "schema.json", "weights.pt"]
    assert sorted(p.name for p in root.iterdir()) == ["generator-v1"]  # no temp folder left
    assert next_version(root) == 2
    assert "epsilon = 1.500" in (artifact / "MODEL_CARD.md").read_text()
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(root, state_dict={}, schema=make_mixed_schema(), model_config=tiny_model_config(15),
                      scheduler_config=tiny_scheduler_config(), run_config={}, ledger={}, version=1)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_load_generator_and_sample(artifact, sampler: str) -> None:
    # Arrange
    schema = make_mixed_schema()

    # Act
    generator = load_generator(artifact)
    df = generator.sample(25, sampler=sampler, steps=5, seed=0, batch_size=10)

    # Assert
    assert generator.version == 1 and not generator.model.training
    assert list(df.columns) == list(schema.names) and len(df) == 25
    assert validate_frame(df, schema) == []
    for col in schema.columns:
        if col.kind == "numeric":
            values = df[col.name].dropna().astype(float)
            assert values.between(col.lower, col.upper).all()
        else:
            assert set(df[col.name]) <= set(col.categories) | ({None} if col.nullable else set())
    again = generator.sample(25, sampler=sampler, steps=5, seed=0, batch_size=10)
    if sampler == "ddim":
        assert again.equals(df)


def test_sample_default_steps_with_short_schedule(artifact) -> None:
    # Arrange: the artifact's schedule has 20 steps, fewer than DDIM's default 50
    generator = load_generator(artifact)

    # Act
    x = generator.sample_encoded(3, seed=1)

    # Assert
    assert x.shape == (3, generator.transform.n_features) and np.isfinite(x).all()


def test_flipped_byte_in_weights_raises_artifact_error(artifact) -> None:
    # Arrange
    weights = artifact / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    # Act / Assert
    with pytest.raises(ArtifactError, match="weights.pt does not match"):
        load_generator(artifact)


@pytest.mark.parametrize("victim", ["schema.json", "manifest.json"])
def test_missing_file_raises_artifact_error(artifact, victim: str) -> None:
    # Arrange
    (artifact / victim).unlink()

    # Act / Assert
    with pytest.raises(ArtifactError):
        load_generator(artifact)


def test_unaudited_artifact_is_blocked(artifact) -> None:
    # Arrange / Act
    status = release_status(artifact)

    # Assert
    assert not status.released and not status.audited
    with pytest.raises(ReleaseBlocked, match="not been audited"):
        require_released(artifact)
    with pytest.raises(ReleaseBlocked):
        package_release(artifact)


def test_failed_audit_blocks_and_names_the_check(artifact) -> None:
    # Arrange
    write_audit_status(artifact, passed=False, failed_checks=["mia_auc 0.71 > 0.60"], report="audit/report.json")

    # Act
    status = release_status(artifact)

    # Assert
    assert status.audited and not status.passed and not status.released
    with pytest.raises(ReleaseBlocked, match=r"failed its privacy audit: mia_auc 0\.71 > 0\.60"):
        require_released(artifact)


def test_passed_audit_releases_and_packages(artifact) -> None:
    # Arrange
    write_audit_status(artifact, passed=True, failed_checks=[], report="audit/report.json")

    # Act
    status = require_released(artifact)
    blob = package_release(artifact)

    # Assert
    assert status.released and status.report == "audit/report.json"
    names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    assert "generator-v1/weights.pt" in names and "generator-v1/audit_status.json" in names


def test_resaving_weights_invalidates_the_audit(artifact) -> None:
    # Arrange
    write_audit_status(artifact, passed=True, failed_checks=[])
    assert release_status(artifact).released
    new_weights = {k: v + 0.01 for k, v in load_generator(artifact).model.state_dict().items()}

    # Act
    _resave_weights(artifact, new_weights)

    # Assert
    status = release_status(artifact)
    assert not status.released and not status.audited
    with pytest.raises(ReleaseBlocked, match="audit again"):
        require_released(artifact)


def test_corrupt_audit_status_raises_artifact_error(artifact) -> None:
    # Arrange
    (artifact / "audit_status.json").write_text("{not json")

    # Act / Assert
    with pytest.raises(ArtifactError, match="corrupt"):
        release_status(artifact)
