"""Tests for fedsynth.common.opacus_norms: ghost-clipping norm samplers for ``Conv1d`` and ``GroupNorm``.

Each norm sampler must give, per row, the norm of the per-sample gradient that Opacus' reference ``hooks`` mode
(``GradSampleModule``) materialises.
"""

from __future__ import annotations

import pytest
import torch
from common_factories import tiny_model_config
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from torch import nn

from fedsynth.common.model import TabularUNet1D
from fedsynth.common.opacus_norms import conv1d_norm_sample, group_norm_norm_sample

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*Full backward hook.*"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
]


def _hooks_norms(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row norms of Opacus' hooks-mode per-sample gradients of ``sum(layer(x) * g)`` (so ``dL/dy = g``)."""
    gsm = GradSampleModule(layer, loss_reduction="sum")
    (gsm(x) * g).sum().backward()
    out = {name: p.grad_sample.flatten(1).norm(2, dim=1) for name, p in layer.named_parameters()}
    gsm._close()
    return out


@pytest.mark.parametrize(
    ("c_in", "c_out", "length", "kwargs"),
    [
        pytest.param(16, 16, 16, {"kernel_size": 3, "padding": 1}, id="k3-p1"),
        pytest.param(48, 16, 8, {"kernel_size": 3, "padding": 1}, id="k3-p1-wide-in"),
        pytest.param(16, 32, 16, {"kernel_size": 4, "stride": 2, "padding": 1}, id="k4-s2-p1"),
        pytest.param(32, 16, 4, {"kernel_size": 1}, id="k1-short-gram"),
        pytest.param(16, 8, 16, {"kernel_size": 1}, id="k1-direct"),
        pytest.param(8, 8, 16, {"kernel_size": 3, "padding": 2, "dilation": 2}, id="k3-d2"),
        pytest.param(8, 8, 16, {"kernel_size": 4, "padding": "same"}, id="k4-same-asymmetric-pad"),
        pytest.param(8, 8, 16, {"kernel_size": 3, "padding": 0}, id="k3-valid"),
        pytest.param(4, 6, 40, {"kernel_size": 3, "padding": 1}, id="long-seq-fallback"),
        pytest.param(8, 8, 8, {"kernel_size": 3, "padding": 1, "groups": 2}, id="grouped-fallback"),
        pytest.param(8, 8, 8, {"kernel_size": 3, "padding": 1, "bias": False}, id="no-bias"),
    ],
)
def test_conv1d_norms_equal_hooks_per_sample_gradient_norms(
    c_in: int, c_out: int, length: int, kwargs: dict[str, int]
) -> None:
    # Arrange
    torch.manual_seed(0)
    layer = nn.Conv1d(c_in, c_out, **kwargs)
    x = torch.randn(7, c_in, length)
    g = torch.randn(layer(x).shape)

    # Act
    fast = conv1d_norm_sample(layer, [x], g)
    ref = _hooks_norms(layer, x, g)

    # Assert
    assert set(fast) == set(layer.parameters())
    for name, p in layer.named_parameters():
        assert fast[p].shape == (7,)
        torch.testing.assert_close(fast[p], ref[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("groups", "channels"), [(8, 16), (1, 32), (16, 48)])
def test_group_norm_norms_equal_hooks_per_sample_gradient_norms(groups: int, channels: int) -> None:
    # Arrange
    torch.manual_seed(0)
    layer = nn.GroupNorm(groups, channels)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    x = torch.randn(5, channels, 8) * 3 + 1
    g = torch.randn(5, channels, 8)

    # Act
    fast = group_norm_norm_sample(layer, [x], g)
    ref = _hooks_norms(layer, x, g)

    # Assert
    for name, p in layer.named_parameters():
        torch.testing.assert_close(fast[p], ref[name], rtol=1e-4, atol=1e-5)


def test_empty_batch_gives_empty_norms() -> None:
    conv, norm = nn.Conv1d(4, 4, 3, padding=1), nn.GroupNorm(2, 4)
    x = torch.zeros(0, 4, 8)

    conv_norms = conv1d_norm_sample(conv, [x], torch.zeros(0, 4, 8))
    gn_norms = group_norm_norm_sample(norm, [x], torch.zeros(0, 4, 8))

    assert all(v.shape == (0,) for v in [*conv_norms.values(), *gn_norms.values()])


def test_ghost_module_gives_the_hooks_per_row_gradient_norms_of_the_denoiser() -> None:
    # Arrange: the whole U-Net, with every Conv1d and GroupNorm on the new norm samplers
    torch.manual_seed(0)
    model = TabularUNet1D(tiny_model_config(5))
    x, t, target = torch.randn(9, 5), torch.randint(0, 50, (9,)), torch.randn(9, 5)

    def per_row_loss(m: nn.Module) -> torch.Tensor:
        return ((m(x, t) - target) ** 2).mean(dim=1)

    ref_model = TabularUNet1D(tiny_model_config(5))
    ref_model.load_state_dict(model.state_dict())
    hooks = GradSampleModule(ref_model, loss_reduction="sum")
    per_row_loss(hooks).sum().backward()
    ref = torch.stack([p.grad_sample.flatten(1).norm(2, dim=1) for p in ref_model.parameters()]).norm(2, dim=0)
    hooks._close()

    ghost = GradSampleModuleFastGradientClipping(model, loss_reduction="sum", max_grad_norm=1.0)
    assert {type(m) for m in model.modules()} >= {nn.Conv1d, nn.GroupNorm}
    for m in (nn.Conv1d, nn.GroupNorm, nn.Linear):
        assert m in ghost.NORM_SAMPLERS

    # Act
    per_row_loss(ghost).sum().backward()
    fast = ghost.get_norm_sample()

    # Assert
    assert ref.min() > 0
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)
