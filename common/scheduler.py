"""DDPM noise scheduler (Ho et al. 2020), separate from the model, with linear, cosine and controlled schedules.

Adapted from huggingface/diffusers ``schedulers/scheduling_ddpm.py`` (Apache-2.0). The scheduler is not an
``nn.Module``: it holds no parameters and no buffers, so Opacus never sees it.

The "controlled" schedule sets the log signal-to-noise ratio directly:
``logsnr(t) = logsnr_max + (logsnr_min - logsnr_max) * (t / T) ** schedule_power`` and
``alpha_bar(t) = sigmoid(logsnr(t))``. ``logsnr_max``/``logsnr_min`` fix how clean the first and how noisy
the last step are; ``schedule_power`` > 1 spends more steps at low noise (fine detail), < 1 at high noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from fedsynth.common.errors import ConfigError

BetaSchedule = Literal["linear", "cosine", "controlled"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]


@dataclass(frozen=True)
class SchedulerConfig:
    """Diffusion schedule hyper-parameters, shared by the DDPM and DDIM schedulers.

    Args:
        num_train_timesteps: number of diffusion steps ``T`` used in training.
        beta_schedule: ``linear`` (DDPM), ``cosine`` (Nichol & Dhariwal 2021) or ``controlled`` (log-SNR).
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        logsnr_max: log-SNR at ``t = 0`` for the controlled schedule.
        logsnr_min: log-SNR at ``t = T`` for the controlled schedule.
        schedule_power: curvature of the controlled schedule.
        clip_sample: clip the predicted clean sample to ``[-clip_sample_range, clip_sample_range]``.
        clip_sample_range: see ``clip_sample``.
        timestep_spacing: how inference timesteps are spread (``trailing`` suits few-step sampling).
    """

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    logsnr_max: float = 10.0
    logsnr_min: float = -10.0
    schedule_power: float = 1.0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    timestep_spacing: TimestepSpacing = "trailing"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError("diffusion-steps must be >= 2")
        if self.beta_schedule not in ("linear", "cosine", "controlled"):
            raise ConfigError(f"beta-schedule must be linear, cosine or controlled, got {self.beta_schedule!r}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError("need 0 < beta_start < beta_end < 1")
        if self.logsnr_min >= self.logsnr_max:
            raise ConfigError("need logsnr_min < logsnr_max")
        if self.schedule_power <= 0:
            raise ConfigError("schedule-power must be > 0")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ConfigError(f"unknown timestep spacing {self.timestep_spacing!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchedulerConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))


def make_betas(config: SchedulerConfig) -> Tensor:
    """Return the ``float64`` betas of shape ``(T,)`` for ``config``."""
    steps = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float64)
    if config.beta_schedule == "cosine":
        # squaredcos_cap_v2: alpha_bar(t) = cos((t/T + s)/(1 + s) * pi/2)^2, betas capped at 0.999
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
        return torch.tensor(betas, dtype=torch.float64)
    u = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    logsnr = config.logsnr_max + (config.logsnr_min - config.logsnr_max) * u**config.schedule_power
    alphas_cumprod = torch.sigmoid(logsnr)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1.0 - alphas_cumprod / prev).clamp(1e-8, 0.999)


def make_timesteps(config: SchedulerConfig, num_inference_steps: int) -> Tensor:
    """Return the descending inference timesteps (``int64``) for ``num_inference_steps`` steps."""
    big_t = config.num_train_timesteps
    if not 1 <= num_inference_steps <= big_t:
        raise ConfigError(f"num_inference_steps must be in [1, {big_t}], got {num_inference_steps}")
    if config.timestep_spacing == "linspace":
        ts = torch.linspace(0, big_t - 1, num_inference_steps, dtype=torch.float64).round().flip(0)
    elif config.timestep_spacing == "leading":
        ratio = big_t // num_inference_steps
        ts = (torch.arange(num_inference_steps, dtype=torch.float64) * ratio).round().flip(0)
    else:  # trailing
        ts = (torch.arange(big_t, 0, -big_t / num_inference_steps, dtype=torch.float64).round() - 1)[:num_inference_steps]
    return ts.to(torch.int64)


def broadcast_to(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample coefficient of shape ``(B,)`` so it broadcasts against ``like`` of any rank."""
    coef = coef.flatten()
    while coef.dim() < like.dim():
        coef = coef.unsqueeze(-1)
    return coef


