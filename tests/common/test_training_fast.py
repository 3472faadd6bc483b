"""Tests for the fast DP-SGD paths of fedsynth.common.training: ``grad_sample_mode`` ``"ghost"`` and
``"bookkeeping"``.

Opacus' ghost (fast gradient) clipping and our single-backward book-keeping engine must give the same clipped +
noised gradient and the same privacy accounting as Opacus' reference ``hooks`` mode. Adam's first step is nearly
``lr * sign(grad)``, which hides gradient errors, so these tests swap in plain SGD with ``lr = 1``: the weight
update is then minus the DP gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from common_factories import tiny_model_config, tiny_scheduler_config

from fedsynth.common.model import TabularUNet1D
from fedsynth.common.training import TrainResult, train_dp

DELTA = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")
N_FEATURES = 5


@pytest.fixture(autouse=True)
def _sgd_instead_of_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr, **_: torch.optim.SGD(params, lr=lr))


def _data(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, N_FEATURES)).astype(np.float32)


def _train(model: TabularUNet1D, data: np.ndarray, mode: str, **kwargs: float) -> TrainResult:
    args = {"noise_multiplier": 1e-6, "max_grad_norm": 1.0, "batch_size": 16, "steps": 1, **kwargs}
    return train_dp(
        model, data, scheduler_config=tiny_scheduler_config(), lr=1.0, delta=DELTA, seed=3,
        grad_sample_mode=mode, **args,  # type: ignore[arg-type]
    )


def _update(model: TabularUNet1D, result: TrainResult) -> torch.Tensor:
    before = model.state_dict()
    return torch.cat([(result.state_dict[k] - before[k]).flatten() for k in before])


FAST_MODES = pytest.mark.parametrize("fast_mode", ["ghost", "bookkeeping"])


@FAST_MODES
@pytest.mark.parametrize(
    "max_grad_norm",
    [pytest.param(1e-3, id="every-row-clipped"), pytest.param(1e3, id="no-row-clipped")],
)
def test_fast_mode_gives_the_hooks_clipped_gradient_without_noise(fast_mode: str, max_grad_norm: float) -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    data = _data(64)

    # Act
    hooks = _train(model, data, "hooks", max_grad_norm=max_grad_norm)
    ghost = _train(model, data, fast_mode, max_grad_norm=max_grad_norm)

    # Assert
    ref, fast = _update(model, hooks), _update(model, ghost)
    assert ref.norm() > 0
    # the update is read off float32 weights of size ~1 (resolution ~6e-8 each); with every row clipped to 1e-3
    # it is only ~3e-4 in norm, so rounding alone can reach 1e-4 of it
    assert (fast - ref).norm() / ref.norm() < 1e-3
    assert ghost.losses == pytest.approx(hooks.losses, rel=1e-6)


@FAST_MODES
def test_fast_mode_adds_the_same_noise_and_spends_the_same_epsilon(fast_mode: str) -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    data = _data(64)
    prior = {"history": [[1.3, 0.25, 7]], "mechanism": "rdp"}

    # Act
    hooks = train_dp(
        model, data, scheduler_config=tiny_scheduler_config(), noise_multiplier=1.0, max_grad_norm=0.5,
        batch_size=16, steps=3, lr=0.1, delta=DELTA, seed=5, accountant_state=prior, grad_sample_mode="hooks",
    )
    ghost = train_dp(
        model, data, scheduler_config=tiny_scheduler_config(), noise_multiplier=1.0, max_grad_norm=0.5,
        batch_size=16, steps=3, lr=0.1, delta=DELTA, seed=5, accountant_state=prior, grad_sample_mode=fast_mode,
    )

    # Assert
    ref, fast = _update(model, hooks), _update(model, ghost)
    assert (fast - ref).norm() / ref.norm() < 1e-4
    assert ghost.epsilon == hooks.epsilon > 0
    assert ghost.accountant_state == hooks.accountant_state
    assert (ghost.steps, ghost.sample_rate, ghost.noise_multiplier) == (
        hooks.steps, hooks.sample_rate, hooks.noise_multiplier,
    )


@FAST_MODES
def test_fast_mode_survives_empty_poisson_batches(fast_mode: str) -> None:
    # Arrange: 12 rows at sample rate 1/12, so most Poisson batches are empty or hold one row
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    data = _data(12)

    # Act
    hooks = _train(model, data, "hooks", batch_size=1, steps=6, noise_multiplier=0.8)
    ghost = _train(model, data, fast_mode, batch_size=1, steps=6, noise_multiplier=0.8)

    # Assert
    ref, fast = _update(model, hooks), _update(model, ghost)
    assert torch.isfinite(fast).all()
    assert (fast - ref).norm() / ref.norm() < 1e-4
    assert ghost.epsilon == hooks.epsilon
    assert any(np.isnan(v) for v in ghost.losses) == any(np.isnan(v) for v in hooks.losses)


@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e3], ids=["every-row-clipped", "no-row-clipped"])
def test_bookkeeping_averages_copies_like_hooks_with_multiplicity(max_grad_norm: float) -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(N_FEATURES))
    data = _data(64)

    # Act
    hooks = _train(model, data, "hooks", max_grad_norm=max_grad_norm, multiplicity=3)
    fast = _train(model, data, "bookkeeping", max_grad_norm=max_grad_norm, multiplicity=3)

    # Assert
    ref, got = _update(model, hooks), _update(model, fast)
    assert ref.norm() > 0
    assert (got - ref).norm() / ref.norm() < 1e-4
    assert fast.epsilon == hooks.epsilon
