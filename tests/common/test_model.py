"""Tests for fedsynth.common.model.TabularUNet1D: shapes, Opacus compatibility, per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from common_factories import tiny_model_config
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct
from opacus.validators import ModuleValidator
from torch import nn

from fedsynth.common.errors import ConfigError
from fedsynth.common.model import ModelConfig, TabularUNet1D

CONFIGS = [
    {"seq_len": 4, "dim": 8, "dim_mults": (1, 2)},
    {"seq_len": 4, "dim": 8, "dim_mults": (1,)},
    {"seq_len": 8, "dim": 6, "dim_mults": (1, 2, 2)},
]


@settings(max_examples=25, deadline=None)
@given(
    batch=st.sampled_from([0, 1, 5]),
    n_features=st.integers(1, 12),
    config=st.sampled_from(CONFIGS),
    float_t=st.booleans(),
)
def test_forward_shape_sweep(batch: int, n_features: int, config: dict, float_t: bool) -> None:
    # Arrange
    torch.manual_seed(0)
    model = TabularUNet1D(ModelConfig(n_features=n_features, **config))
    x = torch.randn(batch, n_features)
    t = torch.randint(0, 1000, (batch,))
    if float_t:
        t = t.float() + 0.5

    # Act
    out = model(x, t)

    # Assert
    assert out.shape == (batch, n_features)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_backward_with_empty_batch_gives_zero_grads() -> None:
    # Arrange
    model = TabularUNet1D(tiny_model_config(5))

    # Act
    model(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).sum().backward()

    # Assert
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_rows_are_independent() -> None:
    # Arrange: GroupNorm normalises per sample, so a row's output must not depend on its batch peers
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(7)).eval()
    x, t = torch.randn(5, 7), torch.tensor([1, 50, 100, 500, 999])

    # Act
    batched = model(x, t)
    single = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(5)])

    # Assert
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_module_validator_strict_passes() -> None:
    # Arrange
    model = TabularUNet1D(ModelConfig(n_features=9, seq_len=8, dim=8, dim_mults=(1, 2, 4)))

    # Act
    errors = ModuleValidator.validate(model, strict=False)

    # Assert
    assert errors == []
    ModuleValidator.validate(model, strict=True)
    assert not list(model.buffers())


class _SingleInput(nn.Module):
    """Opacus' checker calls ``module(x)``: derive a per-row timestep from the row itself."""

    def __init__(self, net: TabularUNet1D) -> None:
        super().__init__()
        self.net = net

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        x, t = xt[:, :-1], xt[:, -1]
        return self.net(x, t)


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
@pytest.mark.parametrize("n_features", [5, 6])
def test_per_sample_gradients_are_correct(n_features: int) -> None:
    # Arrange
    torch.manual_seed(0)
    module = _SingleInput(TabularUNet1D(tiny_model_config(n_features)))
    x = torch.randn(4, n_features)
    t = torch.tensor([[3.0], [250.0], [600.0], [999.0]])

    # Act
    ok = check_per_sample_gradients_are_correct(torch.cat([x, t], dim=1), module, atol=1e-4, rtol=1e-3)

    # Assert
    assert ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_features": 0}, "n_features"),
        ({"n_features": 4, "dim": 1}, "unet-dim"),
        ({"n_features": 4, "dim": 7}, "even"),
        ({"n_features": 4, "dim_mults": ()}, "unet-dim-mults"),
        ({"n_features": 4, "dim_mults": (1, 0)}, "unet-dim-mults"),
        ({"n_features": 4, "seq_len": 6}, "power of two"),
        ({"n_features": 4, "seq_len": 2, "dim_mults": (1, 2, 4)}, "power of two"),
    ],
)
def test_bad_model_config_raises_config_error(kwargs: dict, message: str) -> None:
    # Arrange / Act / Assert
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_model_config_round_trip() -> None:
    # Arrange
    config = ModelConfig(n_features=11, seq_len=8, dim=12, dim_mults=(1, 2, 2), groups=4)

    # Act / Assert
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.to_dict()["dim_mults"], list)
