"""DP-SGD training rows/s (our single-backward book-keeping engine, Opacus ghost clipping and Opacus hooks)
against the same model trained without privacy.

Each figure is a whole ``train_dp`` / ``train_nonprivate`` call of ``RunConfig().local_steps`` steps (one round of
local training, set-up and epsilon included), timed by this process's CPU time: with one torch thread that is
the wall time on an idle machine, and other processes on a shared box cannot inflate it by taking the core away.
Candidates are interleaved, so cache pressure from other processes hits them alike.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
import torch

from bench.data import default_model_config, rhc_encoded
from bench.timing import Figure, interleaved
from fedsynth.common.config import RunConfig
from fedsynth.common.model import ModelConfig, TabularUNet1D
from fedsynth.common.training import train_dp, train_nonprivate

GOAL = ">= 0.7 of non-private"
DP_MODES = ("dp bookkeeping", "dp ghost", "dp hooks")


def _rate_np(model: TabularUNet1D, data: np.ndarray, cfg: RunConfig, steps: int, clock=time.process_time,
             device: str = "cpu") -> float:
    start = clock()
    r = train_nonprivate(model, data, scheduler_config=cfg.scheduler_config(), batch_size=cfg.batch_size,
                         steps=steps, lr=cfg.lr, seed=0, device=device)
    return r.steps * min(cfg.batch_size, len(data)) / (clock() - start)


def _rate_dp(
    model: TabularUNet1D, data: np.ndarray, cfg: RunConfig, steps: int, mode: str, clock=time.process_time,
    device: str = "cpu",
) -> float:
    start = clock()
    r = train_dp(model, data, scheduler_config=cfg.scheduler_config(), noise_multiplier=1.0,
                 max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size, steps=steps, lr=cfg.lr,
                 delta=cfg.target_delta, seed=0, grad_sample_mode=mode, device=device)
    # Poisson sampling: rows per step are random; count the expected batch (sample rate x table size)
    return r.steps * r.sample_rate * len(data) / (clock() - start)


def _dp_timer(model: TabularUNet1D, data: np.ndarray, cfg: RunConfig, steps: int, mode: str, clock,
              device: str):
    return lambda: _rate_dp(model, data, cfg, steps, mode, clock, device)


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


def run(*, quick: bool, device: str, batch_size: int | None = None, lean: bool = False) -> list[Figure]:
    """Measure rows/s for non-private, hooks and ghost training per candidate config.

    On the CPU each figure is this process's CPU time; on a GPU (``device="cuda"``) it is wall time (every
    step ends in a device sync: the loss is read back), and the both-cores rows are skipped. ``batch_size``
    overrides the run default (512), e.g. to show where a GPU stops being bound by per-step overheads.
    ``lean`` times only the default denoiser, non-private against the default engine (book-keeping).
    """
    data = rhc_encoded()
    cfg = RunConfig() if batch_size is None else replace(RunConfig(), batch_size=batch_size)
    steps, repeats = (2, 1) if quick else (cfg.local_steps, 3)
    if quick:
        data = data[:512]
    gpu = device != "cpu"
    clock = time.perf_counter if gpu else time.process_time
    note = (f"{len(data)} rows x {data.shape[1]} features, batch {cfg.batch_size}, {steps} steps x {repeats}, "
            + (f"wall time on {device}" if gpu else "CPU time"))
    out: list[Figure] = []
    configs = candidate_configs(data.shape[1], quick or lean)
    modes = DP_MODES[:1] if lean else DP_MODES
    for label, mc in configs.items():
        torch.manual_seed(0)
        model = TabularUNet1D(mc)
        n_params = sum(p.numel() for p in model.parameters())
        rates = interleaved(
            {
                "non-private": lambda m=model: _rate_np(m, data, cfg, steps, clock, device),
                **{name: _dp_timer(model, data, cfg, steps, name.split()[1], clock, device) for name in modes},
            },
            repeats=repeats,
            warmup=0 if quick else 1,
        )
        base = rates["non-private"]
        baseline = f"non-private [{label}]"
        out.append(Figure("train", baseline, base, "rows/s", note=f"{n_params:,} params; {note}"))
        for name in modes:
            out.append(Figure("train", f"{name} [{label}]", rates[name], "rows/s", rates[name] / base, baseline, GOAL))
    if not gpu and not lean:
        out.extend(_threads(data, cfg, steps, repeats))
    return out


def _threads(data: np.ndarray, cfg: RunConfig, steps: int, repeats: int) -> list[Figure]:
    """Both cores: non-private and book-keeping DP at one torch thread per core, by wall time (CPU time would
    count both threads)."""
    model = TabularUNet1D(default_model_config(data.shape[1]))
    chosen = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if cores == chosen:
        return []

    def at(threads: int, fn) -> float:
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(chosen)

    wall = time.perf_counter
    rates = interleaved(
        {
            "np 1": lambda: at(chosen, lambda: _rate_np(model, data, cfg, steps, wall)),
            "np n": lambda: at(cores, lambda: _rate_np(model, data, cfg, steps, wall)),
            "bk n": lambda: at(cores, lambda: _rate_dp(model, data, cfg, steps, "bookkeeping", wall)),
        },
        repeats=repeats,
        warmup=0,
    )
    base1 = f"non-private [default], {chosen} torch thread(s), wall"
    base_n = f"non-private [default], {cores} torch threads, wall"
    return [
        Figure("train", base_n, rates["np n"], "rows/s", rates["np n"] / rates["np 1"], base1,
               note="thread-count check (wall time)"),
        Figure("train", f"dp bookkeeping [default], {cores} torch threads, wall", rates["bk n"], "rows/s",
               rates["bk n"] / rates["np n"], base_n, GOAL, note="both cores, wall time"),
    ]
