"""Tests for fedsynth.common.training: DP-SGD core, accountant continuity, noise calibration."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from common_factories import tiny_model_config, tiny_scheduler_config
from opacus.accountants import RDPAccountant

from fedsynth.common.errors import ConfigError
from fedsynth.common.model import TabularUNet1D
from fedsynth.common.scheduler import DDPMScheduler
from fedsynth.common.training import (
    calibrate_noise,
    diffusion_loss,
    epsilon_from_state,
    planned_sample_rate,
    projected_epsilon,
    train_dp,
    train_nonprivate,
)

DELTA = 1e-5
EASY = np.tile(np.array([[0.5, -0.5, 0.8, -0.8]], dtype=np.float32), (64, 1))


def _rdp_epsilon(history: list[tuple[float, float, int]]) -> float:
    acc = RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=DELTA))


def _eval_loss(state_dict: dict[str, torch.Tensor]) -> float:
    model = TabularUNet1D(tiny_model_config(4))
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        x0 = torch.as_tensor(EASY).repeat(4, 1)
        per_sample = diffusion_loss(model, DDPMScheduler(tiny_scheduler_config()), x0, generator=torch.Generator().manual_seed(0))
    return float(per_sample.mean())


def _train(model: TabularUNet1D, data: np.ndarray = EASY, **kwargs: object):
    args: dict[str, object] = {
        "scheduler_config": tiny_scheduler_config(),
        "noise_multiplier": 0.5,
        "max_grad_norm": 1.0,
        "batch_size": 32,
        "steps": 4,
        "lr": 1e-2,
        "delta": DELTA,
        "seed": 0,
    }
    args.update(kwargs)
    return train_dp(model, data, **args)  # type: ignore[arg-type]


def test_diffusion_loss_is_per_sample_and_handles_empty_batch() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(4))
    scheduler = DDPMScheduler(tiny_scheduler_config())

    # Act
    full = diffusion_loss(model, scheduler, torch.as_tensor(EASY[:5]))
    empty = diffusion_loss(model, scheduler, torch.zeros(0, 4))

    # Assert
    assert full.shape == (5,) and (full >= 0).all()
    assert empty.shape == (0,)


def test_train_dp_reduces_loss_and_returns_loadable_weights() -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(4))
    before = copy.deepcopy(model.state_dict())

    # Act
    result = _train(model, steps=40)

    # Assert
    assert result.steps == 40 and len(result.losses) == 40
    assert math.isfinite(result.loss)
    assert result.num_examples == 64 and result.sample_rate == pytest.approx(0.5)
    assert result.noise_multiplier == 0.5 and result.delta == DELTA
    assert 0 < result.epsilon < math.inf
    assert set(result.state_dict) == set(before)
    assert all(not v.requires_grad and v.device.type == "cpu" for v in result.state_dict.values())
    assert _eval_loss(result.state_dict) < _eval_loss(before)
    for key, value in model.state_dict().items():  # the input model is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not hasattr(model, "_module") and all(not hasattr(p, "grad_sample") for p in model.parameters())


def test_train_dp_is_reproducible_with_seed() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(4))

    # Act
    a, b = _train(model, steps=3, seed=11), _train(model, steps=3, seed=11)

    # Assert
    assert a.losses == b.losses
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key])


def test_accountant_continuity_across_calls() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(4))

    # Act
    first = _train(model, steps=3)
    second = _train(model, steps=4, accountant_state=first.accountant_state)
    third = _train(model, data=EASY[:40], steps=2, accountant_state=second.accountant_state)

    # Assert
    assert first.accountant_state == {"history": [[0.5, 0.5, 3]], "mechanism": "rdp"}
    assert second.epsilon == pytest.approx(_rdp_epsilon([(0.5, 0.5, 7)]), rel=1e-9)
    assert third.sample_rate == pytest.approx(1 / math.ceil(40 / 32))
    assert third.epsilon == pytest.approx(_rdp_epsilon([(0.5, 0.5, 7), (0.5, third.sample_rate, 2)]), rel=1e-9)
    assert first.epsilon < second.epsilon < third.epsilon
    assert epsilon_from_state(third.accountant_state, delta=DELTA) == pytest.approx(third.epsilon, rel=1e-9)
    assert first.accountant_state == {"history": [[0.5, 0.5, 3]], "mechanism": "rdp"}  # caller's state not mutated


def test_empty_poisson_batches_do_not_crash() -> None:
    # Arrange: 3 rows, expected batch 1 -> P(empty batch) = (2/3)^3 per step
    model = TabularUNet1D(tiny_model_config(4))

    # Act
    result = _train(model, data=EASY[:3], batch_size=1, steps=12, noise_multiplier=1.0)

    # Assert
    assert result.steps == 12
    assert any(math.isnan(v) for v in result.losses), "the seed should produce at least one empty batch"
    assert math.isfinite(result.loss)
    assert all(torch.isfinite(v).all() for v in result.state_dict.values())
    assert result.accountant_state["history"] == [[1.0, pytest.approx(1 / 3), 12]]


def test_single_row_site_trains() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(4))

    # Act
    result = _train(model, data=EASY[:1], batch_size=8, steps=2)

    # Assert
    assert result.sample_rate == 1.0 and result.steps == 2


def test_train_dp_rejects_zero_steps() -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match="steps"):
        _train(TabularUNet1D(tiny_model_config(4)), steps=0)


def test_train_nonprivate_returns_finite_loss() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(4))

    # Act
    result = train_nonprivate(model, EASY, scheduler_config=tiny_scheduler_config(), batch_size=16, steps=5, lr=1e-2, seed=0)

    # Assert
    assert result.steps == 5 and math.isfinite(result.loss) and result.epsilon == 0.0


@pytest.mark.parametrize(("target", "sample_rate", "steps"), [(1.0, 0.05, 200), (6.0, 0.2, 30)])
def test_calibrate_noise_hits_target_epsilon(target: float, sample_rate: float, steps: int) -> None:
    # Arrange / Act
    sigma = calibrate_noise(target_epsilon=target, delta=DELTA, sample_rate=sample_rate, steps=steps)

    # Assert
    eps = _rdp_epsilon([(sigma, sample_rate, steps)])
    assert target * 0.98 <= eps <= target + 1e-9


def test_calibrate_noise_counts_prior_spending() -> None:
    # Arrange
    prior = {"history": [[1.5, 0.1, 100]], "mechanism": "rdp"}
    spent = epsilon_from_state(prior, delta=DELTA)

    # Act
    sigma = calibrate_noise(target_epsilon=spent + 1.0, delta=DELTA, sample_rate=0.1, steps=100, prior_state=prior)

    # Assert
    total = _rdp_epsilon([(1.5, 0.1, 100), (sigma, 0.1, 100)])
    assert spent + 0.97 <= total <= spent + 1.0 + 1e-9
    with pytest.raises(ConfigError, match="no budget left"):
        calibrate_noise(target_epsilon=spent * 0.5, delta=DELTA, sample_rate=0.1, steps=10, prior_state=prior)


def test_calibrate_noise_impossible_target_raises() -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match="cannot be met"):
        calibrate_noise(target_epsilon=1e-4, delta=DELTA, sample_rate=1.0, steps=10_000)


def test_projected_epsilon_adds_one_round() -> None:
    # Arrange
    state = {"history": [[1.0, 0.1, 50]], "mechanism": "rdp"}

    # Act
    eps = projected_epsilon(state, noise_multiplier=1.0, sample_rate=0.1, steps=50, delta=DELTA)

    # Assert
    assert eps == pytest.approx(_rdp_epsilon([(1.0, 0.1, 100)]), rel=1e-9)
    assert epsilon_from_state(None, delta=DELTA) == 0.0


@pytest.mark.filterwarnings("ignore:GDP accounting is experimental:UserWarning")
def test_gdp_projection_counts_earlier_rounds() -> None:
    # Arrange: Opacus' GDP accountant reads only the last history entry
    state = {"history": [[1.0, 0.1, 100]], "mechanism": "gdp"}
    one_round = epsilon_from_state(state, delta=DELTA, accountant="gdp")

    # Act
    two_rounds = projected_epsilon(state, noise_multiplier=1.0, sample_rate=0.1, steps=100, delta=DELTA, accountant="gdp")

    # Assert
    assert two_rounds > one_round
    with pytest.raises(ConfigError, match="gdp"):
        projected_epsilon(state, noise_multiplier=2.0, sample_rate=0.1, steps=100, delta=DELTA, accountant="gdp")


def test_planned_sample_rate() -> None:
    # Arrange / Act / Assert
    assert planned_sample_rate(64, 32) == 0.5
    assert planned_sample_rate(3, 100) == 1.0
    assert planned_sample_rate(100, 30) == pytest.approx(1 / 4)
    with pytest.raises(ConfigError):
        planned_sample_rate(0, 10)


def test_ema_weights_average_the_iterates_at_no_privacy_cost() -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(4))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # Act: one step, so the EMA is exactly decay * start + (1 - decay) * after
    last = _train(model, steps=1)
    ema = _train(model, steps=1, ema_decay=0.5)
    # Assert
    for name, _ in model.named_parameters():
        expected = 0.5 * start[name] + 0.5 * last.state_dict[name]
        assert torch.allclose(ema.state_dict[name], expected, atol=1e-6), name
    assert ema.epsilon == last.epsilon and ema.accountant_state == last.accountant_state
    with pytest.raises(ConfigError):
        _train(model, steps=1, ema_decay=1.0)


def test_multiplicity_averages_draws_before_clipping_and_keeps_accounting() -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(4))
    # Act
    single = _train(model, steps=3)
    multi = _train(model, steps=3, multiplicity=4)
    # Assert: same privacy accounting (one clipped gradient per row), finite training
    assert multi.accountant_state == single.accountant_state and multi.epsilon == single.epsilon
    assert all(torch.isfinite(v).all() for v in multi.state_dict.values())
    with pytest.raises(ConfigError):
        _train(model, steps=1, multiplicity=2, grad_sample_mode="ghost")
