"""The ``fedsynth`` CLI driven in-process: sample (release gate), site tools, error exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsynth.cli.main import main
from fedsynth.common.artifact import load_generator, save_artifact, write_audit_status
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.model import ModelConfig, TabularUNet1D
from fedsynth.common.scheduler import SchedulerConfig
from fedsynth.common.schema import Column, Schema

SCHEMA = Schema(
    columns=(
        Column("age", "numeric", 0, 120, integer=True),
        Column("lactate", "numeric", 0, 20, nullable=True),
        Column("sex", "binary", categories=("F", "M")),
        Column("unit", "categorical", categories=("icu", "ward", "er")),
    ),
    target="sex",
    name="toy",
)


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    n_features = TabularTransform(SCHEMA).n_features
    config = ModelConfig(n_features=n_features, seq_len=4, dim=8, dim_mults=(1, 2))
    return save_artifact(
        tmp_path / "artifacts", state_dict=TabularUNet1D(config).state_dict(), schema=SCHEMA, model_config=config,
        scheduler_config=SchedulerConfig(num_train_timesteps=20), run_config={"num-server-rounds": 1},
        ledger={"sites": {"a": {"epsilon": 1.0, "delta": 1e-5, "rounds": 1, "num_examples": 10}}},
    )


def test_sample_refuses_unaudited_generator(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--generator", str(artifact), "-n", "5", "-o", str(tmp_path / "out.csv")])
    # Assert
    assert exc.value.code == 2
    assert "not been audited" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_sample_refuses_failed_audit_and_names_the_check(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arrange
    write_audit_status(artifact, passed=False, failed_checks=["mia_auc: 0.91 > 0.60"])
    # Act
    with pytest.raises(SystemExit):
        main(["sample", "--generator", str(artifact), "-n", "5", "-o", str(tmp_path / "out.csv")])
    # Assert
    assert "mia_auc: 0.91 > 0.60" in capsys.readouterr().err


def test_sample_writes_valid_rows_from_released_generator(artifact: Path, tmp_path: Path) -> None:
    # Arrange
    write_audit_status(artifact, passed=True, failed_checks=[])
    out = tmp_path / "rows.csv"
    # Act
    main(["sample", "--generator", str(artifact), "-n", "40", "-o", str(out), "--seed", "1", "--steps", "5"])
    # Assert
    df = pd.read_csv(out)
    assert list(df.columns) == list(SCHEMA.names) and len(df) == 40
    assert df["age"].between(0, 120).all() and (df["age"] % 1 == 0).all()
    assert df["lactate"].dropna().between(0, 20).all()
    assert set(df["sex"]) <= {"F", "M"} and set(df["unit"]) <= {"icu", "ward", "er"}


@pytest.mark.parametrize(
    ("device", "message"),
    [
        pytest.param("tpu", "device must be 'cpu' or 'cuda'", id="unknown-device"),
        pytest.param("cuda", "torch sees no CUDA GPU", id="no-gpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ],
)
def test_sample_on_an_unusable_device_says_why(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    # Arrange
    write_audit_status(artifact, passed=True, failed_checks=[])
    out = tmp_path / "rows.csv"
    # Act
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--generator", str(artifact), "-n", "5", "-o", str(out), "--device", device])
    # Assert: a clear error, no output file
    assert exc.value.code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_seeded_rows_on_the_gpu_equal_the_cpu_rows(artifact: Path) -> None:
    gen = load_generator(artifact)
    cpu = gen.sample_encoded(300, steps=5, seed=4)
    gpu = gen.sample_encoded(300, steps=5, seed=4, device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


def test_validate_data_names_file_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    schema_path = SCHEMA.save(tmp_path / "schema.json")
    data = tmp_path / "site.csv"
    data.write_text("age,lactate,sex,unit\n40,1.5,F,icu\n41,2.0,X,ward\n")
    # Act
    with pytest.raises(SystemExit) as exc:
        main(["validate-data", str(data), "--schema", str(schema_path)])
    # Assert
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert str(data) in err and "row 2" in err and "column 'sex'" in err


def test_infer_schema_warns_and_writes_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    rng = np.random.default_rng(0)
    data = tmp_path / "site.csv"
    pd.DataFrame({"age": rng.uniform(18, 90, 50), "sex": rng.choice(["F", "M"], 50)}).to_csv(data, index=False)
    # Act
    main(["infer-schema", str(data), "-o", str(tmp_path / "schema.json")])
    # Assert
    assert "not differentially private" in capsys.readouterr().err
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert [c["kind"] for c in schema["columns"]] == ["numeric", "binary"]


def test_validate_model_accepts_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    main(["validate-model", "--schema", str(SCHEMA.save(tmp_path / "schema.json"))])
    # Assert
    assert "Opacus-compatible" in capsys.readouterr().out


def test_sample_rejects_unknown_sampler(artifact: Path, tmp_path: Path) -> None:
    # Act
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--generator", str(artifact), "-n", "5", "-o", str(tmp_path / "x.csv"), "--sampler", "foo"])
    # Assert
    assert exc.value.code == 2
