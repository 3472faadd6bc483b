"""DDIM scheduler (Song et al. 2021): deterministic (``eta = 0``) few-step sampling from a DDPM-trained model.

Adapted from huggingface/diffusers ``schedulers/scheduling_ddim.py`` (Apache-2.0). It is built from the
same :class:`~fedsynth.common.scheduler.SchedulerConfig` the model was trained with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedsynth.common.scheduler import DDPMScheduler, SchedulerConfig, StepOutput


class DDIMScheduler(DDPMScheduler):
    """DDIM reverse steps; ``add_noise``/``set_timesteps``/``timesteps`` as in :class:`DDPMScheduler`.

    Args:
        config: the training schedule.
        eta: 0 gives deterministic DDIM; 1 matches DDPM's posterior variance.
    """

    def __init__(self, config: SchedulerConfig, *, eta: float = 0.0) -> None:
        super().__init__(config)
        self.eta = eta

    def step(
        self, model_output: Tensor, timestep: int, sample: Tensor, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Reverse step ``x_t -> x_{t_prev}`` with formula (12) of https://arxiv.org/abs/2010.02502."""
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        # 1. alphas
        alpha_prod_t = self._alpha_bar(t)
        alpha_prod_prev = self._alpha_bar(prev_t)
        beta_prod_t = 1.0 - alpha_prod_t
        # 2. predicted x_0, formula (12) "predicted x_0"
        pred_x0 = (sample - math.sqrt(beta_prod_t) * model_output) / math.sqrt(alpha_prod_t)
        eps = model_output
        # 3. clip x_0 and re-derive eps so the step stays consistent with the clipped estimate
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            pred_x0 = pred_x0.clamp(-r, r)
            eps = (sample - math.sqrt(alpha_prod_t) * pred_x0) / math.sqrt(beta_prod_t)
        # 4. sigma_t, formula (16)
        variance = (1.0 - alpha_prod_prev) / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_prev)
        sigma = self.eta * math.sqrt(max(variance, 0.0))
        # 5. "direction pointing to x_t", formula (12)
        direction = math.sqrt(max(1.0 - alpha_prod_prev - sigma**2, 0.0)) * eps
        # 6. x_{t-1} without and with noise
        prev = math.sqrt(alpha_prod_prev) * pred_x0 + direction
        if sigma > 0 and prev_t >= 0:
            noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            prev = prev + sigma * noise
        return StepOutput(prev_sample=prev, pred_original_sample=pred_x0)
