"""Fidelity: column shapes and column-pair trends, scored like SDMetrics' ``QualityReport``.

* Column shapes: ``KSComplement`` (1 - Kolmogorov-Smirnov statistic) for numeric columns and
  ``TVComplement`` (1 - total variation distance) for categorical/binary ones.
* Column-pair trends: ``CorrelationSimilarity`` (1 - |rho_real - rho_syn| / 2, Pearson) for numeric
  pairs and ``ContingencySimilarity`` (1 - total variation distance of the joint table) for every
  other pair, with numeric columns cut into 10 bins of equal width over the real range.
* Overall score: the mean of the two property scores, as in SDMetrics.

This re-implements the SDMetrics metric definitions (same formulas) in vectorised NumPy because
``sdmetrics.reports.single_table.QualityReport`` 0.32 returned NaN column-pair scores on our stack
and is slow on 2 cores; ``tests/audit/test_fidelity.py`` checks the column-shape scores against
SDMetrics' own metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.schema import Schema, canonical

N_BINS = 10


@dataclass(frozen=True)
class FidelityReport:
    """Fidelity scores in [0, 1] (1 = indistinguishable marginals and pairwise trends).

    Args:
        overall: mean of ``column_shapes`` and ``column_pair_trends``.
        column_shapes: mean per-column score.
        column_pair_trends: mean per-pair score.
        per_column: ``{column: score}``.
        n_real: real rows compared.
        n_synthetic: synthetic rows compared.
    """

    overall: float
    column_shapes: float
    column_pair_trends: float
    per_column: dict[str, float]
    n_real: int
    n_synthetic: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return asdict(self)


def ks_complement(real: np.ndarray, synthetic: np.ndarray) -> float:
    """1 - two-sample KS statistic (NaNs dropped)."""
    r = np.sort(real[~np.isnan(real)])
    s = np.sort(synthetic[~np.isnan(synthetic)])
    if len(r) == 0 or len(s) == 0:
        return float("nan")
    grid = np.concatenate([r, s])
    cdf_r = np.searchsorted(r, grid, side="right") / len(r)
    cdf_s = np.searchsorted(s, grid, side="right") / len(s)
    return float(1.0 - np.max(np.abs(cdf_r - cdf_s)))


def tv_complement(real: np.ndarray, synthetic: np.ndarray, n_codes: int) -> float:
    """1 - total variation distance of two code arrays in ``range(n_codes)``."""
    p = np.bincount(real, minlength=n_codes) / max(len(real), 1)
    q = np.bincount(synthetic, minlength=n_codes) / max(len(synthetic), 1)
    return float(1.0 - 0.5 * np.abs(p - q).sum())


def _codes(
    real: pd.Series, synthetic: pd.Series, *, numeric: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Discretise a column pair into shared integer codes (numeric: 10 equal bins over the real
    range)."""
    if numeric:
        r = pd.to_numeric(real, errors="coerce").to_numpy(dtype=float)
        s = pd.to_numeric(synthetic, errors="coerce").to_numpy(dtype=float)
        finite = r[~np.isnan(r)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, N_BINS + 1)[1:-1]
        rc = np.where(np.isnan(r), N_BINS, np.digitize(r, edges))
        sc = np.where(np.isnan(s), N_BINS, np.digitize(np.nan_to_num(s, nan=lo), edges))
        return rc.astype(np.int64), sc.astype(np.int64), N_BINS + 1
    keys = pd.Index(pd.unique(pd.concat([real, synthetic]).map(canonical)))
    rc = keys.get_indexer(real.map(canonical))
    sc = keys.get_indexer(synthetic.map(canonical))
    return rc.astype(np.int64), sc.astype(np.int64), len(keys)


def evaluate_fidelity(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    schema: Schema,
    max_rows: int = 5000,
    seed: int = 0,
) -> FidelityReport:
    """Score how well ``synthetic`` reproduces the marginals and pairwise trends of ``real``.

    Args:
        real: reference rows (schema columns).
        synthetic: synthetic rows (schema columns).
        schema: the schema (decides numeric vs categorical metrics).
        max_rows: rows of each table used (seeded subsample).
        seed: subsampling seed.
    """
    real = (
        real.sample(n=min(max_rows, len(real)), random_state=seed) if len(real) > max_rows else real
    )
    synthetic = (
        synthetic.sample(n=min(max_rows, len(synthetic)), random_state=seed)
        if len(synthetic) > max_rows
        else synthetic
    )
    names = list(schema.names)
    numeric = {c.name: c.kind == "numeric" for c in schema.columns}
    shapes: dict[str, float] = {}
    codes: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for name in names:
        codes[name] = _codes(real[name], synthetic[name], numeric=numeric[name])
        if numeric[name]:
            shapes[name] = ks_complement(
                pd.to_numeric(real[name], errors="coerce").to_numpy(dtype=float),
                pd.to_numeric(synthetic[name], errors="coerce").to_numpy(dtype=float),
            )
        else:
            shapes[name] = tv_complement(codes[name][0], codes[name][1], codes[name][2])
    num_cols = [n for n in names if numeric[n]]
    corr_r = (
        real[num_cols].apply(pd.to_numeric, errors="coerce").corr().to_numpy() if num_cols else None
    )
    corr_s = (
        synthetic[num_cols].apply(pd.to_numeric, errors="coerce").corr().to_numpy()
        if num_cols
        else None
    )
    pos = {n: i for i, n in enumerate(num_cols)}
    pair_scores: list[float] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if numeric[a] and numeric[b]:
                assert corr_r is not None and corr_s is not None
                cr, cs = corr_r[pos[a], pos[b]], corr_s[pos[a], pos[b]]
                if np.isfinite(cr) and np.isfinite(cs):
                    pair_scores.append(1.0 - abs(cr - cs) / 2.0)
                continue
            ra, sa, ka = codes[a]
            rb, sb, kb = codes[b]
            pair_scores.append(tv_complement(ra * kb + rb, sa * kb + sb, ka * kb))
    shape_vals = [v for v in shapes.values() if np.isfinite(v)]
    col_shapes = float(np.mean(shape_vals)) if shape_vals else float("nan")
    pair = float(np.mean(pair_scores)) if pair_scores else col_shapes
    return FidelityReport(
        overall=float(np.mean([col_shapes, pair])),
        column_shapes=col_shapes,
        column_pair_trends=pair,
        per_column={k: float(v) for k, v in shapes.items()},
        n_real=len(real),
        n_synthetic=len(synthetic),
    )
