"""Machine-learning utility: train on synthetic, test on real (TSTR) against train on real (TRTR).

The auditor holds no site data, so the "real" baseline uses the operator's reference (holdout)
table: it is
split (seeded, stratified) into a real-train part for the TRTR baseline and a real-test part on
which both the TRTR and the TSTR models are scored. Models: logistic regression and histogram
gradient boosting, on the schema's encoded features, predicting the schema's (categorical or binary)
target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from fedsynth.common.encoding import TabularTransform
from fedsynth.common.schema import Schema, canonical


@dataclass(frozen=True)
class ModelUtility:
    """TSTR vs TRTR figures for one model family.

    Args:
        model: ``logistic_regression`` or ``gradient_boosting``.
        trtr_accuracy: accuracy of the model trained on real rows.
        tstr_accuracy: accuracy of the model trained on synthetic rows.
        trtr_auc: ROC AUC (one-vs-rest macro for more than two classes) trained on real.
        tstr_auc: ROC AUC trained on synthetic.
        accuracy_gap: ``trtr_accuracy - tstr_accuracy``.
        auc_gap: ``trtr_auc - tstr_auc``.
    """

    model: str
    trtr_accuracy: float
    tstr_accuracy: float
    trtr_auc: float
    tstr_auc: float
    accuracy_gap: float
    auc_gap: float


@dataclass(frozen=True)
class UtilityReport:
    """Utility of the synthetic data for predicting ``target``.

    Args:
        target: the predicted column.
        models: per model family figures.
        max_auc_gap: the largest AUC gap over models (what the gate checks).
        max_accuracy_gap: the largest accuracy gap.
        n_real_train: reference rows used to train the TRTR baseline.
        n_real_test: reference rows used for testing.
        n_synthetic: synthetic rows used for training.
    """

    target: str
    models: tuple[ModelUtility, ...]
    max_auc_gap: float
    max_accuracy_gap: float
    n_real_train: int
    n_real_test: int
    n_synthetic: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        d = asdict(self)
        d["models"] = [asdict(m) for m in self.models]
        return d


def _features(t: TabularTransform, df: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    x = t.transform(df[list(t.schema.names)])
    block = next(b for b in t.blocks if b.column.name == target)
    keep = np.r_[0 : block.start, block.start + block.width : t.n_features]
    keys = {k: i for i, k in enumerate(block.column.category_keys)}
    y = df[target].map(lambda v: keys.get(canonical(v), -1)).to_numpy(dtype=int)
    return x[:, keep], y


def _auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, n_classes: int) -> float:
    full = np.zeros((len(y), n_classes))
    full[:, classes] = proba
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, full[:, 1]))
    full = full[:, present] / np.clip(full[:, present].sum(axis=1, keepdims=True), 1e-12, None)
    return float(roc_auc_score(y, full, multi_class="ovr", labels=present))


def _fit_score(
    model: Any, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, k: int
) -> tuple[float, float]:
    if len(np.unique(y)) < 2:  # a generator that emits one class: the model can only predict it
        pred = np.full(len(y_test), y[0] if len(y) else 0)
        return float(accuracy_score(y_test, pred)), 0.5
    # one OpenMP thread: HistGradientBoosting's multi-threaded splitter is ~25x slower on small
    # shared CPUs
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x, y)
        return float(accuracy_score(y_test, model.predict(x_test))), _auc(
            y_test, model.predict_proba(x_test), model.classes_, k
        )


def evaluate_utility(
    reference: pd.DataFrame,
    synthetic: pd.DataFrame,
    *,
    schema: Schema,
    target: str | None = None,
    test_size: float = 0.5,
    max_rows: int = 5000,
    seed: int = 0,
) -> UtilityReport | None:
    """Compare models trained on synthetic vs real rows, both tested on held-out real rows.

    Args:
        reference: the operator's reference table (split into real-train / real-test).
        synthetic: synthetic rows.
        schema: the schema; ``schema.target`` is used when ``target`` is not given.
        target: a categorical or binary column to predict.
        test_size: share of the reference kept for testing.
        max_rows: cap on synthetic training rows.
        seed: split and model seed.

    Returns:
        The report, or ``None`` when there is no categorical target to predict.
    """
    target = target or schema.target
    if target is None or schema.column(target).kind == "numeric":
        return None
    t = TabularTransform(schema)
    x_ref, y_ref = _features(t, reference, target)
    strat = y_ref if np.bincount(y_ref).min(initial=0) >= 2 else None
    x_tr, x_te, y_tr, y_te = train_test_split(
        x_ref, y_ref, test_size=test_size, random_state=seed, stratify=strat
    )
    syn = (
        synthetic.sample(n=max_rows, random_state=seed) if len(synthetic) > max_rows else synthetic
    )
    x_syn, y_syn = _features(t, syn, target)
    k = len(schema.column(target).categories)
    models: list[ModelUtility] = []
    for name, make in (
        ("logistic_regression", lambda: LogisticRegression(max_iter=2000)),
        (
            "gradient_boosting",
            lambda: HistGradientBoostingClassifier(max_iter=100, random_state=seed),
        ),
    ):
        acc_r, auc_r = _fit_score(make(), x_tr, y_tr, x_te, y_te, k)
        acc_s, auc_s = _fit_score(make(), x_syn, y_syn, x_te, y_te, k)
        models.append(ModelUtility(name, acc_r, acc_s, auc_r, auc_s, acc_r - acc_s, auc_r - auc_s))
    return UtilityReport(
        target=target,
        models=tuple(models),
        max_auc_gap=max(m.auc_gap for m in models),
        max_accuracy_gap=max(m.accuracy_gap for m in models),
        n_real_train=len(y_tr),
        n_real_test=len(y_te),
        n_synthetic=len(y_syn),
    )
