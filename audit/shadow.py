"""Shadow-model membership attack: train small generators with and without target rows, then test.

This estimates how much the *training recipe* leaks about single records, on data the auditor holds
(the reference table), so no site data is needed. Following the "shadow model" attacks on synthetic
data (Stadler et al., USENIX Security 2022) in a LiRA-like, cheap form (Carlini et al., S&P 2022):

1. every shadow generator is trained on a random subset of the reference pool plus a random half of
   the target rows (so each target is IN for about half of the shadow models and OUT for the rest);
2. each target is scored against each shadow model's synthetic sample by minus its distance to the
   closest synthetic row, centred per target across the shadow models (this removes how "typical" a
   target is);
3. the AUC of those scores against the IN/OUT truth over all (target, shadow model) games is
   reported.

Training is pluggable (:data:`ShadowTrainer`) so tests can use cheap fake generators;
:func:`diffusion_trainer` trains the project's diffusion model, kept tiny (few steps) to fit a CPU
budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsynth.audit.distance import dcr
from fedsynth.audit.index import Backend
from fedsynth.audit.mia import MiaResult, evaluate_attack

ShadowTrainer = Callable[[np.ndarray, int, int], np.ndarray]
"""``trainer(train_rows, n_synthetic, seed) -> synthetic_rows`` on encoded arrays."""


@dataclass(frozen=True)
class ShadowConfig:
    """Cost knobs of the shadow attack.

    Args:
        n_shadow: shadow generators trained.
        n_targets: target rows (taken from the reference table, worst-case outliers first).
        train_size: reference rows in each shadow training set (besides the targets).
        n_synthetic: rows sampled from each shadow generator.
        seed: random seed.
    """

    n_shadow: int = 4
    n_targets: int = 20
    train_size: int = 300
    n_synthetic: int = 300
    seed: int = 0


def shadow_attack(
    pool: np.ndarray,
    *,
    trainer: ShadowTrainer,
    config: ShadowConfig | None = None,
    targets: np.ndarray | None = None,
    delta: float = 0.0,
    backend: Backend = "auto",
) -> MiaResult:
    """Run the shadow-model attack.

    Args:
        pool: encoded reference rows to draw shadow training sets from, shape ``(n, F)``.
        trainer: trains a generator and returns its synthetic sample.
        config: cost knobs.
        targets: encoded target rows; by default the ``n_targets`` pool rows farthest from their
            nearest neighbour in the pool (outliers are the most exposed records).
        delta: delta for the empirical epsilon bound.
        backend: nearest-neighbour backend.

    Returns:
        The attack's figures over all (target, shadow model) games.
    """
    cfg = config or ShadowConfig()
    rng = np.random.default_rng(cfg.seed)
    pool = np.asarray(pool, dtype=np.float32)
    if targets is None:
        from fedsynth.audit.index import make_index

        d, _ = make_index(pool, backend=backend).search(pool, 2)
        order = np.argsort(-d[:, 1])
        tgt_idx = order[: cfg.n_targets]
        targets = pool[tgt_idx]
        pool = np.delete(pool, tgt_idx, axis=0)
    targets = np.asarray(targets, dtype=np.float32)
    n_t = len(targets)
    scores = np.empty((n_t, cfg.n_shadow))
    member = np.zeros((n_t, cfg.n_shadow), dtype=int)
    inside = np.arange(0)
    for j in range(cfg.n_shadow):
        # pairs of shadow models: a random half of the targets IN, then exactly the other half IN
        inside = (
            rng.permutation(n_t)[: n_t // 2] if j % 2 == 0 else np.setdiff1d(np.arange(n_t), inside)
        )
        member[inside, j] = 1
        base = pool[rng.choice(len(pool), min(cfg.train_size, len(pool)), replace=False)]
        data = np.concatenate([base, targets[inside]])
        syn = trainer(data[rng.permutation(len(data))], cfg.n_synthetic, cfg.seed + 1000 * (j + 1))
        scores[:, j] = -dcr(targets, np.asarray(syn, dtype=np.float32), backend=backend)
    centred = scores - scores.mean(axis=1, keepdims=True)
    return evaluate_attack(
        "shadow",
        centred.ravel(),
        member.ravel(),
        delta=delta,
        seed=cfg.seed,
        notes=f"{cfg.n_shadow} shadow generators x {n_t} targets; "
        "measures the training recipe on reference data",
    )


def diffusion_trainer(
    *,
    n_features: int,
    model_config: object,
    scheduler_config: object,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 2e-3,
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    delta: float = 1e-5,
    sample_steps: int = 20,
    grad_sample_mode: str = "bookkeeping",
) -> ShadowTrainer:
    """A :data:`ShadowTrainer` that trains the project's diffusion denoiser (DP when
    ``noise_multiplier``).

    Args:
        n_features: encoded row width.
        model_config: a :class:`fedsynth.common.model.ModelConfig`.
        scheduler_config: a :class:`fedsynth.common.scheduler.SchedulerConfig`.
        steps: optimizer steps per shadow model.
        batch_size: batch size.
        lr: learning rate.
        noise_multiplier: DP-SGD noise; ``None`` trains without privacy.
        max_grad_norm: DP-SGD clipping norm.
        delta: DP delta.
        sample_steps: DDIM steps when sampling.
        grad_sample_mode: per-sample clipping engine (see ``train_dp``; ``bookkeeping`` is the fastest).
    """

    def train(data: np.ndarray, n_synthetic: int, seed: int) -> np.ndarray:
        import torch

        from fedsynth.common.model import TabularUNet1D
        from fedsynth.common.sampling import make_sampler, sample
        from fedsynth.common.training import train_dp, train_nonprivate

        torch.manual_seed(seed)
        model = TabularUNet1D(model_config)  # type: ignore[arg-type]
        if noise_multiplier is None:
            res = train_nonprivate(
                model,
                data,
                scheduler_config=scheduler_config,
                batch_size=batch_size,  # type: ignore[arg-type]
                steps=steps,
                lr=lr,
                seed=seed,
            )
        else:
            res = train_dp(
                model,
                data,
                scheduler_config=scheduler_config,
                noise_multiplier=noise_multiplier,  # type: ignore[arg-type]
                max_grad_norm=max_grad_norm,
                batch_size=batch_size,
                steps=steps,
                lr=lr,
                delta=delta,
                seed=seed,
                grad_sample_mode=grad_sample_mode,
            )
        model.load_state_dict(res.state_dict)
        gen = torch.Generator().manual_seed(seed + 1)
        x = sample(
            model,
            make_sampler(scheduler_config),
            n_synthetic,
            n_features=n_features,  # type: ignore[arg-type]
            num_inference_steps=sample_steps,
            generator=gen,
        )
        return x.numpy()

    return train
