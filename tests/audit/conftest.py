"""Fixtures for the audit tests: a small clinical-looking schema, a population sampler and fake
generators."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.schema import Column, Schema

NUMERIC = {
    "age": (18, 100),
    "bmi": (10, 60),
    "hr": (30, 200),
    "temp": (30, 43),
    "sodium": (110, 160),
    "wbc": (0, 100),
}


def toy_schema() -> Schema:
    """Six numeric, five categorical/binary columns, target ``death``."""
    cols = [
        Column(n, "numeric", lo, hi, integer=n in ("age", "hr")) for n, (lo, hi) in NUMERIC.items()
    ]
    cols += [
        Column("sex", "binary", categories=("F", "M")),
        Column("race", "categorical", categories=("white", "black", "other")),
        Column("dnr", "binary", categories=("No", "Yes")),
        Column("cat1", "categorical", categories=("a", "b", "c", "d", "e")),
        Column("death", "binary", categories=("No", "Yes")),
    ]
    return Schema(columns=tuple(cols), target="death", name="toy")


def population(n: int, seed: int) -> pd.DataFrame:
    """Draw ``n`` rows of the toy population (correlated numerics, outcome depending on them)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    age = np.clip(np.round(60 + 12 * z + 5 * rng.normal(size=n)), 18, 100)
    bmi = np.clip(27 + 3 * z + 4 * rng.normal(size=n), 10, 60)
    hr = np.clip(np.round(90 - 8 * z + 15 * rng.normal(size=n)), 30, 200)
    temp = np.clip(37.5 + 0.8 * rng.normal(size=n), 30, 43)
    sodium = np.clip(137 + 2 * z + 4 * rng.normal(size=n), 110, 160)
    wbc = np.clip(np.abs(12 + 4 * z + 5 * rng.normal(size=n)), 0, 100)
    sex = np.where(rng.random(n) < 0.45 + 0.1 * (z > 0), "M", "F")
    race = rng.choice(["white", "black", "other"], size=n, p=[0.7, 0.2, 0.1])
    dnr = np.where(rng.random(n) < 1 / (1 + np.exp(-(age - 75) / 5)), "Yes", "No")
    cat1 = rng.choice(list("abcde"), size=n, p=[0.4, 0.2, 0.2, 0.1, 0.1])
    logit = 0.08 * (age - 60) + 0.02 * (hr - 90) + 1.2 * (dnr == "Yes") - 0.3
    death = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    return pd.DataFrame(
        {
            "age": age.astype(np.int64),
            "bmi": bmi,
            "hr": hr.astype(np.int64),
            "temp": temp,
            "sodium": sodium,
            "wbc": wbc,
            "sex": sex,
            "race": race,
            "dnr": dnr,
            "cat1": cat1,
            "death": death,
        }
    )


class FakeGenerator:
    """Quacks like ``fedsynth.common.artifact.Generator``: ``sample(n, *, seed) -> DataFrame``."""

    def __init__(self, draw: Callable[[int, int], pd.DataFrame]) -> None:
        self._draw = draw

    def sample(self, n: int, *, seed: int = 0, **_: object) -> pd.DataFrame:
        return self._draw(n, seed)


def memoriser(train: pd.DataFrame, *, jitter: float = 0.002) -> FakeGenerator:
    """A generator that emits near-copies of its training rows (a deliberately overfitted model)."""

    def draw(n: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        out = train.iloc[rng.integers(0, len(train), n)].reset_index(drop=True).copy()
        for name, (lo, hi) in NUMERIC.items():
            v = out[name].to_numpy(dtype=float) + jitter * (hi - lo) * rng.normal(size=n)
            out[name] = (
                np.clip(np.round(v), lo, hi).astype(np.int64)
                if name in ("age", "hr")
                else np.clip(v, lo, hi)
            )
        return out

    return FakeGenerator(draw)


def independent() -> FakeGenerator:
    """An ideal generator: fresh draws from the population, independent of any training row."""
    return FakeGenerator(lambda n, seed: population(n, 10_000 + seed))


@pytest.fixture(scope="session")
def schema() -> Schema:
    return toy_schema()


@pytest.fixture(scope="module", autouse=True)
def _single_threaded() -> Iterator[None]:
    """One BLAS/OpenMP/torch thread: on small shared CPUs, thread oversubscription makes
    HistGradientBoosting and torch training 10-25x slower."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference() -> pd.DataFrame:
    """The auditor's holdout: never used for training."""
    return population(1500, seed=3)


@pytest.fixture(scope="session")
def site_rows() -> pd.DataFrame:
    """A site's own training rows (without canaries)."""
    return population(800, seed=1)


@pytest.fixture(scope="session")
def toy() -> SimpleNamespace:
    """The toy helpers as one fixture: ``toy.population``, ``toy.memoriser``,
    ``toy.independent``."""
    return SimpleNamespace(population=population, memoriser=memoriser, independent=independent)
