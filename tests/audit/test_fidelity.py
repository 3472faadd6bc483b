"""Fidelity scores (SDMetrics QualityReport formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.audit.fidelity import evaluate_fidelity


def test_same_distribution_scores_high_and_broken_pairs_lower(schema, toy) -> None:
    real, syn = toy.population(1500, 1), toy.population(1500, 2)
    good = evaluate_fidelity(real, syn, schema=schema)
    assert good.overall > 0.9 and good.column_shapes > 0.9 and good.column_pair_trends > 0.9
    # shuffling each column independently keeps the marginals but destroys pairwise trends
    rng = np.random.default_rng(0)
    shuffled = syn.apply(lambda c: c.to_numpy()[rng.permutation(len(c))])
    bad = evaluate_fidelity(real, shuffled, schema=schema)
    assert bad.column_shapes == pytest.approx(good.column_shapes, abs=1e-9)
    assert bad.column_pair_trends < good.column_pair_trends - 0.03
    # a shifted column lowers its own shape score
    shifted = syn.assign(age=np.clip(syn["age"] + 20, 18, 100))
    assert evaluate_fidelity(real, shifted, schema=schema).per_column["age"] < 0.6


def test_column_shapes_match_sdmetrics(schema, toy) -> None:
    from sdmetrics.single_column import KSComplement, TVComplement

    real, syn = toy.population(600, 3), toy.population(600, 4).assign(bmi=lambda d: d["bmi"] * 1.1)
    ours = evaluate_fidelity(real, syn, schema=schema).per_column
    for col in schema.columns:
        metric = KSComplement if col.kind == "numeric" else TVComplement
        assert ours[col.name] == pytest.approx(
            metric.compute(real[col.name], syn[col.name]), abs=1e-9
        ), col.name
