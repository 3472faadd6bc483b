"""DP-SGD training rows/s (Opacus hooks and ghost clipping) against the same model trained without privacy."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from bench.data import default_model_config, rhc_encoded
from bench.timing import Figure, interleaved
from fedsynth.common.config import RunConfig
from fedsynth.common.model import ModelConfig, TabularUNet1D
from fedsynth.common.training import train_dp, train_nonprivate

GOAL = ">= 0.7 of non-private"


def _rate_np(model: TabularUNet1D, data: np.ndarray, cfg: RunConfig, steps: int) -> float:
    import time

    start = time.perf_counter()
    r = train_nonprivate(model, data, scheduler_config=cfg.scheduler_config(), batch_size=cfg.batch_size,
                         steps=steps, lr=cfg.lr, seed=0)
    return r.steps * min(cfg.batch_size, len(data)) / (time.perf_counter() - start)


def _rate_dp(model: TabularUNet1D, data: np.ndarray, cfg: RunConfig, steps: int, mode: str) -> float:
    import time

    start = time.perf_counter()
    r = train_dp(model, data, scheduler_config=cfg.scheduler_config(), noise_multiplier=1.0,
                 max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size, steps=steps, lr=cfg.lr,
                 delta=cfg.target_delta, seed=0, grad_sample_mode=mode)
    # Poisson sampling: rows per step are random; count the expected batch (sample rate x table size)
    return r.steps * r.sample_rate * len(data) / (time.perf_counter() - start)


def candidate_configs(n_features: int, quick: bool) -> dict[str, ModelConfig]:
    """The default denoiser and leaner alternatives (same topology, fewer per-sample-gradient entries)."""
    base = default_model_config(n_features)
    if quick:
        return {"default": base}
    return {
        "default": base,
        "seq_len=8": replace(base, seq_len=8),
        "dim_mults=(1,)": replace(base, dim_mults=(1,)),
    }


def run(*, quick: bool, device: str) -> list[Figure]:
    """Measure rows/s for non-private, hooks and ghost training per candidate config."""
    data = rhc_encoded()
    cfg = RunConfig()
    steps, repeats = (2, 1) if quick else (12, 3)
    if quick:
        data = data[:512]
    note = f"{len(data)} rows x {data.shape[1]} features, batch {cfg.batch_size}, {steps} steps x {repeats}, CPU"
    out: list[Figure] = []
    for label, mc in candidate_configs(data.shape[1], quick).items():
        torch.manual_seed(0)
        model = TabularUNet1D(mc)
        n_params = sum(p.numel() for p in model.parameters())
        rates = interleaved(
            {
                "non-private": lambda: _rate_np(model, data, cfg, steps),
                "dp hooks": lambda: _rate_dp(model, data, cfg, steps, "hooks"),
                "dp ghost": lambda: _rate_dp(model, data, cfg, steps, "ghost"),
            },
            repeats=repeats,
            warmup=0 if quick else 1,
        )
        base = rates["non-private"]
        baseline = f"non-private [{label}]"
        out.append(Figure("train", baseline, base, "rows/s", note=f"{n_params:,} params; {note}"))
        for name in ("dp hooks", "dp ghost"):
            out.append(Figure("train", f"{name} [{label}]", rates[name], "rows/s", rates[name] / base, baseline, GOAL))
    out.extend(_threads(data, cfg, steps, repeats))
    return out


def _threads(data: np.ndarray, cfg: RunConfig, steps: int, repeats: int) -> list[Figure]:
    """Non-private training at torch's default thread count (one per core) against one thread."""
    model = TabularUNet1D(default_model_config(data.shape[1]))
    chosen = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if cores == chosen:
        return []

    def at(threads: int) -> float:
        torch.set_num_threads(threads)
        try:
            return _rate_np(model, data, cfg, steps)
        finally:
            torch.set_num_threads(chosen)

    rates = interleaved({"chosen": lambda: at(chosen), "cores": lambda: at(cores)}, repeats=repeats, warmup=0)
    baseline = f"non-private [default], {chosen} torch thread(s)"
    return [Figure("train", f"non-private [default], {cores} torch threads", rates["cores"], "rows/s",
                   rates["cores"] / rates["chosen"], baseline, note="thread-count check")]
