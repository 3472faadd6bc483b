"""Distance-based privacy statistics: distance to closest record (DCR), NNDR and the DCR share test.

All inputs are encoded feature matrices (``TabularTransform`` output, values in [-1, 1]).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from fedsynth.audit.index import Backend, make_index

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class DistanceSummary:
    """Aggregate view of a distance sample (no rows, safe to send off-site).

    Args:
        n: number of distances summarised.
        mean: mean distance.
        quantiles: ``{"p1": ..., "p5": ..., ...}``.
        hist_edges: histogram bin edges (fixed in advance, public).
        hist_counts: counts per bin.
    """

    n: int
    mean: float
    quantiles: dict[str, float]
    hist_edges: tuple[float, ...]
    hist_counts: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        d = asdict(self)
        d["hist_edges"] = list(self.hist_edges)
        d["hist_counts"] = list(self.hist_counts)
        return d


def summarize(
    distances: np.ndarray, *, max_distance: float | None = None, bins: int = 30
) -> DistanceSummary:
    """Summarise distances by mean, quantiles and a fixed-edge histogram."""
    d = np.asarray(distances, dtype=np.float64)
    top = float(max_distance) if max_distance is not None else float(d.max(initial=1.0)) or 1.0
    edges = np.linspace(0.0, top, bins + 1)
    counts, _ = np.histogram(np.clip(d, 0.0, top), bins=edges)
    q = {
        f"p{int(round(p * 100))}": float(np.quantile(d, p)) if d.size else float("nan")
        for p in QUANTILES
    }
    return DistanceSummary(
        n=int(d.size),
        mean=float(d.mean()) if d.size else float("nan"),
        quantiles=q,
        hist_edges=tuple(float(e) for e in edges),
        hist_counts=tuple(int(c) for c in counts),
    )


def dcr(query: np.ndarray, reference: np.ndarray, *, backend: Backend = "auto") -> np.ndarray:
    """Distance from each query row to its closest row in ``reference``.

    Args:
        query: array of shape ``(n, d)``.
        reference: array of shape ``(m, d)``.
        backend: nearest-neighbour backend.

    Returns:
        Array of shape ``(n,)``.
    """
    dist, _ = make_index(reference, backend=backend).search(query, 1)
    return dist[:, 0]


def nndr(query: np.ndarray, reference: np.ndarray, *, backend: Backend = "auto") -> np.ndarray:
    """Nearest-neighbour distance ratio ``d1 / d2`` of each query row w.r.t. ``reference``.

    Values near 0 mean the closest record is much closer than the second: the query isolates one
    record.

    Returns:
        Array of shape ``(n,)`` in [0, 1] (1 where both distances are 0).
    """
    dist, _ = make_index(reference, backend=backend).search(query, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = dist[:, 0] / dist[:, 1]
    return np.where(dist[:, 1] > 0, ratio, 1.0)


@dataclass(frozen=True)
class DcrShare:
    """The DCR share test: how many synthetic rows are closer to train than to holdout.

    With train and holdout of equal size drawn from the same distribution, a generator that does not
    copy its training rows gives ``share`` close to 0.5.

    Args:
        share: fraction of synthetic rows closer to train (ties count one half).
        n_closer_train: count closer to train (ties count one half).
        n: synthetic rows tested.
        ci_low: lower end of the 95% Clopper-Pearson interval of ``share``.
        ci_high: upper end.
        p_value: one-sided binomial p-value of ``share > 0.5``.
    """

    share: float
    n_closer_train: float
    n: int
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return asdict(self)


def dcr_share_from_distances(d_train: np.ndarray, d_holdout: np.ndarray) -> DcrShare:
    """DCR share from precomputed distances (see :func:`dcr_share`)."""
    d_train = np.asarray(d_train, dtype=np.float64)
    d_holdout = np.asarray(d_holdout, dtype=np.float64)
    closer = (d_train < d_holdout).sum() + 0.5 * (d_train == d_holdout).sum()
    return share_from_counts(float(closer), int(d_train.size))


def share_from_counts(closer: float, n: int) -> DcrShare:
    """Build a :class:`DcrShare` from pooled counts (used to combine per-site aggregates)."""
    if n == 0:
        nan = float("nan")
        return DcrShare(nan, 0.0, 0, nan, nan, nan)
    k = int(round(closer))
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    p = stats.binomtest(k, n, 0.5, alternative="greater").pvalue
    return DcrShare(closer / n, float(closer), n, float(ci.low), float(ci.high), float(p))


def dcr_share(
    synthetic: np.ndarray,
    train: np.ndarray,
    holdout: np.ndarray,
    *,
    backend: Backend = "auto",
    seed: int = 0,
) -> DcrShare:
    """Fraction of synthetic rows whose closest record lies in ``train`` rather than ``holdout``.

    The larger of ``train``/``holdout`` is subsampled (seeded) to the size of the smaller, so that
    the ideal value is exactly 0.5.

    Args:
        synthetic: array of shape ``(n, d)``.
        train: rows the generator was trained on, shape ``(m1, d)``.
        holdout: rows from the same distribution it never saw, shape ``(m2, d)``.
        backend: nearest-neighbour backend.
        seed: subsampling seed.
    """
    rng = np.random.default_rng(seed)
    m = min(len(train), len(holdout))
    if len(train) > m:
        train = train[rng.choice(len(train), m, replace=False)]
    if len(holdout) > m:
        holdout = holdout[rng.choice(len(holdout), m, replace=False)]
    return dcr_share_from_distances(
        dcr(synthetic, train, backend=backend), dcr(synthetic, holdout, backend=backend)
    )
