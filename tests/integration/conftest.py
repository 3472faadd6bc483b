"""Shared fixtures for the Flower process tests: tiny site tables, a declared schema, a tiny run config."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli.federation import SiteSpec
from fedsynth.common.schema import Schema

SCHEMA = {
    "version": 1, "name": "tiny", "target": None,
    "columns": [
        {"name": "age", "kind": "numeric", "lower": 0.0, "upper": 120.0, "integer": True},
        {"name": "hr", "kind": "numeric", "lower": 20.0, "upper": 250.0},
        {"name": "sex", "kind": "binary", "categories": ["F", "M"]},
        {"name": "unit", "kind": "categorical", "categories": ["icu", "ward", "er"]},
    ],
}

#: Small enough for 2 busy cores: ~17k parameters, 2 DP steps per round.
TINY_RUN_CONFIG = {
    "local-steps": 2, "batch-size": 64, "unet-dim": 8, "unet-seq-len": 8, "unet-dim-mults": "1,2",
    "diffusion-steps": 50, "target-epsilon": 3.0, "round-timeout": 300.0, "public-pretrain-steps": 5,
}


def _table(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    return pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "hr": (rng.normal(80 + shift, 10, n)).round(1),
        "sex": rng.choice(["M", "F"], n),
        "unit": rng.choice(["icu", "ward", "er"], n, p=[0.6, 0.3, 0.1] if shift else [0.2, 0.3, 0.5]),
    })


@pytest.fixture()
def federation_data(tmp_path: Path) -> Callable[..., tuple[Path, list[SiteSpec]]]:
    """Write ``n_sites`` tiny non-IID site tables and the schema; return (schema path, site specs)."""

    def make(n_sites: int = 2, rows: int = 150, budget: float = 5.0) -> tuple[Path, list[SiteSpec]]:
        rng = np.random.default_rng(0)
        schema_path = tmp_path / "schema.json"
        Schema.from_dict(SCHEMA).save(schema_path)
        sites = []
        for i in range(n_sites):
            sid = f"site-{chr(ord('a') + i)}"
            path = tmp_path / "data" / f"{sid}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            _table(rng, rows, shift=10.0 * i).to_csv(path, index=False)
            sites.append(SiteSpec(sid, path, budget, ledger_path=tmp_path / "ledgers" / f"{sid}.json"))
        return schema_path, sites

    return make


def wait_for_round(state_file: Path, round_number: int, *, timeout: float = 300.0) -> dict:
    """Block until the server checkpoint reports ``round_number`` completed rounds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_file.exists():
            try:
                state = json.loads(state_file.read_text())
            except json.JSONDecodeError:
                state = {}
            if state.get("completed_round", 0) >= round_number:
                return state
        time.sleep(0.2)
    raise TimeoutError(f"round {round_number} not checkpointed in {timeout}s")
