"""DOMIAS-style density-ratio membership attack (van Breugel et al., AISTATS 2023).

A generator that overfits puts more probability mass on its training records than the population
does. The attack scores a candidate ``x`` by ``log p_synthetic(x) - log p_reference(x)``, both
densities fitted in the encoded feature space; the reference (holdout) set stands in for the
population.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

DensityModel = Literal["kde", "gmm"]


@dataclass(frozen=True)
class DomiasConfig:
    """Settings of the density-ratio attack.

    Args:
        model: ``kde`` (Gaussian kernel, catches memorised points) or ``gmm`` (smoother, faster).
        bandwidth: KDE bandwidth; ``None`` picks Scott's rule from the reference spread.
        gmm_components: components of the GMM.
        max_fit_rows: rows used to fit each density (seeded subsample).
        seed: random seed.
    """

    model: DensityModel = "kde"
    bandwidth: float | None = None
    gmm_components: int = 10
    max_fit_rows: int = 5000
    seed: int = 0


def _subsample(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= m else x[rng.choice(len(x), m, replace=False)]


def _scott(x: np.ndarray) -> float:
    n, d = x.shape
    sigma = float(np.mean(np.std(x, axis=0))) or 1.0
    return sigma * n ** (-1.0 / (d + 4))


def _log_density(
    fit: np.ndarray, query: np.ndarray, cfg: DomiasConfig, bandwidth: float
) -> np.ndarray:
    if cfg.model == "kde":
        return KernelDensity(bandwidth=bandwidth).fit(fit).score_samples(query)
    if cfg.model == "gmm":
        k = min(cfg.gmm_components, len(fit))
        gmm = GaussianMixture(k, covariance_type="diag", reg_covar=1e-3, random_state=cfg.seed)
        return gmm.fit(fit).score_samples(query)
    raise ValueError(f"density model must be 'kde' or 'gmm', got {cfg.model!r}")


def domias_scores(
    candidates: np.ndarray,
    synthetic: np.ndarray,
    reference: np.ndarray,
    *,
    config: DomiasConfig | None = None,
) -> np.ndarray:
    """Density-ratio membership scores of ``candidates``; higher means "more likely a training
    member".

    Args:
        candidates: encoded rows to score, shape ``(n, F)``.
        synthetic: encoded synthetic sample, shape ``(m, F)``.
        reference: encoded population sample the generator did not see, shape ``(r, F)``; it must
            not contain the non-member candidates (split it first).
        config: attack settings.

    Returns:
        Log density ratio, shape ``(n,)``.
    """
    cfg = config or DomiasConfig()
    rng = np.random.default_rng(cfg.seed)
    syn = _subsample(np.asarray(synthetic, dtype=np.float64), cfg.max_fit_rows, rng)
    ref = _subsample(np.asarray(reference, dtype=np.float64), cfg.max_fit_rows, rng)
    bw = cfg.bandwidth if cfg.bandwidth is not None else _scott(ref)
    q = np.asarray(candidates, dtype=np.float64)
    return _log_density(syn, q, cfg, bw) - _log_density(ref, q, cfg, bw)
