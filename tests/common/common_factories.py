"""Shared factories for the common/ unit tests (imported by conftest and test modules)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedsynth.common.model import ModelConfig
from fedsynth.common.scheduler import SchedulerConfig
from fedsynth.common.schema import Column, Schema


def make_mixed_schema() -> Schema:
    """Every column flavour: linear/log1p/integer/nullable numeric, binary, categorical, nullable categorical."""
    return Schema(
        columns=(
            Column("age", "numeric", 18, 100, integer=True),
            Column("income", "numeric", 0, 100_000, transform="log1p"),
            Column("lactate", "numeric", 0, 20, nullable=True),
            Column("visits", "numeric", 0, 30, integer=True, nullable=True),
            Column("sex", "binary", categories=("F", "M")),
            Column("race", "categorical", categories=("white", "black", "other")),
            Column("stage", "categorical", categories=(1, 2, 3), nullable=True),
            Column("death", "binary", categories=(0, 1)),
        ),
        target="death",
        name="toy",
    )


def make_mixed_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` valid rows for :func:`make_mixed_schema` (raw values, as a site would hold them)."""
    rng = np.random.default_rng(seed)
    lactate = rng.uniform(0, 20, n).round(2)
    lactate[rng.random(n) < 0.2] = np.nan
    visits = rng.integers(0, 31, n).astype(float)
    visits[rng.random(n) < 0.2] = np.nan
    stage = rng.choice(np.array([1, 2, 3, None], dtype=object), n)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 101, n),
            "income": rng.uniform(0, 100_000, n).round(2),
            "lactate": lactate,
            "visits": pd.array(visits, dtype="Int64") if n else pd.array([], dtype="Int64"),
            "sex": rng.choice(["F", "M"], n),
            "race": rng.choice(["white", "black", "other"], n),
            "stage": stage,
            "death": rng.integers(0, 2, n),
        }
    )


def tiny_model_config(n_features: int) -> ModelConfig:
    """The smallest useful U-Net."""
    return ModelConfig(n_features=n_features, seq_len=4, dim=8, dim_mults=(1, 2))


def tiny_scheduler_config(**kwargs: object) -> SchedulerConfig:
    """A short linear schedule (fast loops)."""
    base: dict[str, object] = {"num_train_timesteps": 20}
    base.update(kwargs)
    return SchedulerConfig(**base)  # type: ignore[arg-type]
