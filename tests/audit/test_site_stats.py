"""The per-site audit job returns small aggregates only, and they pool across sites."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from fedsynth.audit.site_stats import pool_site_stats, site_audit_stats


def test_site_stats_are_aggregates_and_flag_copies(schema, reference, site_rows, toy) -> None:
    leaky = site_audit_stats(
        site_rows,
        toy.memoriser(site_rows).sample(3000, seed=0),
        schema=schema,
        reference=reference,
        site="a",
    )
    safe = site_audit_stats(
        site_rows,
        toy.independent().sample(1000, seed=0),
        schema=schema,
        reference=reference,
        site="b",
    )
    text = json.dumps(leaky, allow_nan=False)
    # no row values leave the site: every list is a histogram, a ROC curve or a pair of CI ends
    assert len(text) < 60_000
    assert str(site_rows["bmi"].iloc[0])[:8] not in text
    assert leaky["n_rows"] == 800
    assert leaky["dcr_share"]["share"] > 0.9 and abs(safe["dcr_share"]["share"] - 0.5) < 0.06
    assert (
        leaky["mia"]["distance"]["auc"] > 0.9 and abs(safe["mia"]["distance"]["auc"] - 0.5) < 0.06
    )
    assert (
        leaky["dcr_synthetic_to_site"]["quantiles"]["p5"]
        < safe["dcr_synthetic_to_site"]["quantiles"]["p5"]
    )
    pooled = pool_site_stats([leaky, safe])
    assert pooled["n_sites"] == 2
    assert pooled["dcr_share"]["n"] == leaky["dcr_share"]["n"] + safe["dcr_share"]["n"]
    assert pooled["mia"]["distance"]["auc"] == leaky["mia"]["distance"]["auc"]  # worst site wins
    assert [r["site"] for r in pooled["per_site"]] == ["a", "b"]


def test_without_reference_only_distances(schema, site_rows, toy) -> None:
    stats = site_audit_stats(site_rows, toy.independent().sample(300, seed=1), schema=schema)
    assert set(stats) == {
        "version",
        "site",
        "n_rows",
        "dcr_synthetic_to_site",
        "nndr_synthetic_to_site",
    }
    assert np.isfinite(stats["dcr_synthetic_to_site"]["mean"])


def test_planted_canaries_are_excluded(schema, reference, site_rows, toy) -> None:
    from fedsynth.audit.canary import make_canaries

    canaries = make_canaries(schema, n=20, seed=3)
    rows = pd.concat([site_rows, canaries.members], ignore_index=True)
    stats = site_audit_stats(
        rows, toy.independent().sample(300, seed=2), schema=schema, exclude=canaries.members
    )
    assert stats["n_rows"] == 800
