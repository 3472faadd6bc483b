"""The demo's site preparation (the federated run itself is covered by tests/integration)."""

from __future__ import annotations

import pandas as pd

from fedsynth.cli.demo import prepare_demo_sites
from fedsynth.common.schema import Schema
from fedsynth.common.validation import load_table


def test_demo_sites_are_non_iid_valid_and_disjoint_from_holdout(tmp_path) -> None:
    # Act
    schema_path, sites, holdout_path = prepare_demo_sites(tmp_path, n_sites=3, seed=0)
    # Assert
    schema = Schema.load(schema_path)
    tables = [load_table(s.data_path, schema) for s in sites]
    assert [s.site_id for s in sites] == ["hospital-a", "hospital-b", "hospital-c"]
    assert all(len(t) >= 50 for t in tables)
    shares = [t["fac_cat1"].value_counts(normalize=True) for t in tables]
    assert max(abs(shares[0].get(k, 0) - shares[1].get(k, 0)) for k in shares[0].index) > 0.05
    holdout = pd.read_csv(holdout_path)
    assert len(holdout) + sum(len(t) for t in tables) == 5735