@dataclass(frozen=True)
class StepOutput:
    """Result of one reverse step.

    Args:
        prev_sample: ``x_{t-1}``, same shape as the input sample.
        pred_original_sample: the model's estimate of ``x_0``.
    """

    prev_sample: Tensor
    pred_original_sample: Tensor


class DDPMScheduler:
    """Forward noising and ancestral DDPM reverse steps.

    Example:
        >>> s = DDPMScheduler(SchedulerConfig())
        >>> round(float(s.alphas_cumprod[-1]), 9)
        4.0358e-05
    """

    order = 1

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.betas = make_betas(config)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the timesteps looped over at inference (``self.timesteps``, descending)."""
        self.num_inference_steps = num_inference_steps
        self.timesteps = make_timesteps(self.config, num_inference_steps)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in ``self.timesteps`` (``-1`` after the last)."""
        idx = (self.timesteps == int(timestep)).nonzero()
        if len(idx) == 0:
            return int(timestep) - 1
        i = int(idx[0, 0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def _alpha_bar(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else 1.0

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward process ``q(x_t | x_0)``: ``sqrt(a_bar_t) x_0 + sqrt(1 - a_bar_t) eps`` (DDPM eq. 4).

        Args:
            original_samples (`Tensor` of any shape `(batch, ...)`): clean data ``x_0``.
            noise (`Tensor`, same shape): ``eps ~ N(0, I)``.
            timesteps (`Tensor` of shape `(batch,)`): integer timesteps.
        """
        ac = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        t = timesteps.to(original_samples.device).long()
        sqrt_ac = broadcast_to(ac[t].sqrt(), original_samples)
        sqrt_one_minus = broadcast_to((1.0 - ac[t]).sqrt(), original_samples)
        return sqrt_ac * original_samples + sqrt_one_minus * noise

    def step(
        self, model_output: Tensor, timestep: int, sample: Tensor, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Reverse step ``x_t -> x_{t-1}`` from the predicted noise.

        Args:
            model_output (`Tensor`): predicted ``eps``, same shape as ``sample``.
            timestep: the current ``t`` (an element of ``self.timesteps``).
            sample (`Tensor`): ``x_t``.
            generator: source of randomness for the added noise.
        """
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        # 1. compute alphas, betas
        alpha_prod_t = self._alpha_bar(t)
        alpha_prod_prev = self._alpha_bar(prev_t)
        beta_prod_t = 1.0 - alpha_prod_t
        beta_prod_prev = 1.0 - alpha_prod_prev
        current_alpha_t = alpha_prod_t / alpha_prod_prev
        current_beta_t = 1.0 - current_alpha_t
        # 2. predicted original sample, formula (15) of https://arxiv.org/abs/2006.11239
        pred_x0 = (sample - math.sqrt(beta_prod_t) * model_output) / math.sqrt(alpha_prod_t)
        # 3. clip the predicted x_0
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            pred_x0 = pred_x0.clamp(-r, r)
        # 4. coefficients of x_0 and x_t in the posterior mean, formula (7)
        x0_coeff = math.sqrt(alpha_prod_prev) * current_beta_t / beta_prod_t
        xt_coeff = math.sqrt(current_alpha_t) * beta_prod_prev / beta_prod_t
        # 5. posterior mean mu_t(x_t, x_0)
        prev = x0_coeff * pred_x0 + xt_coeff * sample
        # 6. add noise with the posterior variance, formula (7): beta_tilde_t
        if t > 0:
            variance = max(beta_prod_prev / beta_prod_t * current_beta_t, 1e-20)
            noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            prev = prev + math.sqrt(variance) * noise
        return StepOutput(prev_sample=prev, pred_original_sample=pred_x0)
