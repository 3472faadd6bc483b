"""DP-SGD training rows/s (our single-backward book-keeping engine, Opacus ghost clipping and Opacus hooks)
against the same model trained without privacy.

Each figure is a whole ``train_dp`` / ``train_nonprivate`` call of ``RunConfig().local_steps`` steps (one round of
local training, set-up and epsilon included), timed by this process's CPU time: with one torch thread that is
the wall time on an idle machine, and other processes on a shared box cannot inflate it by taking the core away.
Candidates are interleaved, so cache pressure from other processes hits them alike.

Each DP engine is timed in a fresh process of its own, interleaved with a non-private baseline measured in that
same process: a site trains with one engine per process, and Opacus' hooks and ghost runs leave the process's
memory allocator in a state that slows whichever engine runs after them (by about 0.1 of the ratio for the
book-keeping engine, see ``RESULTS.md``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
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


def _pair(label: str, mode: str, quick: bool, device: str, batch_size: int, threads: int) -> tuple[float, float]:
    """In a fresh process: rows/s of non-private and of DP engine ``mode`` on config ``label``, interleaved."""
    torch.set_num_threads(threads)
    data = rhc_encoded()
    cfg = replace(RunConfig(), batch_size=batch_size)
    steps, repeats = (2, 1) if quick else (cfg.local_steps, 3)
    if quick:
        data = data[:512]
    clock = time.process_time if device == "cpu" else time.perf_counter
    torch.manual_seed(0)
    model = TabularUNet1D(candidate_configs(data.shape[1], quick)[label])
    rates = interleaved(
        {
            "non-private": lambda: _rate_np(model, data, cfg, steps, clock, device),
            "dp": lambda: _rate_dp(model, data, cfg, steps, mode, clock, device),
        },
        repeats=repeats,
        warmup=0 if quick else 1,
    )
    return rates["non-private"], rates["dp"]


def _in_fresh_process(*args: object) -> tuple[float, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_pair, *args).result()


def run(*, quick: bool, device: str, batch_size: int | None = None, lean: bool = False) -> list[Figure]:
    """Measure rows/s of each DP engine against non-private training, per candidate config.

    On the CPU each figure is the process's CPU time; on a GPU (``device="cuda"``) it is wall time (every step
    ends in a device sync: the loss is read back), and the both-cores rows are skipped. ``batch_size`` overrides
    the run default (512), e.g. to show where a GPU stops being bound by per-step overheads. ``lean`` times only
    the default denoiser, non-private against the default engine (book-keeping).
    """
    n_rows, n_features = (512 if quick else len(rhc_encoded())), rhc_encoded().shape[1]
    cfg = RunConfig() if batch_size is None else replace(RunConfig(), batch_size=batch_size)
    steps, repeats = (2, 1) if quick else (cfg.local_steps, 3)
    gpu = device != "cpu"
    note = (f"{n_rows} rows x {n_features} features, batch {cfg.batch_size}, {steps} steps x {repeats}, "
            + (f"wall time on {device}" if gpu else "CPU time")
            + "; each engine in its own process with its own non-private baseline")
    out: list[Figure] = []
    modes = DP_MODES[:1] if lean else DP_MODES
    for label, mc in candidate_configs(n_features, quick or lean).items():
        n_params = sum(p.numel() for p in TabularUNet1D(mc).parameters())
        pairs = {name: _in_fresh_process(label, name.split()[1], quick, device, cfg.batch_size,
                                         torch.get_num_threads())
                 for name in modes}
        for i, name in enumerate(modes):
            base, rate = pairs[name]
            baseline = f"non-private [{label}]" + ("" if i == 0 else f", {name.split()[1]} process")
            out.append(Figure("train", baseline, base, "rows/s",
                              note=f"{n_params:,} params; {note}" if i == 0 else "same run as the next row"))
            out.append(Figure("train", f"{name} [{label}]", rate, "rows/s", rate / base, baseline, GOAL))
    if not gpu and not lean:
        data = rhc_encoded()[:n_rows]
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
