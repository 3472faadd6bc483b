"""Utility: TSTR vs TRTR with logistic regression and gradient boosting."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedsynth.audit.utility import evaluate_utility


def test_good_synthetic_data_has_a_small_gap_and_noise_a_large_one(schema, reference, toy) -> None:
    good = evaluate_utility(reference, toy.population(1500, 21), schema=schema)
    assert good is not None and good.target == "death"
    assert {m.model for m in good.models} == {"logistic_regression", "gradient_boosting"}
    assert good.max_auc_gap < 0.08
    assert all(m.trtr_auc > 0.65 for m in good.models)
    rng = np.random.default_rng(0)
    noise = toy.population(1500, 22).assign(
        death=lambda d: d["death"].to_numpy()[rng.permutation(len(d))]
    )
    bad = evaluate_utility(reference, noise, schema=schema)
    assert bad is not None and bad.max_auc_gap > 0.15


def test_one_class_and_no_target(schema, reference, toy) -> None:
    one = evaluate_utility(reference, toy.population(300, 23).assign(death="No"), schema=schema)
    assert one is not None and all(m.tstr_auc == 0.5 for m in one.models)
    assert evaluate_utility(reference, reference, schema=replace(schema, target=None)) is None
    assert (
        evaluate_utility(reference, reference, schema=schema, target="age") is None
    )  # numeric target
