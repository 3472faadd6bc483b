"""A site's round without Flower: replay without re-spending, budget refusal, validation errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedsynth.client.site import RoundRequest, SiteSettings, run_config_from, train_round
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import ConfigError, DataValidationError, PrivacyBudgetExceeded
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.schema import Schema

SCHEMA = Schema.from_dict({
    "version": 1, "name": "t", "target": None,
    "columns": [
        {"name": "age", "kind": "numeric", "lower": 0.0, "upper": 120.0, "integer": True},
        {"name": "sex", "kind": "binary", "categories": ["F", "M"]},
    ],
})
CFG = run_config_from({"num-server-rounds": 2, "local-steps": 2, "batch-size": 32, "unet-dim": 8,
                       "unet-seq-len": 8, "diffusion-steps": 20, "output-dir": "ignored"})


@pytest.fixture()
def site(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "site.csv"
    pd.DataFrame({"age": rng.integers(20, 80, 120), "sex": rng.choice(["F", "M"], 120)}).to_csv(path, index=False)
    return SiteSettings.from_node_config(
        {"data-path": str(path), "epsilon-budget": 3.0, "site-id": "s", "ledger-path": str(tmp_path / "l.json")},
        node_id=7)


def _request(round_: int, state=None, cfg=CFG) -> RoundRequest:
    if state is None:
        state = TabularUNet1D(cfg.model_config(TabularTransform(SCHEMA).n_features)).state_dict()
    return RoundRequest(run_key="run", server_round=round_, schema=SCHEMA, run_config=cfg, state_dict=state)


def test_node_config_requires_data_path_and_budget() -> None:
    with pytest.raises(ConfigError, match="data-path"):
        SiteSettings.from_node_config({"epsilon-budget": 1.0}, node_id=1)
    with pytest.raises(ConfigError, match="epsilon-budget"):
        SiteSettings.from_node_config({"data-path": "x.csv"}, node_id=1)


def test_replayed_round_is_answered_from_cache_without_spending(site) -> None:
    # Arrange
    request = _request(1)
    first = train_round(site, request)
    # Act
    again = train_round(site, request)
    # Assert
    ledger = json.loads(site.ledger_path.read_text())
    assert not first.replayed and again.replayed
    assert len(ledger["rounds"]) == 1
    assert again.metrics == first.metrics
    assert first.metrics["epsilon"] == pytest.approx(ledger["spent_epsilon"])
    assert set(first.metrics) >= {"loss", "epsilon", "delta", "noise-multiplier", "sample-rate", "steps",
                                  "num-examples"}


def test_round_already_spent_without_cache_is_refused(site) -> None:
    request = _request(1)
    train_round(site, request)
    site.cache_path.unlink()
    with pytest.raises(Exception, match="spend epsilon twice"):
        train_round(site, request)


def test_budget_is_never_exceeded(site) -> None:
    # Arrange: a fixed, small noise multiplier spends the budget fast
    cfg = run_config_from({**CFG.to_user_config(), "noise-multiplier": 0.7, "num-server-rounds": 50})
    state = None
    # Act / Assert
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        for r in range(1, 51):
            state = train_round(site, _request(r, state, cfg)).state_dict
    if site.ledger_path.exists():
        assert json.loads(site.ledger_path.read_text())["spent_epsilon"] <= 3.0


def test_invalid_table_names_file_row_and_column(site, tmp_path) -> None:
    pd.DataFrame({"age": [30, 500], "sex": ["F", "M"]}).to_csv(site.data_path, index=False)
    with pytest.raises(DataValidationError) as err:
        train_round(site, _request(1))
    issue = err.value.issues[0]
    assert issue.row == 2 and issue.column == "age" and str(site.data_path) in issue.file


def test_site_with_a_pinned_schema_refuses_a_different_server_schema(site, tmp_path) -> None:
    # Arrange: the site declared a schema where 'age' has other bounds than the server's
    pinned = Schema.from_dict({**SCHEMA.to_dict(), "columns": [
        {"name": "age", "kind": "numeric", "lower": 0.0, "upper": 100.0, "integer": True},
        {"name": "sex", "kind": "binary", "categories": ["F", "M"]},
    ]})
    pinned_path = pinned.save(tmp_path / "declared.json")
    same_path = SCHEMA.save(tmp_path / "same.json")
    base = {"data-path": str(site.data_path), "epsilon-budget": 3.0, "site-id": "s",
            "ledger-path": str(tmp_path / "pinned-ledger.json")}
    # Act / Assert
    differing = SiteSettings.from_node_config({**base, "schema-path": str(pinned_path)}, node_id=7)
    with pytest.raises(ConfigError, match="differs from the site's declared schema"):
        train_round(differing, _request(1))
    assert not (tmp_path / "pinned-ledger.json").exists()  # nothing spent
    matching = SiteSettings.from_node_config({**base, "schema-path": str(same_path)}, node_id=7)
    assert train_round(matching, _request(1)).metrics["epsilon"] > 0
