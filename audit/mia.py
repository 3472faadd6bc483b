"""Membership-inference metrics from attack scores: AUC, TPR at low FPR, empirical epsilon bound.

Attacks (:mod:`~fedsynth.audit.canary`, :mod:`~fedsynth.audit.domias`,
:mod:`~fedsynth.audit.shadow`) produce a score per candidate record, higher meaning "more likely a
member". This module turns scores and true membership labels into figures with confidence intervals.

The empirical epsilon lower bound follows the auditing recipe of Jagielski et al. (2020) and Nasr et
al. (2021): for a threshold test with true/false positive rates TPR/FPR, (epsilon, delta)-DP implies
``TPR <= exp(epsilon) * FPR + delta`` (and the same for TNR/FNR), so with one-sided Clopper-Pearson
bounds

    epsilon >= ln((TPR_low - delta) / FPR_high)

holds with confidence ``1 - 2 * alpha`` for a fixed threshold. We report the maximum over
thresholds, which is optimistic for the attacker (no correction for the threshold choice); with few
canaries it stays small.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

DEFAULT_FPRS = (0.001, 0.01)


def clopper_pearson(
    k: np.ndarray | int, n: int, *, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds of a binomial proportion.

    Args:
        k: number of successes (scalar or array).
        n: number of trials.
        alpha: each bound holds with probability ``1 - alpha``.

    Returns:
        ``(lower, upper)`` arrays: ``P(p >= lower) >= 1 - alpha`` and ``P(p <= upper) >= 1 -
        alpha``.
    """
    k_arr = np.asarray(k, dtype=np.float64)
    lower = np.where(k_arr > 0, stats.beta.ppf(alpha, np.maximum(k_arr, 1e-12), n - k_arr + 1), 0.0)
    upper = np.where(
        k_arr < n, stats.beta.ppf(1 - alpha, k_arr + 1, np.maximum(n - k_arr, 1e-12)), 1.0
    )
    return np.nan_to_num(lower, nan=0.0), np.nan_to_num(upper, nan=1.0)


