"""DOMIAS density-ratio attack."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.audit.domias import DomiasConfig, domias_scores
from fedsynth.audit.mia import evaluate_attack
from fedsynth.common.encoding import TabularTransform


@pytest.mark.parametrize("model", ["kde", "gmm"])
def test_density_ratio_separates_members_of_a_memoriser(schema, toy, model: str) -> None:
    t = TabularTransform(schema)
    train = toy.population(300, seed=11)
    members, nonmembers, ref = (
        t.transform(train),
        t.transform(toy.population(300, 12)),
        t.transform(toy.population(1000, 13)),
    )
    cand = np.concatenate([members, nonmembers])
    labels = np.r_[np.ones(300), np.zeros(300)]
    cfg = DomiasConfig(model=model, bandwidth=0.3 if model == "kde" else None)
    leaky = evaluate_attack(
        "domias",
        domias_scores(
            cand, t.transform(toy.memoriser(train).sample(2000, seed=1)), ref, config=cfg
        ),
        labels,
        n_bootstrap=50,
    )
    safe = evaluate_attack(
        "domias",
        domias_scores(cand, t.transform(toy.independent().sample(2000, seed=1)), ref, config=cfg),
        labels,
        n_bootstrap=50,
    )
    # a KDE with a small bandwidth sees the memorised points; a 10-component GMM only a little
    assert leaky.auc > (0.7 if model == "kde" else 0.53)
    assert abs(safe.auc - 0.5) < 0.08


def test_unknown_density_model(schema) -> None:
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="density model"):
        domias_scores(x, x, x, config=DomiasConfig(model="flow"))  # type: ignore[arg-type]
