"""A site's warm state: the validated table is reused only while the file is unchanged; hints warm a parent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.client import warm as warm_module
from fedsynth.client.site import RoundRequest, SiteSettings, run_config_from, train_round
from fedsynth.client.warm import WarmHint, encoded_table, take_hints, warm
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.errors import DataValidationError
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.schema import Schema

SCHEMA = Schema.from_dict({
    "version": 1, "name": "t", "target": None,
    "columns": [
        {"name": "age", "kind": "numeric", "lower": 0.0, "upper": 120.0, "integer": True},
        {"name": "sex", "kind": "binary", "categories": ["F", "M"]},
    ],
})


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    warm_module.clear()


@pytest.fixture()
def table(tmp_path: Path) -> Path:
    path = tmp_path / "site.csv"
    path.write_text("age,sex\n30,F\n40,M\n50,F\n")
    return path


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths read and validated through ``load_table`` (cache misses)."""
    seen: list[Path] = []
    original = warm_module.load_table

    def counting(path: Path, schema: Schema) -> pd.DataFrame:
        seen.append(Path(path))
        return original(path, schema)

    monkeypatch.setattr(warm_module, "load_table", counting)
    return seen


def test_an_unchanged_table_is_validated_once_and_handed_out_as_copies(table: Path, loads: list[Path]) -> None:
    # Act
    first = encoded_table(table, SCHEMA)
    first[:] = 99.0  # the caller may scribble on its copy
    second = encoded_table(table, SCHEMA)
    # Assert
    assert loads == [table]
    assert second.dtype == np.float32 and second.shape == (3, TabularTransform(SCHEMA).n_features)
    assert not np.any(second == 99.0)


def test_a_changed_file_is_validated_again_even_with_the_same_size_and_mtime(table: Path,
                                                                            loads: list[Path]) -> None:
    # Arrange
    before = encoded_table(table, SCHEMA)
    stat = table.stat()
    table.write_text("age,sex\n31,F\n40,M\n50,F\n")  # same size
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # Act
    after = encoded_table(table, SCHEMA)
    # Assert
    assert len(loads) == 2
    assert not np.array_equal(before, after)


def test_a_table_broken_after_caching_is_refused(table: Path) -> None:
    # Arrange
    encoded_table(table, SCHEMA)
    table.write_text("age,sex\n300,F\n")
    # Act / Assert
    with pytest.raises(DataValidationError):
        encoded_table(table, SCHEMA)


def test_another_schema_is_validated_on_its_own(table: Path, loads: list[Path]) -> None:
    # Arrange
    other = Schema.from_dict({**SCHEMA.to_dict(), "columns": [SCHEMA.to_dict()["columns"][0]]})
    # Act
    encoded_table(table, SCHEMA)
    narrow = encoded_table(table, other)
    # Assert
    assert len(loads) == 2 and narrow.shape[1] == TabularTransform(other).n_features


def test_hints_survive_json_and_reject_garbage() -> None:
    hint = WarmHint(data_path="/x.csv", schema=SCHEMA.to_dict(), rdp_terms=((0.1, 1.0),))

    assert WarmHint.from_json(hint.to_json()) == hint
    with pytest.raises(ValueError):
        WarmHint.from_json('{"data_path": "/x.csv"')


def test_only_the_latest_hint_per_table_and_schema_is_kept() -> None:
    # Arrange
    first = WarmHint(data_path="/a.csv", schema=SCHEMA.to_dict(), rdp_terms=((0.1, 1.0),))
    second = WarmHint(data_path="/a.csv", schema=SCHEMA.to_dict(), rdp_terms=((0.1, 1.0), (0.2, 1.0)))
    # Act
    warm_module.record_hint(first)
    warm_module.record_hint(second)
    for i in range(warm_module.MAX_TABLES + 2):
        warm_module.record_hint(WarmHint(data_path=f"/other{i}.csv", schema=SCHEMA.to_dict()))
    kept = take_hints()
    # Assert
    assert len(kept) == warm_module.MAX_TABLES and second not in kept  # the oldest ones went first
    warm_module.record_hint(first)
    warm_module.record_hint(second)
    assert take_hints() == [second]


def test_warm_fills_the_cache_and_ignores_an_invalid_table(table: Path, tmp_path: Path,
                                                          loads: list[Path]) -> None:
    # Arrange
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\nold,F\n")
    hints = [WarmHint(data_path=str(bad), schema=SCHEMA.to_dict()),
             WarmHint(data_path=str(table), schema=SCHEMA.to_dict(), rdp_terms=((0.25, 1.1),))]
    # Act
    warm(hints)
    encoded_table(table, SCHEMA)
    # Assert
    assert loads == [bad, table]  # the valid table was read once, by warm()


def test_a_trained_round_reports_its_own_time_and_leaves_a_hint(tmp_path: Path) -> None:
    # Arrange
    rng = np.random.default_rng(0)
    path = tmp_path / "site.csv"
    pd.DataFrame({"age": rng.integers(20, 80, 120), "sex": rng.choice(["F", "M"], 120)}).to_csv(path, index=False)
    settings = SiteSettings(data_path=path, epsilon_budget=50.0, ledger_path=tmp_path / "l.json", site_id="s")
    cfg = run_config_from({"num-server-rounds": 2, "local-steps": 2, "batch-size": 32, "unet-dim": 8,
                           "unet-seq-len": 8, "diffusion-steps": 20, "noise-multiplier": 1.0})
    state = TabularUNet1D(cfg.model_config(TabularTransform(SCHEMA).n_features)).state_dict()
    # Act
    outcome = train_round(settings, RoundRequest(run_key="r", server_round=1, schema=SCHEMA, run_config=cfg,
                                                 state_dict=state))
    hints = take_hints()
    # Assert
    assert outcome.metrics["site-seconds"] > 0
    assert hints == [WarmHint(data_path=str(path), schema=SCHEMA.to_dict(),
                              rdp_terms=((outcome.metrics["sample-rate"], 1.0),))]
    assert take_hints() == []
