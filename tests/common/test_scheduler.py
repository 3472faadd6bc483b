"""Tests for fedsynth.common.scheduler (DDPM) and fedsynth.common.ddim (DDIM)."""

from __future__ import annotations

import pytest
import torch

from fedsynth.common.ddim import DDIMScheduler
from fedsynth.common.errors import ConfigError
from fedsynth.common.scheduler import DDPMScheduler, SchedulerConfig, make_betas


def _fake_model(x: torch.Tensor, t: float) -> torch.Tensor:
    # diffusers' dummy model: a fixed, deterministic function of (x_t, t)
    return x * (t / (t + 1.0))


def _deterministic_sample() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 24).reshape(4, 6)


def _run_loop(scheduler: DDPMScheduler, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = _deterministic_sample()
    for t in scheduler.timesteps:
        x = scheduler.step(_fake_model(x, float(t)), int(t), x, generator=generator).prev_sample
    return x


def test_linear_schedule_matches_diffusers() -> None:
    # Arrange / Act
    scheduler = DDPMScheduler(SchedulerConfig())

    # Assert
    assert scheduler.alphas_cumprod.dtype == torch.float64
    assert float(scheduler.betas[0]) == pytest.approx(1e-4)
    assert float(scheduler.betas[-1]) == pytest.approx(0.02)
    assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(4.0358e-05, rel=1e-4)
    assert len(scheduler) == 1000


def test_full_loop_no_noise_ddpm_golden() -> None:
    # Arrange
    scheduler = DDPMScheduler(SchedulerConfig(num_train_timesteps=50))

    # Act
    result = _run_loop(scheduler)

    # Assert
    assert abs(result.sum().item() - 1.1478) < 1e-2
    assert abs(result.abs().mean().item() - 0.37914) < 1e-3


def test_full_loop_ddim_golden() -> None:
    # Arrange
    deterministic = DDIMScheduler(SchedulerConfig(num_train_timesteps=50))
    deterministic.set_timesteps(10)
    stochastic = DDIMScheduler(SchedulerConfig(num_train_timesteps=50), eta=1.0)
    stochastic.set_timesteps(10)

    # Act
    det_result = _run_loop(deterministic)
    sto_result = _run_loop(stochastic)

    # Assert
    assert abs(det_result.abs().mean().item() - 0.32856) < 1e-3
    assert abs(sto_result.sum().item() - (-1.8604)) < 1e-2
    torch.testing.assert_close(_run_loop(deterministic, seed=123), det_result)  # eta=0 ignores the generator


def test_loop_is_reproducible_with_seeded_generator() -> None:
    # Arrange
    scheduler = DDPMScheduler(SchedulerConfig(num_train_timesteps=50))

    # Act
    a, b, c = _run_loop(scheduler, seed=7), _run_loop(scheduler, seed=7), _run_loop(scheduler, seed=8)

    # Assert
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "controlled"])
@pytest.mark.parametrize("steps", [50, 7])
def test_ddim_eta0_with_oracle_model_recovers_x0(schedule: str, steps: int) -> None:
    # Arrange
    config = SchedulerConfig(num_train_timesteps=100, beta_schedule=schedule)
    scheduler = DDIMScheduler(config, eta=0.0)
    scheduler.set_timesteps(steps)
    x0 = torch.rand(5, 3, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_start = scheduler.timesteps[0].repeat(5)
    x = scheduler.add_noise(x0, eps, t_start)

    # Act
    for t in scheduler.timesteps:
        x = scheduler.step(eps, int(t), x).prev_sample  # the oracle predicts the true noise

    # Assert
    torch.testing.assert_close(x, x0, atol=1e-6, rtol=1e-6)


def test_ddpm_with_oracle_x0_model_ends_on_x0() -> None:
    # Arrange: a model that knows x0 returns eps consistent with (x_t, x0); DDPM's last step returns pred_x0
    scheduler = DDPMScheduler(SchedulerConfig(num_train_timesteps=30))
    scheduler.set_timesteps(10)
    x0 = torch.rand(4, 5, dtype=torch.float64) * 2 - 1
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)

    # Act
    for t in scheduler.timesteps:
        ab = scheduler.alphas_cumprod[int(t)]
        eps_hat = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = scheduler.step(eps_hat, int(t), x, generator=generator).prev_sample

    # Assert
    torch.testing.assert_close(x, x0, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("shape", [(6, 5), (6, 1, 5)])
def test_add_noise_rank_2_and_3(shape: tuple[int, ...]) -> None:
    # Arrange
    scheduler = DDPMScheduler(SchedulerConfig(num_train_timesteps=100))
    x0 = torch.randn(shape)
    noise = torch.randn(shape)
    t = torch.tensor([0, 10, 20, 50, 98, 99])

    # Act
    x_t = scheduler.add_noise(x0, noise, t)

    # Assert
    assert x_t.shape == x0.shape and x_t.dtype == x0.dtype
    ab = scheduler.alphas_cumprod[t].float()
    for i in range(shape[0]):
        expected = ab[i].sqrt() * x0[i] + (1 - ab[i]).sqrt() * noise[i]
        torch.testing.assert_close(x_t[i], expected)
    torch.testing.assert_close(
        scheduler.add_noise(x0.reshape(6, -1), noise.reshape(6, -1), t), x_t.reshape(6, -1)
    )


@pytest.mark.parametrize(
    "config",
    [
        SchedulerConfig(beta_schedule="cosine"),
        SchedulerConfig(beta_schedule="controlled"),
        SchedulerConfig(beta_schedule="controlled", schedule_power=2.0, logsnr_max=8, logsnr_min=-6),
        SchedulerConfig(beta_schedule="controlled", schedule_power=0.5, num_train_timesteps=10),
        SchedulerConfig(beta_schedule="linear", num_train_timesteps=2),
    ],
)
def test_schedules_are_monotone_and_in_unit_interval(config: SchedulerConfig) -> None:
    # Arrange / Act
    scheduler = DDPMScheduler(config)
    ac = scheduler.alphas_cumprod

    # Assert
    assert len(ac) == config.num_train_timesteps
    assert ((ac > 0) & (ac < 1)).all()
    assert (ac[1:] < ac[:-1]).all()
    betas = make_betas(config)
    assert ((betas > 0) & (betas < 1)).all()


def test_controlled_schedule_hits_declared_log_snr() -> None:
    # Arrange
    config = SchedulerConfig(beta_schedule="controlled", logsnr_max=6.0, logsnr_min=-4.0, num_train_timesteps=200)

    # Act
    ac = DDPMScheduler(config).alphas_cumprod

    # Assert
    assert float(torch.log(ac[-1] / (1 - ac[-1]))) == pytest.approx(-4.0, abs=1e-6)
    assert float(torch.log(ac[0] / (1 - ac[0]))) == pytest.approx(6.0 - 10.0 / 200, abs=1e-6)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_set_timesteps_spacing_matches_diffusers(spacing: str, expected: list[int]) -> None:
    # Arrange
    scheduler = DDPMScheduler(SchedulerConfig(timestep_spacing=spacing))  # type: ignore[arg-type]

    # Act
    scheduler.set_timesteps(10)

    # Assert
    assert scheduler.timesteps.dtype == torch.int64
    assert scheduler.timesteps.tolist() == expected
    assert scheduler.previous_timestep(expected[0]) == expected[1]
    assert scheduler.previous_timestep(expected[-1]) == -1


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize(("big_t", "n"), [(10, 3), (10, 10), (7, 1), (1000, 999), (20, 6)])
def test_set_timesteps_are_distinct_descending_and_in_range(spacing: str, big_t: int, n: int) -> None:
    # Arrange
    scheduler = DDPMScheduler(SchedulerConfig(num_train_timesteps=big_t, timestep_spacing=spacing))  # type: ignore[arg-type]

    # Act
    scheduler.set_timesteps(n)
    ts = scheduler.timesteps.tolist()

    # Assert
    assert len(ts) == n
    assert ts == sorted(set(ts), reverse=True)
    assert 0 <= ts[-1] and ts[0] <= big_t - 1


@pytest.mark.parametrize("n", [0, 1001])
def test_set_timesteps_out_of_range_raises(n: int) -> None:
    # Arrange
    scheduler = DDPMScheduler(SchedulerConfig())

    # Act / Assert
    with pytest.raises(ConfigError, match="num_inference_steps"):
        scheduler.set_timesteps(n)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train_timesteps": 1}, "diffusion-steps"),
        ({"beta_schedule": "sigmoid"}, "beta-schedule"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start < beta_end"),
        ({"beta_end": 1.5}, "beta_end < 1"),
        ({"logsnr_min": 5.0, "logsnr_max": 5.0}, "logsnr_min < logsnr_max"),
        ({"schedule_power": 0.0}, "schedule-power"),
        ({"timestep_spacing": "random"}, "spacing"),
    ],
)
def test_bad_scheduler_config_raises_config_error(kwargs: dict, message: str) -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match=message):
        SchedulerConfig(**kwargs)


def test_scheduler_config_round_trip() -> None:
    # Arrange
    config = SchedulerConfig(num_train_timesteps=77, beta_schedule="controlled", schedule_power=1.5)

    # Act / Assert
    assert SchedulerConfig.from_dict(config.to_dict()) == config
