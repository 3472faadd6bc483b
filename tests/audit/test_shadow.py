"""Shadow-model attack with cheap stand-in trainers (the diffusion trainer is exercised in
test_runner)."""

from __future__ import annotations

import numpy as np

from fedsynth.audit.shadow import ShadowConfig, shadow_attack
from fedsynth.common.encoding import TabularTransform


def test_shadow_attack_flags_a_memorising_recipe_only(schema, toy) -> None:
    t = TabularTransform(schema)
    pool = t.transform(toy.population(1200, 31))
    fresh = t.transform(toy.population(3000, 32))

    def copier(data: np.ndarray, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return data[rng.integers(0, len(data), n)] + 0.01 * rng.normal(size=(n, data.shape[1]))

    def ideal(data: np.ndarray, n: int, seed: int) -> np.ndarray:
        return fresh[np.random.default_rng(seed).choice(len(fresh), n, replace=False)]

    cfg = ShadowConfig(n_shadow=6, n_targets=20, train_size=200, n_synthetic=400)
    leaky = shadow_attack(pool, trainer=copier, config=cfg)
    safe = shadow_attack(pool, trainer=ideal, config=cfg)
    assert leaky.n_members == 60 and leaky.n_nonmembers == 60
    assert leaky.auc > 0.9
    assert abs(safe.auc - 0.5) < 0.15
