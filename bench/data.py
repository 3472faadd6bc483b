"""Bench inputs: the encoded RHC demo table (82 features) and a denoiser built with the run defaults."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedsynth.common.config import RunConfig
from fedsynth.common.model import ModelConfig


@lru_cache(maxsize=1)
def rhc_encoded() -> np.ndarray:
    """RHC encoded by its declared schema, ``float32`` of shape ``(5735, 82)``."""
    from fedsynth.common.demo_data import load_rhc, rhc_schema
    from fedsynth.common.encoding import TabularTransform

    return TabularTransform(rhc_schema()).transform(load_rhc())


def default_model_config(n_features: int) -> ModelConfig:
    """The denoiser ``RunConfig()`` builds for rows of ``n_features``."""
    return RunConfig().model_config(n_features)


def rows_like(data: np.ndarray, n: int, *, seed: int = 0, jitter: float = 0.05) -> np.ndarray:
    """``n`` rows resampled from ``data`` with Gaussian ``jitter`` (stand-in for a large real/synthetic table)."""
    rng = np.random.default_rng(seed)
    rows = data[rng.integers(0, len(data), n)]
    return np.clip(rows + rng.normal(0, jitter, rows.shape), -1, 1).astype(np.float32)
