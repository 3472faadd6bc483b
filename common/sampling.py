"""The unrolled reverse-diffusion loop (DDPM or few-step DDIM), as in diffusers' ``DDPMPipeline.__call__``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from fedsynth.common.ddim import DDIMScheduler
from fedsynth.common.scheduler import DDPMScheduler, SchedulerConfig

Sampler = Literal["ddpm", "ddim"]
ProgressFn = Callable[[int, int], None]


def make_sampler(config: SchedulerConfig, sampler: Sampler = "ddim", *, eta: float = 0.0) -> DDPMScheduler:
    """Build the reverse-process scheduler for ``sampler`` from the training schedule."""
    if sampler == "ddpm":
        return DDPMScheduler(config)
    if sampler == "ddim":
        return DDIMScheduler(config, eta=eta)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")


@torch.no_grad()
def sample(
    model: nn.Module,
    scheduler: DDPMScheduler,
    n_rows: int,
    *,
    n_features: int,
    num_inference_steps: int | None = None,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``n_rows`` encoded rows by running the reverse process from pure noise.

    Args:
        model: the denoiser, ``model(x_t, t) -> eps``.
        scheduler: a :class:`DDPMScheduler` or :class:`DDIMScheduler`.
        n_rows: how many rows to draw.
        n_features: encoded row width.
        num_inference_steps: reverse steps (defaults: all ``T`` for DDPM, ``min(50, T)`` for DDIM).
        batch_size: rows denoised together.
        generator: CPU random generator for reproducible draws.
        progress: called as ``progress(rows_done, n_rows)`` after each batch.
        device: where to run the model.

    Returns:
        `Tensor` of shape `(n_rows, n_features)` on the CPU.
    """
    if n_rows < 0:
        raise ValueError("n_rows must be >= 0")
    if num_inference_steps is None:
        big_t = scheduler.config.num_train_timesteps
        num_inference_steps = min(50, big_t) if isinstance(scheduler, DDIMScheduler) else big_t
    scheduler.set_timesteps(num_inference_steps)
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    done = 0
    try:
        while done < n_rows:
            b = min(batch_size, n_rows - done)
            x = torch.randn((b, n_features), generator=generator).to(device)
            for t in scheduler.timesteps:
                t_batch = torch.full((b,), int(t), dtype=torch.long, device=device)
                eps = model(x, t_batch)
                x = scheduler.step(eps, int(t), x, generator=generator).prev_sample
            out.append(x.float().cpu())
            done += b
            if progress is not None:
                progress(done, n_rows)
    finally:
        model.train(was_training)
    if not out:
        return torch.empty((0, n_features))
    return torch.cat(out, dim=0)