def empirical_epsilon(
    scores: np.ndarray, labels: np.ndarray, *, delta: float = 0.0, alpha: float = 0.05
) -> float:
    """Clopper-Pearson lower bound on epsilon implied by the best threshold test on ``scores``.

    Args:
        scores: attack scores, shape ``(n,)``; higher means "member".
        labels: 1 for members, 0 for non-members.
        delta: the delta of the (epsilon, delta) guarantee being audited.
        alpha: significance of each one-sided bound.

    Returns:
        The largest lower bound over thresholds, and 0.0 where no threshold gives evidence.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # thresholds at the end of each run of tied scores: "member" iff score >= threshold
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    fn, tn = n_pos - tp, n_neg - fp
    tpr_lo, _ = clopper_pearson(tp, n_pos, alpha=alpha)
    _, fpr_hi = clopper_pearson(fp, n_neg, alpha=alpha)
    tnr_lo, _ = clopper_pearson(tn, n_neg, alpha=alpha)
    _, fnr_hi = clopper_pearson(fn, n_pos, alpha=alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        e2 = np.log(np.maximum(tnr_lo - delta, 0.0) / fnr_hi)
    best = np.nanmax(np.r_[e1, e2, 0.0])
    return float(max(best, 0.0)) if np.isfinite(best) else 0.0


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reachable at a false positive rate of at most ``target`` on a ROC curve."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


@dataclass(frozen=True)
class MiaResult:
    """Figures of one membership-inference attack.

    Args:
        attack: attack name (``canary``, ``domias``, ``shadow``, ...).
        auc: ROC AUC (0.5 = chance).
        auc_ci: 95% stratified-bootstrap interval of the AUC.
        tpr_at_fpr: ``{"0.001": tpr, "0.01": tpr}``.
        tpr_at_fpr_ci: 95% bootstrap intervals of those TPRs.
        epsilon_lower_bound: empirical epsilon lower bound (Clopper-Pearson, see module docstring).
        n_members: number of member candidates.
        n_nonmembers: number of non-member candidates.
        roc_fpr: ROC curve (at most 200 points) for plotting.
        roc_tpr: ROC curve TPRs.
        notes: free-text caveats (small samples, ...).
    """

    attack: str
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_fpr: dict[str, float]
    tpr_at_fpr_ci: dict[str, tuple[float, float]]
    epsilon_lower_bound: float
    n_members: int
    n_nonmembers: int
    roc_fpr: tuple[float, ...] = field(repr=False, default=())
    roc_tpr: tuple[float, ...] = field(repr=False, default=())
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        d = asdict(self)
        d["auc_ci"] = list(self.auc_ci)
        d["tpr_at_fpr_ci"] = {k: list(v) for k, v in self.tpr_at_fpr_ci.items()}
        d["roc_fpr"] = list(self.roc_fpr)
        d["roc_tpr"] = list(self.roc_tpr)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiaResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            attack=str(d["attack"]),
            auc=float(d["auc"]),
            auc_ci=(float(d["auc_ci"][0]), float(d["auc_ci"][1])),
            tpr_at_fpr={str(k): float(v) for k, v in d["tpr_at_fpr"].items()},
            tpr_at_fpr_ci={
                str(k): (float(v[0]), float(v[1])) for k, v in d["tpr_at_fpr_ci"].items()
            },
            epsilon_lower_bound=float(d["epsilon_lower_bound"]),
            n_members=int(d["n_members"]),
            n_nonmembers=int(d["n_nonmembers"]),
            roc_fpr=tuple(d.get("roc_fpr", ())),
            roc_tpr=tuple(d.get("roc_tpr", ())),
            notes=str(d.get("notes", "")),
        )


def _thin(
    fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if len(fpr) > max_points:
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, max_points).astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return tuple(float(v) for v in fpr), tuple(float(v) for v in tpr)


def evaluate_attack(
    attack: str,
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    delta: float = 0.0,
    fprs: tuple[float, ...] = DEFAULT_FPRS,
    n_bootstrap: int = 200,
    seed: int = 0,
    notes: str = "",
) -> MiaResult:
    """Score an attack against known membership.

    Args:
        attack: attack name for the report.
        scores: shape ``(n,)``, higher means "member".
        labels: shape ``(n,)``, 1 member, 0 non-member.
        delta: delta used for the empirical epsilon bound.
        fprs: false positive rates at which TPR is reported.
        n_bootstrap: stratified bootstrap resamples for the intervals.
        seed: bootstrap seed.
        notes: caveats copied into the result.

    Raises:
        ValueError: no members or no non-members.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}"
        )
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(
            f"attack '{attack}' needs both members and non-members (got {len(pos)}/{len(neg)})"
        )
    s = np.nan_to_num(
        s, nan=-np.inf, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max
    )
    fpr, tpr, _ = roc_curve(y, s)
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    boot_auc, boot_tpr = [], {f: [] for f in fprs}
    for _ in range(n_bootstrap):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        bf, bt, _ = roc_curve(y[idx], s[idx])
        boot_auc.append(roc_auc_score(y[idx], s[idx]))
        for f in fprs:
            boot_tpr[f].append(tpr_at_fpr(bf, bt, f))

    def ci(values: list[float]) -> tuple[float, float]:
        if not values:
            return (math.nan, math.nan)
        lo, hi = np.quantile(values, [0.025, 0.975])
        return (float(lo), float(hi))

    roc_f, roc_t = _thin(fpr, tpr)
    min_fpr = 1.0 / len(neg)
    small = [f for f in fprs if f < min_fpr]
    if small:
        extra = f"{len(neg)} non-members: TPR at FPR {small} is really TPR at FPR 0"
        notes = f"{notes}; {extra}" if notes else extra
    return MiaResult(
        attack=attack,
        auc=auc,
        auc_ci=ci(boot_auc),
        tpr_at_fpr={str(f): tpr_at_fpr(fpr, tpr, f) for f in fprs},
        tpr_at_fpr_ci={str(f): ci(boot_tpr[f]) for f in fprs},
        epsilon_lower_bound=empirical_epsilon(s, y, delta=delta),
        n_members=len(pos),
        n_nonmembers=len(neg),
        roc_fpr=roc_f,
        roc_tpr=roc_t,
        notes=notes,
    )
