"""Sampling rows/s: few-step DDIM against the full DDPM chain, projected to 100k rows."""

from __future__ import annotations

import time

import torch

from bench.data import default_model_config
from bench.timing import Figure
from fedsynth.common.config import RunConfig
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.sampling import make_sampler, sample

TARGET_ROWS = 100_000
N_FEATURES = 82


def _rows_per_s(model: TabularUNet1D, sampler: str, steps: int, n: int, device: str, batch_size: int) -> float:
    cfg = RunConfig().scheduler_config()
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    sample(model, make_sampler(cfg, sampler), n, n_features=N_FEATURES, num_inference_steps=steps,
           batch_size=batch_size, generator=gen, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def run(*, quick: bool, device: str, rows: int | None = None) -> list[Figure]:
    """DDIM at 50 and 10 steps on ``rows`` rows; DDPM (all T steps) on fewer rows; report rows/s and 100k time.

    The weights are untrained: sampling cost does not depend on them.
    """
    torch.manual_seed(0)
    model = TabularUNet1D(default_model_config(N_FEATURES)).to(device)
    T = RunConfig().diffusion_steps
    n = rows or (512 if quick else 8_192)
    n_ddpm = max(64, n // 32)
    batch = 4096
    base = _rows_per_s(model, "ddpm", T if not quick else 50, n_ddpm, device, batch)
    t_label = T if not quick else 50
    baseline = f"DDPM {t_label} steps"
    out = [Figure("sample", baseline, base, "rows/s",
                  note=f"{n_ddpm} rows; 100k rows would take {TARGET_ROWS / base:,.0f} s; device {device}")]
    for steps in (50, 10):
        rate = _rows_per_s(model, "ddim", steps, n, device, batch)
        out.append(Figure("sample", f"DDIM {steps} steps", rate, "rows/s", rate / base, baseline,
                          "100k rows < 30 s",
                          f"{n} rows; 100k rows: {TARGET_ROWS / rate:,.1f} s (projected); batch {batch}"))
    return out
